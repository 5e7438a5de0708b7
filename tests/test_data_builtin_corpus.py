"""The built-in demo corpus (stdlib code and documentation), and the whole data path on it:
tokenizer train -> tokenize -> MixtureLoader."""

from __future__ import annotations

import json

import torch

from llamaforge import load_tokenizer
from llamaforge.data.builtin_corpus import (
    _github_rules,
    code_documents,
    docs_documents,
    module_docstrings,
    stdlib_root,
    write_builtin_corpus,
)
from llamaforge.data.mixture import MixtureLoader
from llamaforge.data.shards import TokenShard, tokenize
from llamaforge.data.tokenizer_training import train_tokenizer


def read(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_sources_are_capped_deterministic_and_skip_tests(tmp_path):
    a = write_builtin_corpus(tmp_path / "a", max_mb=0.2)
    b = write_builtin_corpus(tmp_path / "b", max_mb=0.2)
    for name in ("code", "docs"):
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (tmp_path / "b" / f"{name}.jsonl").read_bytes()
        assert 0 < a[name]["bytes"] <= 200_000 and a[name]["docs"] > 0
    code = read(tmp_path / "a" / "code.jsonl")
    assert all(d["meta"]["path"].endswith(".py") and "/test/" not in "/" + d["meta"]["path"] for d in code)
    assert "def " in "".join(d["text"] for d in code)
    docs = read(tmp_path / "a" / "docs.jsonl")
    assert docs[0]["meta"]["source"] == "pydoc-topics" and "statement" in docs[0]["text"]
    assert {n: a[n]["docs"] for n in a} == {n: b[n]["docs"] for n in b}


def test_docs_include_module_docstrings():
    docs = list(docs_documents(max_bytes=1_000_000))
    assert {d["meta"]["source"] for d in docs} == {"pydoc-topics", "python-docstrings"}
    json_init = (stdlib_root() / "json" / "__init__.py").read_text(encoding="utf-8")
    text = module_docstrings(json_init)
    assert "JSON (JavaScript Object Notation)" in text and "dumps: Serialize" in text


def test_module_docstrings_skip_private_names():
    src = '''"""Mod."""\ndef f():\n    """Eff."""\ndef _g():\n    """Hidden."""\nclass C:\n    """See."""\n'''
    assert module_docstrings(src) == "Mod.\n\nf: Eff.\n\nC: See."
    assert module_docstrings("x = (") is None


def test_github_rules_hook():
    raw = {d["meta"]["path"]: d["text"] for d in code_documents(max_bytes=2_000_000, github_rules=False)}
    ruled = {d["meta"]["path"]: d for d in code_documents(max_bytes=2_000_000, github_rules=True)}
    if _github_rules() is None:  # the data pipeline is not installed: files pass as they are
        assert {p: d["text"] for p, d in ruled.items()} == raw
        return
    assert all(d["meta"]["github_rules"] for d in ruled.values())
    # the rules strip leading comment headers, so some files shrink, and none grows
    common = set(ruled) & set(raw)
    assert any(len(ruled[p]["text"]) < len(raw[p]) for p in common)
    assert all(len(ruled[p]["text"]) <= len(raw[p]) for p in common)


def test_end_to_end_tokenizer_tokenize_and_loader(tmp_path):
    corpus = write_builtin_corpus(tmp_path / "corpus", max_mb={"code": 0.3, "docs": 0.2})
    model = train_tokenizer([tmp_path / "corpus"], 1000, tmp_path / "tok", max_sentences=20_000)
    sources = {n: tokenize(corpus[n]["path"], model, tmp_path / "shards", source=n) for n in ("code", "docs")}
    tok = load_tokenizer(model)
    assert tok.vocab_size == 1000 and corpus["docs"]["bytes"] <= 200_000
    for n, folder in sources.items():
        shard = TokenShard(folder)
        assert shard.n_docs == corpus[n]["docs"] and shard.n_bytes == corpus[n]["bytes"]
    loader = MixtureLoader(sources, {"code": 0.7, "docs": 0.3}, seq_len=64, batch_size=4, seed=0)
    x, y = loader.next_batch()
    assert x.shape == (4, 64) and int(x.max()) < tok.vocab_size
    text = tok.decode(torch.cat([x[0], y[0, -1:]]).tolist())
    assert len(text) > 64  # real text came back out
    assert loader.bytes_per_token["code"] > 1.5  # a trained BPE compresses source code
    val = loader.val_batches(1)[0][0]
    assert val.shape == (4, 64)
