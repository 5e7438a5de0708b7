"""Deduplication across shards: line hashes (CCNet, C4), exact content hashes (GitHub), MinHash-LSH (books).

All three are `GroupStage`s: each shard's hashes are gathered while it streams, one driver step decides, and a
second pass drops what was decided. Order is the shard order given on the command line, then document order,
so "the first copy" is well defined and the same on every executor.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from llamaforge.data.pipeline import Doc, GroupStage, Result

# CCNet's `normalize_for_dedup`: strip, lowercase, digits -> 0, delete typographic / full-width punctuation (ASCII
# punctuation is kept) and control characters.
UNICODE_PUNCT = "，。、„”“«»１」「《》´∶：？！（）；–—．～’…━〈〉【】％►"
_DELETE = {ord(c): None for c in UNICODE_PUNCT} | {c: None for c in [*range(32), *range(127, 160)]}
_DIGIT = re.compile(r"\d")


def normalize_for_dedup(line: str) -> str:
    line = line.strip()
    if not line:
        return line
    return _DIGIT.sub("0", line.lower()).translate(_DELETE)


def strip_lower(line: str) -> str:
    """TFDS's C4 line normalization before hashing."""
    return line.strip().lower()


def line_hashes(lines: list[str], normalize=normalize_for_dedup, algo: str = "sha1") -> np.ndarray:
    """First 8 bytes of the hash of each normalized line, as uint64 (CCNet uses SHA-1, TFDS's C4 MD5)."""
    digests = b"".join(hashlib.new(algo, normalize(s).encode("utf-8")).digest()[:8] for s in lines)
    return np.frombuffer(digests, dtype="<u8").copy()


