"""Tokenizers behind one interface, checked against sentencepiece itself on real text."""

from __future__ import annotations

import shutil

import pytest

from conftest import shared_path
from llamaforge.errors import UserError
from llamaforge.tokenizer import HFTokenizer, Llama2cTokenizer, SentencePieceTokenizer, load_tokenizer

spm = pytest.importorskip("sentencepiece")

BOOKS = ["pg11_alice_in_wonderland.txt", "pg1080_modest_proposal.txt", "pg2680_meditations.txt"] + [
    pytest.param(name, marks=pytest.mark.slow)
    for name in ("pg1342_pride_and_prejudice.txt", "pg2701_moby_dick.txt", "pg996_don_quixote.txt")
]
TRICKY = ["Hello world", "  two leading spaces", "tabs\tand\nnewlines\n\n", "digits 1234567 and 3.14",
          "naïve café — “quotes”", "日本語のテキスト", "emoji 🦙🔥 and ∑∫", "", " ", "a" * 50]


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(shared_path("llama2-tokenizer/tokenizer.model")))


def read_book(name: str) -> str:
    return shared_path(f"gutenberg/{name}").read_text(encoding="utf-8")


def test_sentencepiece_meta_tokenizer(sp):
    tok = load_tokenizer(shared_path("llama2-tokenizer/tokenizer.model"))
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.encode("Hello world") == [15043, 3186]
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 32000)
    assert tok.encode("Hello", bos=True, eos=True) == [1, 15043, 2]


@pytest.mark.parametrize("book", BOOKS)
def test_whole_books_identical_to_sentencepiece_and_hf_json(sp, book):
    text = read_book(book)
    expected = sp.encode(text)
    ours = load_tokenizer(shared_path("llama2-tokenizer/tokenizer.model"))
    hf = load_tokenizer(shared_path("llama2-tokenizer/tokenizer.hf-dolma.json"))
    assert isinstance(hf, HFTokenizer)
    assert ours.encode(text) == expected
    hf_ids = hf.encode(text)
    assert max(hf_ids) < 32000
    assert hf_ids == expected
    assert hf.decode(expected[:2000]) == sp.decode(expected[:2000])


def test_hf_tokenizer_specials_and_tricky_text(sp):
    hf = load_tokenizer(shared_path("llama2-tokenizer/tokenizer.hf-dolma.json"))
    assert (hf.bos_id, hf.eos_id) == (1, 2)
    for text in TRICKY:
        assert hf.encode(text) == sp.encode(text), text
    assert hf.encode("Hi", bos=True, eos=True) == [1] + sp.encode("Hi") + [2]


def test_llama2c_tokenizer_bin_matches_sentencepiece(sp):
    tok = load_tokenizer(shared_path("llama2-tokenizer/tokenizer.bin"))
    assert isinstance(tok, Llama2cTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 32000)
    book = read_book("pg1080_modest_proposal.txt")
    assert tok.encode(book) == sp.encode(book)  # a whole book in one piece
    for text in TRICKY + book.splitlines()[:300]:
        ids = sp.encode(text)
        assert tok.encode(text) == ids, text
        assert tok.decode(ids) == sp.decode(ids), text
    assert tok.decode([1] + sp.encode("Hello world")) == "Hello world"  # the space after BOS is dropped


def test_llama2c_tok512():
    tok = load_tokenizer(shared_path("stories260K/tok512.bin"))
    ids = tok.encode("Once upon a time, Lily saw a big red ball.", bos=True)
    assert ids[0] == 1 and len(ids) < 20
    assert tok.decode(ids) == "Once upon a time, Lily saw a big red ball."
    assert tok.decode(tok.encode("é🦙")) == "é🦙"  # byte fallback both ways


def test_folder_lookup_and_errors(tmp_path):
    shutil.copy(shared_path("stories260K/tok512.bin"), tmp_path / "tokenizer.bin")
    assert isinstance(load_tokenizer(tmp_path), Llama2cTokenizer)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no tokenizer file"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(UserError, match="no such tokenizer file"):
        load_tokenizer(tmp_path / "nope.model")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")
    (tmp_path / "cut.bin").write_bytes((tmp_path / "tokenizer.bin").read_bytes()[:1001])
    with pytest.raises(UserError, match="truncated"):
        load_tokenizer(tmp_path / "cut.bin")


def run_c_merges(tok: Llama2cTokenizer, tokens: list[int]) -> list[int]:
    """run.c's encode loop as written there: rescan for the best (leftmost on ties) pair after every merge."""
    tokens = list(tokens)
    while True:
        best, best_id, best_score = -1, -1, -1e10
        for i in range(len(tokens) - 1):
            merged = tok.lookup.get(tok.pieces[tokens[i]] + tok.pieces[tokens[i + 1]])
            if merged is not None and tok.scores[merged] > best_score:
                best, best_id, best_score = i, merged, tok.scores[merged]
        if best < 0:
            return tokens
        tokens[best : best + 2] = [best_id]


def test_llama2c_heap_merges_equal_run_c_loop():
    import random

    rng = random.Random(0)
    for path in ("stories260K/tok512.bin", "llama2-tokenizer/tokenizer.bin"):
        tok = Llama2cTokenizer(shared_path(path))
        alphabet = "aaabcdeeelnorst    ,.\n\u00e9\U0001f999"
        for _ in range(200):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
            start = [tok.lookup[b" "]] + [tok.lookup.get(c.encode(), -1) for c in text]
            if -1 in start:  # characters without a piece go through byte fallback: covered by encode below
                start = None
            ids = tok.encode(text)
            if start is not None:
                assert ids == run_c_merges(tok, start), text
            assert tok.decode(ids) == text  # only the dummy-prefix space is dropped


