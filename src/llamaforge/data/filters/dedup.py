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
_DIGIT = re.compile(r"\d")


def normalize_for_dedup(line: str) -> str:
    """CCNet's line normalization before hashing: strip, lowercase, every digit to 0, and Unicode punctuation and
    control characters (C0 and C1) deleted; an empty line stays empty."""
    return "".join(_normalize_lines_for_dedup([line]))  # one implementation; a newline inside is deleted too


def strip_lower(line: str) -> str:
    """TFDS's C4 line normalization before hashing."""
    return line.strip().lower()


# the same deletions as one regex over a whole document, newlines kept (they separate its lines)
_DELETE_RE = re.compile("[" + re.escape(UNICODE_PUNCT) + "".join(
    f"\\x{c:02x}" for c in [*range(32), *range(127, 160)] if c != ord("\n")) + "]")


def _normalize_lines_for_dedup(lines: list[str]) -> list[str]:
    """CCNet's dedup normalisation (see `normalize_for_dedup`) of each of `lines` (lines without newlines), in a
    few calls over the joined document instead of five per line: lowercasing, digits and deletions act character
    by character and never on a newline (Python's context-sensitive final sigma sees a newline as it sees a
    string's end), so the result is each line's own."""
    text = "\n".join([s.strip() for s in lines])
    return _DELETE_RE.sub("", _DIGIT.sub("0", text.lower())).split("\n")


def line_hashes(lines: list[str], normalize=normalize_for_dedup, algo: str = "sha1") -> np.ndarray:
    """First 8 bytes of the hash of each normalized line, as uint64 (CCNet uses SHA-1, TFDS's C4 MD5)."""
    norm = _normalize_lines_for_dedup(lines) if normalize is normalize_for_dedup else map(normalize, lines)
    new = getattr(hashlib, algo, None) or (lambda data: hashlib.new(algo, data))
    digests = b"".join([new(s.encode("utf-8")).digest()[:8] for s in norm])
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
        """Hash each line of the document (after `normalize`) and remember which document it came from."""
        h = line_hashes(doc["text"].split("\n"), self.normalize, self.algo)
        self._docs.append(np.full(len(h), index, dtype=np.int64))
        self._hashes.append(h)

    def summary(self) -> dict[str, np.ndarray]:
        """{"doc": document index per line, "hash": 64-bit line hash}, in document order; resets for the next shard."""
        docs = np.concatenate(self._docs) if self._docs else np.zeros(0, np.int64)
        hashes = np.concatenate(self._hashes) if self._hashes else np.zeros(0, np.uint64)
        self._reset()
        return {"doc": docs, "hash": hashes}

    def resolve(self, summaries):
        """Per group of `group_size` consecutive shards (default: all), the lines to drop: in mode "ccnet" every line
        whose hash occurs twice or more in the group, in mode "first" every occurrence after the first. Returns one
        {"drop" mask, "start" per document} per shard."""
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
        """The document without its dropped lines (original line count and length kept in `meta`, the removed lines
        handed to the dropped-samples audit), or "empty_after_line_dedup" when no non-blank line is left."""
        lo, hi = decision["start"][index], decision["start"][index + 1]
        drop = decision["drop"][lo:hi]
        lines = doc["text"].split("\n")
        assert len(lines) == len(drop), "document changed between observe and apply"
        kept = [line for line, d in zip(lines, drop) if not d]
        if not any(s.strip() for s in kept):
            return "empty_after_line_dedup"
        if drop.any():  # for the dropped-samples audit (the pipeline pops it before writing)
            doc["_removed_lines"] = [line for line, d in zip(lines, drop) if d and line.strip()]
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
        """Remember the MD5 of the document's UTF-8 text."""
        self._digests.append(hashlib.md5(doc["text"].encode("utf-8", "surrogatepass")).digest())

    def summary(self):
        """{"md5": uint64[n, 2]}, one digest per document; resets for the next shard."""
        out = np.frombuffer(b"".join(self._digests), dtype="<u8").reshape(-1, 2).copy()
        self._digests = []
        return {"md5": out}

    def resolve(self, summaries):
        """Across all shards in order, keep the first document of each digest. Returns one {"keep" mask} per shard."""
        digests = np.concatenate([s["md5"] for s in summaries])
        keep = np.zeros(len(digests), dtype=bool)
        if len(digests):
            _, first = np.unique(digests, axis=0, return_index=True)
            keep[first] = True
        return [{"keep": k} for k in _split_by_shard(keep, [len(s["md5"]) for s in summaries])]

    def apply(self, index: int, doc: Doc, decision) -> Result:
        """The document, or "duplicate" when an earlier document has the same text."""
        return doc if decision["keep"][index] else "duplicate"


_NON_WORD = re.compile(r"[^\w\s]+")
SIGNATURE_CHUNK = 20_000  # shingles hashed at once: bounds memory to ~20 MB for 128 permutations


def shingles(text: str, n: int = 5) -> set[bytes]:
    """Word n-grams of the lowercased text with punctuation removed: what MinHash compares."""
    words = _NON_WORD.sub("", text.lower()).split()
    if len(words) < n:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


MERSENNE_61 = (1 << 61) - 1


