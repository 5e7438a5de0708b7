"""`llamaforge tokenizer train`: Meta's trainer spec field for field, digits split one per piece, byte fallback for
characters never seen, determinism, and the inputs it accepts."""

from __future__ import annotations

import gzip
import json
import random

import pytest
from sentencepiece import SentencePieceProcessor
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from conftest import shared_path
from llamaforge import load_tokenizer
from llamaforge.cli import main
from llamaforge.data.tokenizer_training import META_TRAINER_SPEC, sample_sentences, sentences, train_tokenizer
from llamaforge.errors import UserError


def corpus_lines(n=3000, seed=0):
    """English-like lines full of numbers, so a BPE without split_digits would surely learn multi-digit pieces."""
    rng = random.Random(seed)
    words = "the year was when prices rose to dollars and cents in page chapter of volume number".split()
    out = []
    for _ in range(n):
        parts = [rng.choice(words) if rng.random() < 0.6 else str(rng.choice([1999, 2000, 2023, 42, 100, 7]))
                 for _ in range(rng.randint(3, 15))]
        out.append(" ".join(parts))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    lines = corpus_lines()
    with gzip.open(d / "part-0.jsonl.gz", "wt") as f:
        for i in range(0, 2000, 10):
            f.write(json.dumps({"text": "\n".join(lines[i : i + 10])}) + "\n")
    (d / "more.txt").write_text("\n".join(lines[2000:]) + "\n")
    return d


@pytest.fixture(scope="module")
def model(corpus, tmp_path_factory):
    return train_tokenizer([corpus], 400, tmp_path_factory.mktemp("tok") / "spec", max_sentences=50_000)


def pieces(tok, text):
    return [tok.id_to_piece(i) for i in tok.encode(text)]


def test_digits_are_split_one_per_piece(model):
    tok = load_tokenizer(model)
    learned = [tok.id_to_piece(i) for i in range(259, tok.vocab_size)]  # after <unk> <s> </s> and 256 bytes
    assert not [p for p in learned if sum(c.isdigit() for c in p) > 1]  # no multi-digit piece, though 2023 is common
    assert set("1999 2000 2023 42 100 7".replace(" ", "")) <= set(learned)  # the corpus's digits, each a piece
    expected = ["▁in", "▁", "2", "0", "2", "3", "▁page", "▁", "1", "9", "9", "9"]
    assert pieces(tok, "in 2023 page 1999") == expected


def test_unseen_characters_fall_back_to_bytes(model):
    tok = load_tokenizer(model)
    text = "price €5 😀"
    got = pieces(tok, text)
    assert got[got.index("<0xE2>") : got.index("<0xE2>") + 3] == ["<0xE2>", "<0x82>", "<0xAC>"]  # € in UTF-8
    assert ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"] == got[-4:]  # the emoji, four bytes
    assert tok.sp.unk_id() not in tok.encode(text) and tok.decode(tok.encode(text)) == text


def test_special_ids_and_vocab_size(model):
    tok = load_tokenizer(model)
    assert tok.vocab_size == 400
    assert [tok.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"] and (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.sp.pad_id() == -1
    assert [tok.id_to_piece(i) for i in (3, 258)] == ["<0x00>", "<0xFF>"]  # the 256 byte pieces follow
    assert model.with_suffix(".vocab").read_text(encoding="utf-8").splitlines()[1].startswith("<s>\t")


def test_whitespace_is_kept_without_normalization(model):
    tok = load_tokenizer(model)
    text = "  two  spaces\tand ﬁ ligature"  # NFKC would fold the ligature and the spaces
    assert tok.decode(tok.encode(text)) == text


def trainer_spec(path):
    proto = model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto


# fields where our model differs from Meta's on purpose: corpus size, sampling (done by us) and threads
OURS = {"vocab_size", "input_sentence_size", "shuffle_input_sentence", "num_threads"}


def test_spec_equals_meta_tokenizer_model(model):
    meta = trainer_spec(shared_path("llama2-tokenizer/tokenizer.model"))
    ours = trainer_spec(model)
    for field, value in META_TRAINER_SPEC.items():
        if field in OURS:
            continue
        spec = meta.normalizer_spec if field in ("normalization_rule_name", "add_dummy_prefix",
                                                 "remove_extra_whitespaces") else meta.trainer_spec
        mine = ours.normalizer_spec if spec is meta.normalizer_spec else ours.trainer_spec
        name = "name" if field == "normalization_rule_name" else field
        theirs = spec.model_type if field == "model_type" else getattr(spec, name)
        if field == "model_type":
            assert mine.model_type == theirs == model_pb2.TrainerSpec.BPE
        else:
            assert getattr(mine, name) == pytest.approx(theirs), field
            assert theirs == pytest.approx(value), field


def test_deterministic(corpus, model, tmp_path):
    again = train_tokenizer([corpus], 400, tmp_path / "again", max_sentences=50_000)
    assert again.read_bytes() == model.read_bytes()


def test_sampling_is_seeded_and_bounded(corpus):
    from llamaforge.data.tokenizer_training import input_files

    files = input_files([corpus])
    a, b = sample_sentences(files, 100, 0, 4192), sample_sentences(files, 100, 0, 4192)
    assert a == b and len(a) == 100 and a != sample_sentences(files, 100, 1, 4192)
    assert len(sample_sentences(files, 10**6, 0, 4192)) == 3000  # everything, when it fits


def test_long_lines_are_cut_at_spaces():
    line = " ".join(["wörd"] * 3000)
    parts = list(sentences(line + "\n\n   \nshort", 100))
    assert all(len(p.encode()) <= 100 for p in parts) and parts[-1] == "short"
    assert "".join(parts[:-1]) == line


def test_too_large_vocab_is_a_user_error_and_writes_nothing(corpus, tmp_path):
    with pytest.raises(UserError, match="vocab_size=100000") as e:
        train_tokenizer([corpus], 100_000, tmp_path / "big", max_sentences=1000)
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []


def test_cli(corpus, tmp_path, capsys):
    rc = main(["tokenizer", "train", "--input", str(corpus / "more.txt"), "--vocab-size", "320",
               "--out", str(tmp_path / "cli"), "--max-sentences", "500"])
    assert rc == 0 and "320 pieces" in capsys.readouterr().out
    assert SentencePieceProcessor(model_file=str(tmp_path / "cli.model")).vocab_size() == 320
    rc = main(["tokenizer", "train", "--input", str(tmp_path / "nope"), "--vocab-size", "320", "--out", "x"])
    assert rc == 2 and "nope: no such file" in capsys.readouterr().err


def test_gutenberg_books(tmp_path):
    books = shared_path("gutenberg")
    files = sorted(books.glob("pg1*.txt"))[:3]
    tok = load_tokenizer(train_tokenizer(files, 2000, tmp_path / "books", max_sentences=20_000))
    text = "It was the best of times, in 1859."
    assert tok.decode(tok.encode(text)) == text
    assert pieces(tok, "1859")[-4:] == ["1", "8", "5", "9"]