# ------------------------------------------------------------------ #13 fault 3: text is always encoded as text

CONTROL_STRINGS = ["<s>", "</s>", "<unk>", "<pad>", "<0x41>", "<|begin_of_text|>", "<|end_of_text|>",
                   "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_3|>",
                   "<|im_start|>", "[INST]", "<<SYS>>", "\n<s>\n"]
LLAMA2_FILES = ["llama2-tokenizer/tokenizer.model", "llama2-tokenizer/tokenizer.hf-dolma.json",
                "llama2-tokenizer/tokenizer.bin"]


def all_backends():
    """One tokenizer per backend: SentencePiece, HF tokenizer.json, llama2.c tokenizer.bin, tiktoken."""
    return {name: load_tokenizer(shared_path(name)) for name in LLAMA2_FILES + ["llama3-tokenizer/tokenizer.model"]}


def test_control_strings_in_documents_stay_text(sp, tmp_path):
    """An HTML strike tag and a sentence about tokens: sentencepiece's ids (no BOS/EOS/UNK inside the document)
    for every backend of the Llama-2 vocabulary, through the `tokenize` step too (the CLI's path)."""
    import numpy as np

    from llamaforge.data.shards import TokenShard, tokenize

    docs = ["Now <s>$40</s> only!", "The tokens <s>, </s> and <unk> mark BOS, EOS and unknown.",
            "x</s><s>y", "<s>", "</s>", "<unk>"]
    for name in LLAMA2_FILES:
        tok = load_tokenizer(shared_path(name))
        for doc in docs:
            assert tok.encode(doc) == sp.encode(doc), (name, doc)
            assert not set(tok.encode(doc)) & {0, 1, 2}, (name, doc)
    assert sp.encode("Now <s>$40</s> only!") == [2567, 529, 29879, 29958, 29938, 29946, 29900, 829, 29879, 29958,
                                                 871, 29991]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(__import__("json").dumps({"text": d}) + "\n" for d in docs))
    shard = TokenShard(tokenize(src, shared_path("llama2-tokenizer/tokenizer.hf-dolma.json"), tmp_path / "hf"))
    assert all(shard.doc(i).tolist() == sp.encode(d) for i, d in enumerate(docs))
    assert not np.isin(shard.tokens, [0, 1, 2]).any()


def test_tiktoken_special_strings_stay_text():
    """Meta's Llama 3 tokenizer.model through the tiktoken package: known ids, special-token strings as text."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from llamaforge.tokenizer import LLAMA3_PATTERN, TiktokenTokenizer

    path = shared_path("llama3-tokenizer/tokenizer.model")
    tok = load_tokenizer(path)
    assert isinstance(tok, TiktokenTokenizer)
    assert tok.encode("Hello world") == [9906, 1917]  # the known Llama 3 ids
    assert tok.encode("The quick brown fox") == [791, 4062, 14198, 39935]
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (128000, 128001, 128256)
    assert [tok.special_token_id(s) for s in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")] == [
        128006, 128007, 128009]
    # An independent plain tiktoken Encoding without special tokens: what the text is as text.
    plain = tiktoken.Encoding("plain", pat_str=LLAMA3_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(path)),
                              special_tokens={})
    for s in CONTROL_STRINGS + ["<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nSure"]:
        ids = tok.encode(s)
        assert ids == plain.encode(s), s
        assert max(ids) < 128000 and tok.decode(ids) == s, s
    assert tok.encode("hi", bos=True, eos=True) == [128000, 6151, 128001]


def test_no_prompt_text_produces_a_control_id(sp):
    """Property (b): random prompts mixing words, whitespace runs, bytes, emoji and every backend's control
    strings never give a control id, for every backend; the Llama-2-vocabulary backends agree with sentencepiece."""
    import random

    rng = random.Random(13)
    atoms = CONTROL_STRINGS + ["a", "the", " ", "  ", "\n", "\t", "é", "日本", "🦙", "$", "<", ">", "|", "/", "0x",
                               "41", "INST", "eot_id", "\u200b", "\x00"]
    texts = ["".join(rng.choice(atoms) for _ in range(rng.randint(1, 25))) for _ in range(300)]
    for name, tok in all_backends().items():
        assert tok.control_ids >= {tok.bos_id, tok.eos_id}, name
        for text in texts:
            ids = tok.encode(text)
            assert not set(ids) & tok.control_ids, (name, text)
            if name in LLAMA2_FILES:
                assert ids == sp.encode(text), (name, text)


def test_tiktoken_file_travels_into_a_model_folder(tmp_path):
    """A `.tiktoken` file (loads by itself) is carried into a saved model folder under the name the folder lookup
    finds (`tokenizer.model`, Meta's Llama 3 name), and the model loads with it: the same ids as the file."""
    import torch

    from llamaforge.formats import load_model_and_tokenizer, save_model
    from llamaforge.model import ModelArgs, Transformer
    from llamaforge.tokenizer import TiktokenTokenizer

    src = tmp_path / "llama3.tiktoken"
    shutil.copy(shared_path("llama3-tokenizer/tokenizer.model"), src)
    direct = load_tokenizer(src)
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=8, n_layers=1, n_heads=2, vocab_size=direct.vocab_size, hidden_dim=16,
                                  max_seq_len=16))
    save_model(model, tmp_path / "m", format="native", tokenizer_path=src)
    assert (tmp_path / "m/tokenizer.model").read_bytes() == src.read_bytes()
    _, tok = load_model_and_tokenizer(tmp_path / "m")
    assert isinstance(tok, TiktokenTokenizer)
    assert tok.encode("Hello world") == direct.encode("Hello world") == [9906, 1917]
