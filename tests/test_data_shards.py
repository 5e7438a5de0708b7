"""Token shards and `llamaforge tokenize`: ids equal to SentencePiece's own encoding, worker-count independence,
and one-line errors with nothing half-written for empty, corrupt or malformed input."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest
import sentencepiece as spm

from conftest import shared_path
from llamaforge.cli import main
from llamaforge.data.shards import ShardWriter, TokenShard, token_dtype, tokenize
from llamaforge.data.tokenizer_training import train_tokenizer
from llamaforge.errors import UserError

WORDS = "the quick brown fox jumps over lazy dog while seven wizards quietly judge boxing matches 2024 é ü".split()


def make_texts(n, seed=0):
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) for _ in range(n)]
    texts[3] = "line one\n\n  indented line two\ttab 12345"  # whitespace and digits survive the round trip
    texts[7] = ""  # empty: skipped and counted
    return texts


def write_jsonl(path, texts, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t, "meta": {"n": len(t)}}) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    corpus = write_jsonl(d / "corpus.jsonl", make_texts(400, seed=1))
    return train_tokenizer([corpus], 300, d / "tiny", max_sentences=10_000)


def test_roundtrip_equals_direct_sentencepiece_encoding(tmp_path, tokenizer):
    texts = make_texts(1500)
    write_jsonl(tmp_path / "a.jsonl.gz", texts[:700], gz=True)
    write_jsonl(tmp_path / "b.jsonl", texts[700:])
    folder = tokenize([tmp_path], tokenizer, tmp_path / "tok", source="web")
    shard = TokenShard(folder)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    expected = [sp.encode(t) for t in texts if t]  # a.jsonl.gz then b.jsonl: the folder's sorted order
    assert shard.n_docs == len(expected) == 1499 and shard.header["n_empty_skipped"] == 1
    assert all(shard.doc(i).tolist() == ids for i, ids in enumerate(expected))
    assert shard.dtype == np.dtype("<u2") and shard.tokens.dtype == np.uint16
    assert shard.n_bytes == sum(len(t.encode()) for t in texts)
    assert shard.header["tokenizer_sha256"] and shard.header["source"] == "web"
    assert sp.decode(shard.doc(3).tolist()) == texts[3]


def test_meta_tokenizer_roundtrip(tmp_path):
    meta = shared_path("llama2-tokenizer/tokenizer.model")
    texts = ["Hello world", "In 2023, Meta released LLaMA.\nÜber café — naïve 😀"]
    folder = tokenize(write_jsonl(tmp_path / "x.jsonl", texts), meta, tmp_path / "out")
    shard = TokenShard(folder)
    assert shard.doc(0).tolist() == [15043, 3186]  # SPEC.md: "Hello world" -> [15043, 3186]
    sp = spm.SentencePieceProcessor(model_file=str(meta))
    assert shard.doc(1).tolist() == sp.encode(texts[1])
    assert (shard.vocab_size, shard.bos_id, shard.eos_id) == (32000, 1, 2) and folder.name == "x"


def test_hf_tokenizer_json_gives_the_same_shard(tmp_path):
    """Any tokenizer load_tokenizer reads: Meta's vocabulary as HF tokenizer.json tokenizes to the same ids."""
    meta = shared_path("llama2-tokenizer/tokenizer.model")
    hf = shared_path("llama2-tokenizer/tokenizer.hf-dolma.json")
    src = write_jsonl(tmp_path / "m.jsonl", make_texts(200) + ["In 2023, Über café — naïve 😀"])
    a = TokenShard(tokenize(src, meta, tmp_path / "sp"))
    b = TokenShard(tokenize(src, hf, tmp_path / "hf"))
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.offsets, b.offsets)
    assert (b.bos_id, b.eos_id) == (1, 2) and b.dtype == np.uint16