def shingle_hashes(text: str, n: int = 5) -> np.ndarray:
    """Sorted distinct 64-bit hashes (first 8 bytes of BLAKE2b) of the word n-grams of `shingles(text, n)`.
    Two texts' exact Jaccard similarity is computed on these sets (a 64-bit collision is ~1e-8 at 1e5 shingles)."""
    digests = b"".join(hashlib.blake2b(s, digest_size=8).digest() for s in shingles(text, n))
    return np.unique(np.frombuffer(digests, dtype="<u8"))


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A & B| / |A | B| of two sorted arrays of distinct hashes."""
    if not len(a) and not len(b):
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


class MinHashDedup(GroupStage):
    """Near-duplicate removal: drop a document whose word-5-gram Jaccard similarity with an earlier kept one is at
    least `threshold` (the paper's books: "more than 90% content overlap"; datatrove and RedPajama also compare
    word 5-gram sets).

    MinHash-LSH only proposes candidates; the decision is the exact Jaccard of the two shingle sets, so a copy just
    above the threshold is never kept because its MinHash estimate fell below (with 128 permutations the estimate's
    standard deviation at J = 0.92 is 0.024), and a pair just below is never dropped.
    Banding: `bands` x `rows` of the `num_perm` minima (default 32 x 4 = 128). A pair with Jaccard J shares a band
    with probability 1 - (1 - J^rows)^bands: 1 - 1.6e-15 at J = 0.9, 1 - 6e-11 at 0.85, 0.87 at 0.5, so recall at
    and above the threshold is 100% up to rounding; the extra candidates below it cost one exact comparison each.
    MinHash: h_i(x) = (a_i x + b_i) mod (2^61 - 1) over the low 32 bits x of each shingle hash (Broder's min-wise
    hashing, the universal family datasketch uses), min over the document's shingles.
    """

    def __init__(self, threshold: float = 0.9, num_perm: int = 128, ngram: int = 5, seed: int = 1,
                 bands: int = 32, name: str = "near_dedup"):
        if num_perm % bands:
            raise ValueError(f"num_perm ({num_perm}) must be a multiple of bands ({bands})")
        self.threshold, self.num_perm, self.ngram, self.seed, self.name = threshold, num_perm, ngram, seed, name
        self.bands = bands
        rng = np.random.RandomState(seed)
        self._a = rng.randint(1, 1 << 32, size=num_perm, dtype=np.uint64)
        self._b = rng.randint(0, 1 << 32, size=num_perm, dtype=np.uint64)
        self._sigs: list[np.ndarray] = []
        self._sets: list[np.ndarray] = []

    def signature(self, hashes: np.ndarray) -> np.ndarray:
        """The `num_perm` minima of a document's shingle hashes (uint64; all ones for an empty document)."""
        sig = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        x = hashes & np.uint64(0xFFFFFFFF)  # a, x < 2^32 and b < 2^32: a*x + b cannot overflow 64 bits
        for i in range(0, len(x), SIGNATURE_CHUNK):  # bounds the (chunk x num_perm) array to ~20 MB
            chunk = x[i:i + SIGNATURE_CHUNK, None]
            sig = np.minimum(sig, ((chunk * self._a + self._b) % np.uint64(MERSENNE_61)).min(axis=0))
        return sig

    def observe(self, index: int, doc: Doc) -> None:
        """Hash the document's word n-grams (`shingle_hashes`) and compute its MinHash signature."""
        hashes = shingle_hashes(doc["text"], self.ngram)
        self._sets.append(hashes)
        self._sigs.append(self.signature(hashes))

    def summary(self):
        """{"sig": uint64[n, num_perm], "shingles": all shingle hashes, "offsets": each document's slice}; resets for
        the next shard."""
        sigs = np.stack(self._sigs) if self._sigs else np.zeros((0, self.num_perm), np.uint64)
        sizes = np.array([len(h) for h in self._sets], dtype=np.int64)
        sets = np.concatenate(self._sets) if self._sets else np.zeros(0, np.uint64)
        self._sigs, self._sets = [], []
        return {"sig": sigs, "shingles": sets, "offsets": np.concatenate([[0], np.cumsum(sizes)])}

    def resolve(self, summaries):
        """In shard and document order, drop a document when an earlier kept one shares an LSH band with it and their
        exact shingle Jaccard is >= `threshold`; otherwise add it to the bands. Returns one {"keep" mask} per shard."""
        rows = self.num_perm // self.bands
        buckets: list[dict[bytes, list[tuple[int, int]]]] = [{} for _ in range(self.bands)]
        decisions = []
        for s, summary in enumerate(summaries):
            sets, off = summary["shingles"], summary["offsets"]
            keep = np.ones(len(summary["sig"]), dtype=bool)
            for i, sig in enumerate(summary["sig"]):
                mine = sets[off[i]:off[i + 1]]
                keys = [sig[b * rows:(b + 1) * rows].tobytes() for b in range(self.bands)]
                candidates = {c for b, k in enumerate(keys) for c in buckets[b].get(k, ())}
                # LSH proposes; the exact Jaccard of the shingle sets decides
                if any(exact_jaccard(mine, self._set(summaries, c)) >= self.threshold for c in sorted(candidates)):
                    keep[i] = False
                    continue
                for b, k in enumerate(keys):
                    buckets[b].setdefault(k, []).append((s, i))
            decisions.append({"keep": keep})
        return decisions

    @staticmethod
    def _set(summaries, ref: tuple[int, int]) -> np.ndarray:
        s, i = ref
        off = summaries[s]["offsets"]
        return summaries[s]["shingles"][off[i]:off[i + 1]]

    def apply(self, index: int, doc: Doc, decision) -> Result:
        """The document, or "near_duplicate" when `resolve` dropped it."""
        return doc if decision["keep"][index] else "near_duplicate"