def _split_by_shard(values: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(values, np.cumsum(sizes)[:-1]) if sizes else []


class LineDedup(GroupStage):
    """Remove repeated lines (paragraphs) across a group of shards.

    mode "ccnet": a line whose normalized hash occurs twice or more anywhere in its group of `group_size` shards
    is removed from every document, its first occurrence included (boilerplate semantics, CCNet's `mine`).
    mode "first": each line is kept only in the first document that has it (TFDS's C4 "each line in one page").
    Documents left without any line are dropped (`empty_after_line_dedup`).
    """

    def __init__(self, mode: str = "ccnet", group_size: int | None = None, algo: str = "sha1",
                 lowercase_only: bool = False, name: str = "line_dedup"):
        if mode not in ("ccnet", "first"):
            raise ValueError(f"mode must be 'ccnet' or 'first', got {mode!r}")
        self.mode, self.group_size, self.algo, self.name = mode, group_size, algo, name
        self.lowercase_only = lowercase_only  # the plain setting the resume check compares (not the function)
        self.normalize = strip_lower if lowercase_only else normalize_for_dedup  # C4 vs CCNet
        self._reset()

    def _reset(self):
        self._docs, self._hashes = [], []

    def observe(self, index: int, doc: Doc) -> None:
        h = line_hashes(doc["text"].split("\n"), self.normalize, self.algo)
        self._docs.append(np.full(len(h), index, dtype=np.int64))
        self._hashes.append(h)

    def summary(self) -> dict[str, np.ndarray]:
        docs = np.concatenate(self._docs) if self._docs else np.zeros(0, np.int64)
        hashes = np.concatenate(self._hashes) if self._hashes else np.zeros(0, np.uint64)
        self._reset()
        return {"doc": docs, "hash": hashes}

    def resolve(self, summaries):
        n = len(summaries)
        size = self.group_size or n
        drops: list[np.ndarray] = []
        for start in range(0, n, size):  # groups of consecutive shards, each deduplicated on its own
            group = summaries[start:start + size]
            hashes = np.concatenate([s["hash"] for s in group])
            if self.mode == "ccnet":
                uniq, counts = np.unique(hashes, return_counts=True)
                drop = np.isin(hashes, uniq[counts >= 2])
            else:
                _, first = np.unique(hashes, return_index=True)  # position of each hash's first occurrence
                drop = np.ones(len(hashes), dtype=bool)
                drop[first] = False
            drops += _split_by_shard(drop, [len(s["hash"]) for s in group])
        return [self._decision(s["doc"], d) for s, d in zip(summaries, drops)]

    @staticmethod
    def _decision(docs: np.ndarray, drop: np.ndarray) -> dict[str, np.ndarray]:
        """Per document, the mask of its lines to drop: lines are stored doc-major, so `start[i]` finds them."""
        start = np.searchsorted(docs, np.arange(docs.max() + 2 if len(docs) else 1))
        return {"drop": drop, "start": start}

    def apply(self, index: int, doc: Doc, decision) -> Result:
        lo, hi = decision["start"][index], decision["start"][index + 1]
        drop = decision["drop"][lo:hi]
        lines = doc["text"].split("\n")
        assert len(lines) == len(drop), "document changed between observe and apply"
        kept = [line for line, d in zip(lines, drop) if not d]
        if not any(s.strip() for s in kept):
            return "empty_after_line_dedup"
        meta = doc["meta"]
        meta.setdefault("original_nlines", len(lines))
        meta.setdefault("original_length", len(doc["text"]))
        doc["text"] = "\n".join(kept)
        return doc


class ExactDedup(GroupStage):
    """Drop documents whose text has the same MD5 as an earlier document (GitHub's exact file dedup)."""

    def __init__(self, name: str = "exact_dedup"):
        self.name = name
        self._digests: list[bytes] = []

    def observe(self, index: int, doc: Doc) -> None:
        self._digests.append(hashlib.md5(doc["text"].encode("utf-8", "surrogatepass")).digest())

    def summary(self):
        out = np.frombuffer(b"".join(self._digests), dtype="<u8").reshape(-1, 2).copy()
        self._digests = []
        return {"md5": out}

    def resolve(self, summaries):
        digests = np.concatenate([s["md5"] for s in summaries])
        keep = np.zeros(len(digests), dtype=bool)
        if len(digests):
            _, first = np.unique(digests, axis=0, return_index=True)
            keep[first] = True
        return [{"keep": k} for k in _split_by_shard(keep, [len(s["md5"]) for s in summaries])]

    def apply(self, index: int, doc: Doc, decision) -> Result:
        return doc if decision["keep"][index] else "duplicate"


_NON_WORD = re.compile(r"[^\w\s]+")
SIGNATURE_CHUNK = 20_000  # shingles hashed at once: bounds memory to ~20 MB for 128 permutations


def shingles(text: str, n: int = 5) -> set[bytes]:
    """Word n-grams of the lowercased text with punctuation removed: what MinHash compares."""
    words = _NON_WORD.sub("", text.lower()).split()
    if len(words) < n:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


class MinHashDedup(GroupStage):
    """Near-duplicate removal: drop a document whose estimated Jaccard similarity with an earlier kept one is at
    least `threshold` (the paper's "more than 90% content overlap" for books), using datasketch's MinHash and LSH.

    datasketch picks the bands x rows split of the `num_perm` minima that balances missed and false pairs at
    `threshold`; every LSH candidate is then confirmed on the whole signature (fraction of equal minima).
    """

    def __init__(self, threshold: float = 0.9, num_perm: int = 128, ngram: int = 5, seed: int = 1,
                 name: str = "near_dedup"):
        self.threshold, self.num_perm, self.ngram, self.seed, self.name = threshold, num_perm, ngram, seed, name
        self._sigs: list[np.ndarray] = []

    def signature(self, text: str) -> np.ndarray:
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm, seed=self.seed)
        items = list(shingles(text, self.ngram))
        for i in range(0, len(items), SIGNATURE_CHUNK):  # update_batch holds a (chunk x num_perm) array
            m.update_batch(items[i:i + SIGNATURE_CHUNK])
        return m.hashvalues.astype(np.uint64)

    def observe(self, index: int, doc: Doc) -> None:
        self._sigs.append(self.signature(doc["text"]))

    def summary(self):
        sigs = np.stack(self._sigs) if self._sigs else np.zeros((0, self.num_perm), np.uint64)
        self._sigs = []
        return {"sig": sigs}

    def resolve(self, summaries):
        from datasketch import MinHash, MinHashLSH

        lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        scheme = getattr(MinHash(num_perm=self.num_perm, seed=self.seed), "scheme", None)  # datasketch >= 2
        rebuild = {"scheme": scheme} if scheme else {}
        kept: dict[str, np.ndarray] = {}
        decisions = []
        for s, summary in enumerate(summaries):
            keep = np.ones(len(summary["sig"]), dtype=bool)
            for i, sig in enumerate(summary["sig"]):
                m = MinHash(num_perm=self.num_perm, seed=self.seed, hashvalues=sig, **rebuild)
                # LSH finds candidates; confirm on the whole signature (fraction of equal minima ~ Jaccard)
                if any(np.mean(kept[c] == sig) >= self.threshold for c in lsh.query(m)):
                    keep[i] = False
                    continue
                key = f"{s}:{i}"
                lsh.insert(key, m)
                kept[key] = sig
            decisions.append({"keep": keep})
        return decisions

    def apply(self, index: int, doc: Doc, decision) -> Result:
        return doc if decision["keep"][index] else "near_duplicate"
