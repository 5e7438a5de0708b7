"""Bounded memory on giant documents (issue #18 item 6): long texts are encoded in pieces cut before spaces, where
the cut cannot change the ids. Exactness against sentencepiece on the whole text; memory of `llamaforge tokenize`
on one generated 20 MB line."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import sentencepiece as spm
from conftest import shared_path

from llamaforge import tokenizer as T
from llamaforge.tokenizer import load_tokenizer, split_at_spaces

WORDS = ["the", "cat", "sat", "on", "mat", "Ünïcode", "😀", "don't", "x1", "  ", "end.", "naïve", "東京", "\n",
         "\t", "forty-two", "  x"]


def _text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def test_split_at_spaces_joins_back_and_cuts_only_before_a_lone_space():
    text = _text(20000)
    pieces = list(split_at_spaces(text, 1000))
    assert "".join(pieces) == text and len(pieces) > 50
    for p in pieces[1:]:
        assert p[0] == " " and not p[1].isspace()
    assert list(split_at_spaces("a" * 5000, 100)) == ["a" * 5000]  # nowhere to cut: one piece


@pytest.mark.parametrize("rel", ["llama2-tokenizer/tokenizer.model", "llama2-tokenizer/tokenizer.hf-dolma.json",
                                 "llama2-tokenizer/tokenizer.bin", "stories260K/tok512.bin"])
def test_pieces_give_the_ids_of_the_whole_text(rel, monkeypatch):
    path = shared_path(rel)
    text = _text(30000)
    tok = load_tokenizer(path)
    assert tok.splits_at_spaces
    whole = spm.SentencePieceProcessor(model_file=str(shared_path("llama2-tokenizer/tokenizer.model"))).encode(text) \
        if "llama2-tokenizer" in rel else tok.encode(text)  # sentencepiece on the whole text: the reference
    monkeypatch.setattr(T, "LONG_TEXT_CHARS", 3000)
    assert len(list(split_at_spaces(text, T.LONG_TEXT_CHARS))) > 20
    assert tok.encode(text) == whole
    assert [i for part in tok.encode_pieces(text) for i in part] == whole


def _peak_kb(*argv: str) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "llamaforge", *argv], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_maxrss


@pytest.mark.slow
def test_tokenize_a_20_mb_line_in_memory_linear_in_its_bytes(tmp_path):
    model = shared_path("llama2-tokenizer/tokenizer.model")
    text = _text((20 << 20) // 4, seed=1)[: 20 << 20]
    assert len(text) == 20 << 20
    n_bytes = len(text.encode("utf-8"))
    (tmp_path / "big.jsonl").write_text(json.dumps({"text": text}) + "\n")
    (tmp_path / "small.jsonl").write_text(json.dumps({"text": "a small document"}) + "\n")
    del text
    base = _peak_kb("tokenize", "--tokenizer", str(model), "--input", str(tmp_path / "small.jsonl"),
                    "--out", str(tmp_path / "small"))
    peak = _peak_kb("tokenize", "--tokenizer", str(model), "--input", str(tmp_path / "big.jsonl"),
                    "--out", str(tmp_path / "big"))
    growth = (peak - base) * 1024
    assert growth <= 10 * n_bytes, f"{growth / n_bytes:.1f}x the document's bytes"  # was ~43x (1.06 GB)