def test_workers_do_not_change_the_output(tmp_path, tokenizer):
    for i in range(3):
        write_jsonl(tmp_path / f"part{i}.jsonl", make_texts(1200, seed=10 + i))
    one = tokenize(tmp_path, tokenizer, tmp_path / "w1", source="s", workers=1)
    two = tokenize(tmp_path, tokenizer, tmp_path / "w2", source="s", workers=2)
    for name in ("tokens.bin", "offsets.bin", "header.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_dtype_follows_vocab_size():
    assert token_dtype(32000) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(128256) == np.uint32


def test_uint32_shard_roundtrip(tmp_path):
    docs = [np.array([70000, 5, 128000]), np.array([3])]
    with ShardWriter(tmp_path / "big", 128256, 128000, 128001) as w:
        w.add(np.concatenate(docs), [3, 1], n_bytes=10)
    shard = TokenShard(tmp_path / "big")
    assert shard.dtype == np.uint32 and [shard.doc(i).tolist() for i in range(2)] == [d.tolist() for d in docs]
    assert (tmp_path / "big" / "tokens.bin").stat().st_size == 4 * 4


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_no_documents_is_an_error_and_writes_nothing(tmp_path, tokenizer):
    src = write_jsonl(tmp_path / "empty.jsonl", ["", ""])
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="no document"):
        tokenize(src, tokenizer, tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("workers", [1, 2])
def test_malformed_line_names_file_and_line_and_writes_nothing(tmp_path, tokenizer, workers):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "fine"}\n' * 1000 + '{"text": 3}\n')  # in the second chunk
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match=r"bad\.jsonl:1001: text"):
        tokenize(src, tokenizer, tmp_path / "out", workers=workers)
    assert leftovers(tmp_path / "out") == []


def test_source_must_be_a_plain_name(tmp_path, tokenizer):
    src = write_jsonl(tmp_path / "s.jsonl", ["text"])
    with pytest.raises(UserError, match="source"):
        tokenize(src, tokenizer, tmp_path / "out", source="../escape")


def test_failed_rerun_keeps_the_previous_shard(tmp_path, tokenizer):
    good = tokenize(write_jsonl(tmp_path / "s.jsonl", make_texts(20)), tokenizer, tmp_path / "out")
    before = (good / "tokens.bin").read_bytes()
    (tmp_path / "s.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(UserError, match="s.jsonl:2"):
        tokenize(tmp_path / "s.jsonl", tokenizer, tmp_path / "out")
    assert (good / "tokens.bin").read_bytes() == before and leftovers(tmp_path / "out") == ["s"]


@pytest.fixture
def shard_folder(tmp_path, tokenizer):
    return tokenize(write_jsonl(tmp_path / "c.jsonl", make_texts(30)), tokenizer, tmp_path / "out")


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda d: (d / "tokens.bin").write_bytes((d / "tokens.bin").read_bytes()[:-3]), r"tokens\.bin: size"),
        (lambda d: (d / "offsets.bin").unlink(), r"offsets\.bin: missing"),
        (lambda d: (d / "header.json").write_text("{not json"), r"header\.json: not valid JSON"),
        (lambda d: (d / "header.json").unlink(), r"header\.json: missing"),
        (lambda d: reverse_offsets(d), r"offsets\.bin: offsets"),
        (lambda d: edit_header(d, n_docs=0), "empty shard"),
        (lambda d: edit_header(d, dtype="<f4"), "dtype"),
    ],
)
def test_corrupt_shard_is_a_one_line_error_naming_the_file(shard_folder, damage, match):
    damage(shard_folder)
    with pytest.raises(UserError, match=match) as e:
        TokenShard(shard_folder)
    assert str(shard_folder) in str(e.value) and "\n" not in str(e.value)


def reverse_offsets(folder):
    offsets = np.fromfile(folder / "offsets.bin", dtype="<i8")
    (folder / "offsets.bin").write_bytes(offsets[::-1].tobytes())


def edit_header(folder, **changes):
    header = json.loads((folder / "header.json").read_text())
    header.update(changes)
    (folder / "header.json").write_text(json.dumps(header))


def test_cli_tokenize_and_errors(tmp_path, tokenizer, capsys):
    src = write_jsonl(tmp_path / "docs.jsonl.gz", make_texts(50), gz=True)
    rc = main(["tokenize", "--tokenizer", str(tokenizer), "--input", str(src), "--out", str(tmp_path / "t"),
               "--source", "docs"])
    assert rc == 0 and "49 documents" in capsys.readouterr().out
    assert TokenShard(tmp_path / "t" / "docs").n_docs == 49
    rc = main(["tokenize", "--tokenizer", str(tokenizer), "--input", str(tmp_path / "missing"), "--out", "x"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "missing" in err
