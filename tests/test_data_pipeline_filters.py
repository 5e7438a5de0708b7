"""Filters: CCNet line-dedup semantics and groups, exact and MinHash dedup, the reference classifier (the CCNet LM
and buckets are in test_data_ccnet.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import shared_path

from llamaforge.data.filters import (
    ExactDedup,
    LineDedup,
    MinHashDedup,
    ReferenceClassifier,
    normalize_for_dedup,
)


def _run_group(stage, shards: list[list[str]]) -> list[list[str | None]]:
    """observe -> resolve -> apply, as the pipeline does, on in-memory shards; None for a dropped document."""
    summaries = []
    for docs in shards:
        for i, text in enumerate(docs):
            stage.observe(i, {"text": text, "meta": {}})
        summaries.append(stage.summary())
    decisions = stage.resolve(summaries)
    out = []
    for docs, dec in zip(shards, decisions):
        res = [stage.apply(i, {"text": t, "meta": {}}, dec) for i, t in enumerate(docs)]
        out.append([r["text"] if isinstance(r, dict) else None for r in res])
    return out


def test_normalize_for_dedup():
    assert normalize_for_dedup("  Hello, World 2023 “quoted”… ") == "hello, world 0000 quoted"


def test_ccnet_line_dedup_removes_every_copy_within_a_group():
    shards = [["menu\nunique one\nHome", "menu\nunique two"], ["MENU \nunique three"], ["menu\nunique four"]]
    got = _run_group(LineDedup(mode="ccnet", group_size=2), shards)
    # "menu" (normalized) is seen 3 times in the group of shards 0-1: gone everywhere there, first copy included;
    # shard 2 is its own group where "menu" is seen once and stays
    assert got == [["unique one\nHome", "unique two"], ["unique three"], ["menu\nunique four"]]


def test_first_line_dedup_keeps_the_first_copy():
    got = _run_group(LineDedup(mode="first", algo="md5", lowercase_only=True),
                     [["a line\nb line", "A Line\nc line"], ["b line"]])
    assert got == [["a line\nb line", "c line"], [None]]


def test_exact_dedup_keeps_first():
    assert _run_group(ExactDedup(), [["x", "y", "x"], ["y", "z"]]) == [["x", "y", None], [None, "z"]]


def test_minhash_dedup_threshold():
    words = [f"w{i}" for i in range(3000)]
    base = " ".join(words)
    near = " ".join(words[:2950] + ["changed"] * 50)  # ~97% of the 5-grams shared
    far = " ".join(words[:1500] + [f"v{i}" for i in range(1500)])  # ~50% shared
    got = _run_group(MinHashDedup(threshold=0.9), [[base, near], [far]])
    assert got == [[base, None], [far]]


def _word_5grams(text: str) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i:i + 5]) for i in range(len(words) - 4)}


def _copy_at(words: list[str], target: float, rng: np.random.Generator, tag: str) -> tuple[str, float]:
    """A copy of `words` with scattered words replaced until its true word-5-gram Jaccard with the original
    first drops to `target` or just above it; returns (copy, true Jaccard), computed here with Python sets."""
    base = _word_5grams(" ".join(words))
    copy = list(words)
    order = rng.permutation(len(words))
    lo, hi = 0, len(words)  # binary search on how many positions to change
    while hi - lo > 1:
        mid = (lo + hi) // 2
        trial = list(words)
        for j in order[:mid]:
            trial[j] = f"{tag}x{j}"
        g = _word_5grams(" ".join(trial))
        if len(base & g) / len(base | g) >= target:
            lo = mid
        else:
            hi = mid
    for j in order[:lo]:
        copy[j] = f"{tag}x{j}"
    g = _word_5grams(" ".join(copy))
    return " ".join(copy), len(base & g) / len(base | g)


def test_minhash_near_dup_decides_on_exact_jaccard():
    """Copies at Jaccard ~0.85 / 0.90 / 0.92 / 0.95 of their original: dropped exactly when J >= 0.9, whatever the
    MinHash estimate says (a 128-permutation estimate of 0.92 is below 0.9 about one time in five)."""
    rng = np.random.default_rng(0)
    originals, copies, truth = [], [], []
    for target in (0.85, 0.90, 0.92, 0.95):
        for k in range(8):
            tag = f"t{int(target * 100)}k{k}"
            words = [f"{tag}w{i}" for i in range(1500)]
            copy, j = _copy_at(words, target, rng, tag)
            assert abs(j - target) < 0.01
            originals.append(" ".join(words))
            copies.append(copy)
            truth.append(j)
    got = _run_group(MinHashDedup(threshold=0.9), [originals, copies])
    assert got[0] == originals  # distinct vocabularies: no original is a near copy of another
    for j, kept, copy in zip(truth, got[1], copies):
        assert (kept is None) == (j >= 0.9), f"true Jaccard {j:.4f}: {'dropped' if kept is None else 'kept'}"


def _wikitext_articles() -> list[str]:
    text = shared_path("wikitext-2/valid.txt").read_text(encoding="utf-8")
    paragraphs = [p.strip() for p in text.split("\n") if len(p.strip()) > 200 and not p.strip().startswith("=")]
    return paragraphs


def _shakespeare_chunks() -> list[str]:
    text = shared_path("tinyshakespeare/input.txt").read_text(encoding="utf-8")
    return [text[i:i + 600] for i in range(0, 600 * 400, 600)]


def test_reference_classifier_separates_held_out_pages(tmp_path: Path):
    wiki, other = _wikitext_articles(), _shakespeare_chunks()
    clf = ReferenceClassifier.train(wiki[:300], other[:300])
    clf.save(tmp_path / "clf.npz")
    clf = ReferenceClassifier.load(tmp_path / "clf.npz")
    p_wiki = clf.predict_proba(wiki[300:400])
    p_other = clf.predict_proba(other[300:400])
    assert np.mean(p_wiki >= 0.5) > 0.95 and np.mean(p_other < 0.5) > 0.95
