"""CCNet's perplexity filter: SentencePiece pieces scored by a 5-gram modified Kneser-Ney LM trained on Wikipedia.

CCNet (Wenzek et al. 2020, `cc_net/perplexity.py`, `cc_net/Makefile`) per language:
1. text normalisation (`text_normalizer.normalize`: strip, lowercase, accents removed, every digit -> 0, typographic
   punctuation replaced by ASCII, control characters removed);
2. a SentencePiece unigram model (vocabulary 65,536, character coverage 0.9995) trained on Wikipedia;
3. a KenLM 5-gram (`lmplz -o 5 --discount_fallback`) trained on the same Wikipedia text, tokenized by (2);
4. document perplexity = 10 ** (-sum of log10 p over lines / sum over lines of (pieces + 1)) (the +1 is `</s>`);
5. buckets head / middle / tail by fixed per-language cut-offs (`cc_net/data/cutoff.csv`: the 30th and 60th
   percentile of the perplexities of a large sample of Common Crawl pages; English: 340 and 520 for its own model).

Here: `KneserNeyLM` trains interpolated modified Kneser-Ney (Chen & Goodman 1998, the estimator of `lmplz`) in
numpy, writes and reads ARPA, and scores with the ARPA back-off rule (KenLM's `Model.score(line, bos=True,
eos=True)`), vectorised over a document. `LMBundle` is the folder CCNet calls `lm_dir`: `sp.model`, `lm.arpa.gz`
and `cutoffs.json` (computed once, when the bundle is built, from a scored sample; never from the batch being
filtered). One deviation, documented: CCNet normalises the whole document before SentencePiece, and since the
normaliser deletes control characters, its `\\n` go too and a document is scored as one line; here each line is
normalised and scored on its own, as CCNet's `DocLM` meant to (it splits on `\\n`).
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from llamaforge.data.pipeline import Doc, Result, Stage
from llamaforge.errors import UserError

# ---------------------------------------------------------------------------------------------------------------
# CCNet's text normaliser (cc_net/text_normalizer.py: normalize(line, accent=True, case=True, numbers=True, punct=1))

UNICODE_PUNCT = {"，": ",", "。": ".", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"', "１": '"',
                 "」": '"', "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":", "？": "?", "！": "!",
                 "（": "(", "）": ")", "；": ";", "–": "-", "—": " - ", "．": ". ", "～": "~", "’": "'", "…": "...",
                 "━": "-", "〈": "<", "〉": ">", "【": "[", "】": "]", "％": "%", "►": "-"}
_DIGIT = re.compile(r"\d")


@functools.cache
def _combining_marks() -> dict[int, None]:
    """str.translate table deleting every nonspacing combining mark (Unicode category Mn), built once per process:
    the same characters CCNet's `strip_accents` drops one by one after NFD."""
    return {c: None for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Mn"}


def normalize(line: str) -> str:
    """CCNet's `text_normalizer.normalize` with its defaults: strip, lowercase, strip accents (NFD, drop combining
    marks), digits -> 0, typographic punctuation -> ASCII, control characters removed (a newline too). The one
    implementation is `normalize_lines` (a document's lines in one pass); this is its one-line form."""
    return "".join(normalize_lines([line]))  # a newline inside `line` is a control character: removed, as CCNet


_PUNCT_RE = re.compile("[" + "".join(map(re.escape, UNICODE_PUNCT)) + "]")
_NON_PRINTING_KEEP_NL = re.compile(f"[{''.join(chr(c) for c in [*range(32), *range(127, 160)] if c != 10)}]")


_ASTRAL = re.compile("[\U00010000-\U0010FFFF]")


@functools.cache
def _combining_marks_re() -> re.Pattern:
    """The Mn table's characters of the Basic Multilingual Plane as one character class (a fast bitmap class;
    the marks beyond U+FFFF are looked up one by one in `_strip_marks`)."""
    spans: list[list[int]] = []
    for c in sorted(c for c in _combining_marks() if c < 0x10000):
        if spans and spans[-1][1] == c - 1:
            spans[-1][1] = c
        else:
            spans.append([c, c])
    return re.compile("[" + "".join(re.escape(chr(a)) + (f"-{re.escape(chr(b))}" if b > a else "")
                                    for a, b in spans) + "]")


def _strip_marks(text: str) -> str:
    """`text` without its nonspacing combining marks (the `_combining_marks` table)."""
    text = _combining_marks_re().sub("", text)
    if _ASTRAL.search(text):  # rare (emoji, historic scripts): check each such character
        marks = _combining_marks()
        text = _ASTRAL.sub(lambda m: "" if ord(m.group()) in marks else m.group(), text)
    return text


def normalize_lines(lines: Sequence[str]) -> list[str]:
    """CCNet's normaliser (see `normalize`) on each of `lines` (lines without newlines), done over the joined
    document in a few calls instead of several per line: every step acts per character, or per character sequence
    that a newline ends (NFD reorders marks only up to the next starter, and lowercasing's final sigma sees a
    newline as a string's end), so the result is each line's own; ASCII text skips the steps that leave it as is."""
    text = "\n".join([s.strip() for s in lines]).lower()
    ascii_only = text.isascii()
    if not ascii_only:
        text = _strip_marks(unicodedata.normalize("NFD", text))
    text = _DIGIT.sub("0", text)
    if not ascii_only:
        text = _PUNCT_RE.sub(lambda m: UNICODE_PUNCT[m.group()], text)
    return _NON_PRINTING_KEEP_NL.sub("", text).split("\n")


# ---------------------------------------------------------------------------------------------------------------
# n-gram keys: one uint64 per n-gram of token ids, per order (tables of different orders are separate)

_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio); arithmetic wraps modulo 2^64


def _keys(ids: np.ndarray, order: int) -> list[np.ndarray]:
    """keys[k - 1][t] = hash of the k-gram ids[t - k + 1 .. t] (garbage where t < k - 1), k = 1..order."""
    x = ids.astype(np.uint64) + np.uint64(1)
    out = [x]
    with np.errstate(over="ignore"):
        for _ in range(1, order):
            prev = out[-1]
            cur = np.zeros_like(x)
            cur[1:] = prev[:-1] * _MULT + x[1:]
            out.append(cur)
    return out


def _key_of(gram: Sequence[int]) -> int:
    k = 0
    for w in gram:
        k = (k * int(_MULT) + w + 1) % (1 << 64)
    return k


class _Table:
    """One order: sorted uint64 n-gram keys, their log10 probability and log10 back-off, and the n-grams' token ids
    (an (m x k) matrix, for writing ARPA)."""

    def __init__(self, keys: np.ndarray, logp: np.ndarray, backoff: np.ndarray, grams: np.ndarray):
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.logp, self.backoff = logp[order].astype(np.float64), backoff[order].astype(np.float64)
        self.grams = grams[order]
        if len(self.keys) > 1 and (np.diff(self.keys) == 0).any():
            raise UserError("language model: two n-grams with the same 64-bit key (or a repeated n-gram)")

    def lookup(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not len(self.keys):
            z = np.zeros(len(q))
            return np.zeros(len(q), bool), z, z
        i = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        found = self.keys[i] == q
        return found, np.where(found, self.logp[i], 0.0), np.where(found, self.backoff[i], 0.0)


# ---------------------------------------------------------------------------------------------------------------
# the language model

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
DISCOUNT_FALLBACK = (0.5, 1.0, 1.5)  # lmplz --discount_fallback defaults


class KneserNeyLM:
    """An n-gram language model in ARPA back-off form, estimated by interpolated modified Kneser-Ney.

    Training (Chen & Goodman 1998 section 3; what KenLM's `lmplz` estimates), for sentences padded as
    `<s> w1 .. wn </s>` (one `<s>`, as KenLM scores them):
    - adjusted counts a(g): raw counts at the top order and for n-grams that start with `<s>`; below the top order
      the continuation count N1+(. g), the number of distinct words seen before g;
    - per order, three discounts from the counts-of-counts t_k of adjusted counts (k = 1..4):
      Y = t1 / (t1 + 2 t2), D1 = 1 - 2Y t2/t1, D2 = 2 - 3Y t3/t2, D3+ = 3 - 4Y t4/t3 (each must be in (0, k];
      otherwise, or with a zero count-of-count, the fallback discounts 0.5, 1, 1.5, as `--discount_fallback`);
    - p(w | h) = (a(h w) - D(a(h w))) / a(h .) + gamma(h) p(w | h'),
      gamma(h) = (D1 N1(h .) + D2 N2(h .) + D3+ N3+(h .)) / a(h .), h' = h without its first word;
    - the unigram level interpolates with the uniform distribution over the vocabulary (every word seen, `</s>` and
      `<unk>`; `<s>` is never predicted and gets log10 p = -99, as in lmplz's ARPA files).
    ARPA stores log10 p(w | h) for every n-gram seen and log10 gamma(h) as the back-off of h, so scoring an unseen
    n-gram backs off exactly as the interpolated formula does. N-grams are keyed by a 64-bit polynomial hash of their
    token ids, one sorted table per order (a collision is refused at build time).
    """

    def __init__(self, order: int, vocab: list[str], tables: list[_Table],
                 discounts: list[tuple[float, float, float]] | None = None):
        self.order, self.vocab, self._tables = order, vocab, tables
        self.index = {w: i for i, w in enumerate(vocab)}
        self.discounts = discounts or []
        found, logp, _ = tables[0].lookup(np.array([_key_of((0,))], dtype=np.uint64))
        if not found[0]:
            raise UserError("language model without <unk>")
        self.unk_logp = float(logp[0])

    @property
    def sizes(self) -> list[int]:
        """The number of n-grams stored for each order, 1 to `order`."""
        return [len(t.keys) for t in self._tables]

    # ---- training
    @classmethod
    def train(cls, sentences: Iterable[Sequence[str]], order: int = 5) -> KneserNeyLM:
        """Estimate from tokenized sentences (lists of tokens, without `<s>` / `</s>`)."""
        index = {UNK: 0, BOS: 1, EOS: 2}
        streams = [[1, *(index.setdefault(w, len(index)) for w in sent), 2] for sent in sentences]
        vocab = list(index)
        n = sum(len(x) for x in streams)
        if n == 0:
            raise UserError("language model: no training text")
        ids = np.fromiter((w for x in streams for w in x), dtype=np.int64, count=n)
        pos = np.concatenate([np.arange(len(x)) for x in streams])  # position inside its padded sentence
        keys = _keys(ids, order)

        # distinct n-grams of each order (inside one sentence), with raw counts and one position where each ends
        uniq, raw, where = [], [], []
        for k in range(1, order + 1):
            ends = np.nonzero((pos >= k - 1) & ((ids != 1) if k == 1 else True))[0]  # <s> alone is no event
            u, first, counts = np.unique(keys[k - 1][ends], return_index=True, return_counts=True)
            uniq.append(u)
            raw.append(counts)
            where.append(ends[first])

        # adjusted counts: continuation counts below the top order, except for n-grams that start with <s>
        adjusted = [None] * order
        adjusted[order - 1] = raw[order - 1]
        for k in range(order - 1, 0, -1):
            suffix = keys[k - 1][where[k]]  # the last k words of each distinct (k+1)-gram
            su, cont = np.unique(suffix, return_counts=True)
            i = np.searchsorted(su, uniq[k - 1])
            i = np.minimum(i, len(su) - 1)
            has = su[i] == uniq[k - 1]
            starts_bos = ids[where[k - 1] - k + 1] == 1
            adjusted[k - 1] = np.where(starts_bos, raw[k - 1], np.where(has, cont[i], 0))
        for k in range(order):  # an n-gram with no continuation (only possible with <s> inside) is not kept
            keep = adjusted[k] > 0
            uniq[k], adjusted[k], where[k] = uniq[k][keep], adjusted[k][keep], where[k][keep]

        discounts = [_discounts(a) for a in adjusted]
        vocab_size = len(vocab) - 1  # every word that can be predicted, <unk> included, <s> not
        logps, gammas = [], []  # per order: log10 p of each distinct n-gram; (context keys, gamma) of its contexts
        for k in range(1, order + 1):
            a = adjusted[k - 1].astype(np.float64)
            d = np.array((0.0, *discounts[k - 1]))[np.minimum(adjusted[k - 1], 3)]
            end = where[k - 1]
            ctx = keys[k - 2][end - 1] if k > 1 else np.zeros(len(end), np.uint64)
            cu, inv = np.unique(ctx, return_inverse=True)
            total = np.bincount(inv, weights=a)
            gamma = np.bincount(inv, weights=d) / total
            if k == 1:
                lower = np.full(len(a), 1.0 / vocab_size)
            else:
                lower = 10.0 ** _interp_lookup(uniq[:k - 1], logps, gammas, keys[k - 2][end], ids, end, k - 1)
            p = (a - d) / total[inv] + gamma[inv] * lower
            if k == 1 and not (uniq[0] == _key_of((0,))).any():  # <unk> never seen: only the uniform share
                uniq[0] = np.append(uniq[0], np.uint64(_key_of((0,))))
                p = np.append(p, gamma[0] / vocab_size)
                where[0] = np.append(where[0], -1)
            logps.append(np.log10(p))
            gammas.append((cu, gamma))

        tables = []
        for k in range(1, order + 1):
            u, lp = uniq[k - 1], logps[k - 1]
            grams = np.stack([np.where(where[k - 1] >= 0, ids[where[k - 1] - k + 1 + j], 0) for j in range(k)], 1)
            bo = np.zeros(len(u))
            if k < order:  # the back-off of an n-gram is the gamma of it as a context of the next order
                cu, g = gammas[k]
                i = np.minimum(np.searchsorted(cu, u), len(cu) - 1)
                bo = np.where(cu[i] == u, np.log10(g[i]), 0.0)
            if k == 1:  # <s>: never predicted (-99, as lmplz writes it), but a context
                bos = np.uint64(_key_of((1,)))
                gi = np.searchsorted(gammas[1][0], bos) if order > 1 else 0
                bos_bo = float(np.log10(gammas[1][1][gi])) if order > 1 and gammas[1][0][gi] == bos else 0.0
                u, lp, bo = np.append(u, bos), np.append(lp, -99.0), np.append(bo, bos_bo)
                grams = np.vstack([grams, [[1]]])
            tables.append(_Table(u, lp, bo, grams))
        return cls(order, vocab, tables, discounts)

    # ---- scoring
    def score_ids(self, ids: np.ndarray, starts: np.ndarray) -> float:
        """Sum of log10 p over the sentences `ids[starts[i]:starts[i + 1]]`, each given WITH its `<s>` and `</s>`
        (`starts` has a final entry len(ids)). KenLM's `score(line, bos=True, eos=True)` summed over the lines."""
        n = len(ids)
        if n == 0:
            return 0.0
        lengths = np.diff(starts)
        pos = np.arange(n) - np.repeat(starts[:-1], lengths)
        keys = _keys(ids, self.order)
        found = np.zeros((self.order, n), bool)
        logp = np.zeros((self.order, n))
        backoff = np.zeros((self.order, n))
        for k in range(1, self.order + 1):
            valid = pos >= k - 1
            f, p, b = self._tables[k - 1].lookup(keys[k - 1])
            found[k - 1], logp[k - 1], backoff[k - 1] = f & valid, p, np.where(valid, b, 0.0)
        predicted = pos > 0  # every token but <s>
        kmax = np.minimum(pos + 1, self.order)  # longest n-gram ending here that stays inside the sentence
        # longest order found, at most kmax (an unknown word is <unk>, always in the unigrams)
        orders = np.arange(1, self.order + 1)[:, None]
        usable = found & (orders <= kmax)
        best = np.where(usable.any(0), self.order - np.argmax(usable[::-1], axis=0), 1)
        score = logp[best - 1, np.arange(n)]
        # back-offs of the contexts longer than the one used: contexts of length j = best .. kmax - 1 end at t - 1
        prev_bo = np.zeros((self.order, n))
        prev_bo[:, 1:] = backoff[:, :-1]
        j = orders  # context length j's back-off is the j-gram table's back-off at t - 1
        add = ((j >= best) & (j <= kmax - 1)) * prev_bo
        score = score + add.sum(0)
        unk_missing = ~usable.any(0)
        if unk_missing.any():  # a token id the model never saw: score it as <unk>
            score = np.where(unk_missing, self.unk_logp + add.sum(0), score)
        return float(score[predicted].sum())

    def log10_prob(self, history: Sequence[str], word: str) -> float:
        """log10 p(word | <s> history), from the same scoring path as `score_ids`."""
        def prefix(tokens):
            ids = np.array([1, *self.encode(tokens)], dtype=np.int64)
            return self.score_ids(ids, np.array([0, len(ids)]))
        return prefix([*history, word]) - prefix(history)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """The model's ids of `tokens`; a token outside the vocabulary is `<unk>` (id 0)."""
        return [self.index.get(w, 0) for w in tokens]

    def score_sentences(self, sentences: Sequence[Sequence[str]]) -> tuple[float, int]:
        """(sum of log10 p, number of predicted tokens = tokens + one `</s>` per sentence)."""
        if not sentences:
            return 0.0, 0
        ids = [[1, *self.encode(s), 2] for s in sentences]
        starts = np.cumsum([0] + [len(s) for s in ids])
        flat = np.fromiter((w for s in ids for w in s), dtype=np.int64, count=int(starts[-1]))
        return self.score_ids(flat, starts), int(starts[-1]) - len(ids)

    def perplexity(self, sentences: Sequence[Sequence[str]]) -> float:
        """CCNet's `pp`: 10 ** (-sum log10 p / sum (tokens + 1))."""
        logp, n = self.score_sentences(sentences)
        return 10.0 ** (-logp / n) if n else float("inf")

    # ---- files
    def write_arpa(self, path: str | Path) -> None:
        """The ARPA text format (gzip when the name ends in .gz): what KenLM's `lmplz` writes and its query reads."""
        from llamaforge.io import atomic_file

        words = np.array(self.vocab, dtype=object)
        out = ["", "\\data\\", *(f"ngram {k}={n}" for k, n in enumerate(self.sizes, 1)), ""]
        for k, t in enumerate(self._tables, 1):
            out.append(f"\\{k}-grams:")
            names = [" ".join(row) for row in words[t.grams].tolist()]
            if k < self.order:
                out += [f"{p:.9g}\t{w}\t{b:.9g}" for p, w, b in zip(t.logp.tolist(), names, t.backoff.tolist())]
            else:
                out += [f"{p:.9g}\t{w}" for p, w in zip(t.logp.tolist(), names)]
            out.append("")
        out.append("\\end\\")
        data = ("\n".join(out) + "\n").encode("utf-8")
        with atomic_file(Path(path), "wb") as f:
            f.write(gzip.compress(data, compresslevel=5, mtime=0) if str(path).endswith(".gz") else data)

    @classmethod
    def read_arpa(cls, path: str | Path) -> KneserNeyLM:
        """Read an ARPA file (plain or .gz); a file that is not ARPA raises `UserError`."""
        try:
            raw = Path(path).read_bytes()
            text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
            index = {UNK: 0, BOS: 1, EOS: 2}
            levels: list[tuple[list, list, list]] = []
            k = 0
            for line in text.split("\n"):
                if not line or line[0] == "\\" or line.startswith("ngram "):
                    m = re.fullmatch(r"\\(\d+)-grams:", line.strip())
                    if m:
                        k = int(m.group(1))
                        levels.append(([], [], []))
                    continue
                if not k:
                    continue
                parts = line.split("\t")
                if len(parts) == 1:  # space separated
                    f = line.split()
                    parts = [f[0], " ".join(f[1:1 + k]), *f[1 + k:]]
                gram = [index.setdefault(w, len(index)) for w in parts[1].split(" ")]
                lv = levels[k - 1]
                lv[0].append(gram)
                lv[1].append(float(parts[0]))
                lv[2].append(float(parts[2]) if len(parts) > 2 else 0.0)
        except (OSError, ValueError, IndexError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: expected an ARPA language model ({e})") from None
        if not levels:
            raise UserError(f"{path}: expected an ARPA language model (no n-gram sections)")
        tables = []
        for k, (grams, lp, bo) in enumerate(levels, 1):
            g = np.array(grams, dtype=np.int64).reshape(-1, k)
            keys = np.array([_key_of(x) for x in g.tolist()], dtype=np.uint64)
            tables.append(_Table(keys, np.array(lp), np.array(bo), g))
        return cls(len(levels), list(index), tables)

    def save(self, path: str | Path) -> None:
        """Binary form for fast loading (numpy .npz; CCNet likewise loads KenLM's binary `.arpa.bin`)."""
        from llamaforge.io import atomic_file

        arrays = {"vocab": np.array(self.vocab, dtype=np.str_), "order": np.int64(self.order)}
        for k, t in enumerate(self._tables, 1):
            arrays.update({f"keys{k}": t.keys, f"logp{k}": t.logp, f"backoff{k}": t.backoff, f"grams{k}": t.grams})
        with atomic_file(Path(path), "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> KneserNeyLM:
        """A model written by `save` (numpy .npz, no pickle). Raises UserError naming the file when it is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                order = int(z["order"])
                tables = [_Table(z[f"keys{k}"], z[f"logp{k}"], z[f"backoff{k}"], z[f"grams{k}"])
                          for k in range(1, order + 1)]
                vocab = z["vocab"].tolist()
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{path}: expected a language model saved by KneserNeyLM.save ({e})") from None
        return cls(order, vocab, tables)


def _discounts(counts: np.ndarray) -> tuple[float, float, float]:
    """Modified Kneser-Ney discounts D1, D2, D3+ from the counts-of-counts (Chen & Goodman eq. 26)."""
    t = [int((counts == i).sum()) for i in range(1, 5)]
    if min(t) == 0:
        return DISCOUNT_FALLBACK
    y = t[0] / (t[0] + 2 * t[1])
    d = (1 - 2 * y * t[1] / t[0], 2 - 3 * y * t[2] / t[1], 3 - 4 * y * t[3] / t[2])
    if not all(0 < x <= i + 1 for i, x in enumerate(d)):
        return DISCOUNT_FALLBACK
    return d


def _interp_lookup(uniq, logps, gammas, qkeys, ids, end, k) -> np.ndarray:
    """log10 p of the k-grams with keys `qkeys` (ending at positions `end` of `ids`) from the k-gram level already
    estimated, backing off through the gammas when one is absent (cannot happen for a suffix of a seen n-gram,
    kept for safety)."""
    i = np.minimum(np.searchsorted(uniq[k - 1], qkeys), len(uniq[k - 1]) - 1)
    found = uniq[k - 1][i] == qkeys
    out = np.where(found, logps[k - 1][i], 0.0)
    if found.all():
        return out
    for j in np.nonzero(~found)[0]:  # rare: walk down the orders for this one n-gram
        gram = ids[end[j] - k + 1:end[j] + 1].tolist()
        lp = 0.0
        for m in range(k, 0, -1):
            g = gram[-m:]
            key = np.uint64(_key_of(g))
            ii = np.searchsorted(uniq[m - 1], key)
            if ii < len(uniq[m - 1]) and uniq[m - 1][ii] == key:
                lp += logps[m - 1][ii]
                break
            cu, gam = gammas[m - 1]
            ck = np.uint64(_key_of(g[:-1])) if m > 1 else np.uint64(0)
            ci = np.searchsorted(cu, ck)
            lp += float(np.log10(gam[ci])) if ci < len(cu) and cu[ci] == ck else 0.0
        out[j] = lp
    return out


# ---------------------------------------------------------------------------------------------------------------
# the bundle CCNet calls lm_dir: SentencePiece model + ARPA LM + fixed cut-offs

PERCENTILES = (30.0, 60.0)  # CCNet's head / middle percentiles (cc_net/perplexity.py PerplexityBucket)


SCORERS = ("auto", "kenlm", "numpy")


def resolve_scorer(scorer: str = "auto") -> str:
    """"kenlm" (KenLM's query module, C++; what CCNet scores with) or "numpy" (`KneserNeyLM.score_ids`, always
    available). "auto" picks kenlm when `import kenlm` works (the `kenlm` extra; it builds from source and needs
    Boost), else numpy. The two agree to ~1e-6 relative (KenLM keeps probabilities in float32; tested to 1e-5).
    Raises UserError for another name, or for "kenlm" when the module is missing."""
    import importlib.util

    if scorer not in SCORERS:
        raise UserError(f"--lm-scorer: expected one of {', '.join(SCORERS)}, got {scorer!r}")
    has_kenlm = importlib.util.find_spec("kenlm") is not None
    if scorer == "kenlm" and not has_kenlm:
        raise UserError("--lm-scorer kenlm: the kenlm module is not installed (pip install 'llamaforge[kenlm]'; "
                        "it builds from source and needs Boost), or use --lm-scorer numpy")
    return scorer if scorer != "auto" else ("kenlm" if has_kenlm else "numpy")


# KenLM prints this to stderr (fd 2, from C++) whenever it reads an ARPA file; its Python module cannot write the
# binary it suggests (that is KenLM's build_binary program), so the line is noise in every scored run.
KENLM_BINARY_HINT = "Loading the LM will be faster if you build a binary file."


def load_kenlm(path: str | Path, config=None):
    """`kenlm.Model(path, config)` without KenLM's "build a binary file" hint (`KENLM_BINARY_HINT`) on stderr.

    KenLM writes from C++ to file descriptor 2, which Python's sys.stderr does not see: fd 2 is pointed at a
    temporary file for the load and restored after it; whatever else KenLM (or another thread) wrote meanwhile is
    written to sys.stderr again, and an exception (a broken ARPA file: OSError) propagates unchanged."""
    import os
    import tempfile

    import kenlm

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            return kenlm.Model(str(path), config) if config is not None else kenlm.Model(str(path))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            # the hint may end another line (KenLM writes it without a preceding newline after an error message)
            rest = "\n".join(x for x in text.replace(KENLM_BINARY_HINT, "\n").split("\n") if x.strip())
            if rest:
                print(rest, file=sys.stderr, flush=True)


class LMBundle:
    """`DIR/sp.model` (SentencePiece), `DIR/lm.arpa.gz` (the 5-gram KN LM in ARPA, for KenLM and other tools),
    `DIR/lm.npz` (the same model in binary, what the numpy scorer loads; ARPA is read when it is absent) and
    `DIR/cutoffs.json` ({"head", "middle", "percentiles", "sample_docs", "sample", ...}). `perplexity(text)` is
    CCNet's document perplexity on pieces, scored by `scorer` ("numpy" or "kenlm", see `resolve_scorer`; "auto"
    resolves here); `bucket(ppl)` compares it with the stored cut-offs only."""

    def __init__(self, folder: str | Path, scorer: str = "numpy"):
        import sentencepiece as spm

        self.folder = Path(folder)
        for name in ("sp.model", "lm.arpa.gz", "cutoffs.json"):
            if not (self.folder / name).exists():
                raise UserError(f"{self.folder}: expected an LM folder with sp.model, lm.arpa.gz and cutoffs.json "
                                f"({name} is missing)")
        self.scorer = resolve_scorer(scorer)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.folder / "sp.model"))
        info = json.loads((self.folder / "cutoffs.json").read_text())
        self.cutoffs = (float(info["head"]), float(info["middle"]))
        self.info = info
        if self.scorer == "kenlm":
            import kenlm

            config = kenlm.Config()
            config.show_progress = False  # no progress bar per worker process on stderr
            self._kenlm = load_kenlm(self.folder / "lm.arpa.gz", config)  # without its binary-file hint
            return
        binary = self.folder / "lm.npz"
        self.lm = KneserNeyLM.load(binary) if binary.exists() else KneserNeyLM.read_arpa(self.folder / "lm.arpa.gz")

    def _lines(self, text: str) -> list[str]:
        return [x for x in normalize_lines(text.split("\n")) if x]

    def pieces(self, text: str) -> list[list[str]]:
        """Normalised non-empty lines of a document as SentencePiece pieces (one batch, one thread). Pieces are
        strings, as CCNet's `encode_as_pieces`: a character SentencePiece has no piece for stays itself (not
        `<unk>`), which is how the LM saw it in training (`build_bundle` trains on these strings)."""
        lines = self._lines(text)
        return self.sp.encode(lines, out_type=str, num_threads=1) if lines else []

    def perplexities(self, texts: Sequence[str]) -> list[float]:
        """`[self.perplexity(t) for t in texts]`, with the lines of all texts encoded by SentencePiece in one call
        (its batch call starts a thread each time: once per batch, not once per document)."""
        lines = [self._lines(t) for t in texts]
        flat = [x for doc in lines for x in doc]
        pieces = self.sp.encode(flat, out_type=str, num_threads=1) if flat else []
        out, i = [], 0
        for doc in lines:
            out.append(self._perplexity(pieces[i:i + len(doc)]))
            i += len(doc)
        return out

    def perplexity(self, text: str) -> float:
        """10 ** (-sum over lines of log10 p / sum over lines of (pieces + 1)); inf for a text with no words."""
        return self._perplexity(self.pieces(text))

    def _perplexity(self, lines: list[list[str]]) -> float:
        if not lines:
            return float("inf")
        n = sum(map(len, lines)) + len(lines)  # pieces + one </s> per line
        if self.scorer == "kenlm":  # KenLM's score(line, bos=True, eos=True) on space-joined pieces, as CCNet's DocLM
            score = self._kenlm.score
            return 10.0 ** (-sum(score(" ".join(p), bos=True, eos=True) for p in lines) / n)
        index = self.lm.index  # a piece the LM never saw -> <unk> (id 0)
        ids = np.fromiter((i for line in lines for i in (1, *(index.get(p, 0) for p in line), 2)), dtype=np.int64,
                          count=n + len(lines))
        starts = np.concatenate([[0], np.cumsum([len(x) + 2 for x in lines])])
        return 10.0 ** (-self.lm.score_ids(ids, starts) / n)

    def bucket(self, perplexity: float) -> str:
        """CCNet's bucket of a document perplexity: "head" below the stored head cut-off, "middle" below the middle one,
        else "tail"."""
        head, middle = self.cutoffs
        return "head" if perplexity < head else "middle" if perplexity < middle else "tail"


def train_sentencepiece(lines: list[str], prefix: Path, vocab_size: int = 65536) -> None:
    """CCNet's SentencePiece: unigram, character coverage 0.9995, on normalised lines. `vocab_size` is an upper
    bound (a small corpus gets the largest vocabulary it supports, `hard_vocab_limit=false`)."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(prefix), model_type="unigram", vocab_size=vocab_size,
        character_coverage=0.9995, hard_vocab_limit=False, num_threads=1, minloglevel=2,
        input_sentence_size=2_000_000, shuffle_input_sentence=True)


def build_bundle(folder: str | Path, wikipedia_texts: Iterable[str], sample_texts: Sequence[str] = (),
                 order: int = 5, vocab_size: int = 65536, sample_source: str = "") -> dict:
    """Train SentencePiece and the KN LM on normalised Wikipedia lines, then fix the cut-offs once as the
    `PERCENTILES` of the perplexities of `sample_texts` (CCNet: a large sample of Common Crawl pages; without a
    sample, of the Wikipedia lines' documents themselves, said so in `cutoffs.json`). Returns cutoffs.json."""
    import tempfile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    docs = list(wikipedia_texts)
    lines = [x for d in docs for x in (normalize(line) for line in d.split("\n")) if x]
    if len(lines) < 10:
        raise UserError("language model: fewer than 10 lines of Wikipedia text to train on")
    with tempfile.TemporaryDirectory() as tmp:
        train_sentencepiece(lines, Path(tmp) / "sp", vocab_size)
        (folder / "sp.model").write_bytes((Path(tmp) / "sp.model").read_bytes())
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(folder / "sp.model"))
    lm = KneserNeyLM.train(sp.encode(lines, out_type=str), order=order)
    lm.write_arpa(folder / "lm.arpa.gz")
    lm.save(folder / "lm.npz")
    (folder / "cutoffs.json").write_text(json.dumps({"head": 0, "middle": 0}))  # placeholder to load the bundle
    bundle = LMBundle(folder)
    sample = list(sample_texts) or docs
    ppl = np.array([bundle.perplexity(t) for t in sample])
    ppl = ppl[np.isfinite(ppl)]
    head, middle = np.percentile(ppl, PERCENTILES) if len(ppl) else (float("inf"), float("inf"))
    info = {"head": round(float(head), 1), "middle": round(float(middle), 1), "percentiles": list(PERCENTILES),
            "sample_docs": len(ppl), "sample": sample_source if sample_texts else "wikipedia (no crawl sample)",
            "train_lines": len(lines), "order": order, "sp_vocab": sp.get_piece_size()}
    from llamaforge.io import atomic_file

    with atomic_file(folder / "cutoffs.json", "w") as f:
        json.dump(info, f, indent=1)
    return info


class PerplexityFilter(Stage):
    """CCNet's `sp` + `lm` + `pp_bucket` (+ RedPajama's bucket choice): writes `meta.perplexity` and
    `meta.bucket` (head / middle / tail by the bundle's fixed cut-offs) and drops the buckets not in `keep`
    (default head and middle, what RedPajama kept; the paper keeps the Wikipedia-like pages). `scorer`: "auto"
    (KenLM's query module when installed, else numpy; see `resolve_scorer`), "kenlm" or "numpy"."""

    name = "lm_perplexity"
    batch_size = 64

    def __init__(self, folder: str | Path, keep: Sequence[str] = ("head", "middle"), scorer: str = "auto"):
        if not keep or set(keep) - {"head", "middle", "tail"}:
            raise UserError(f"--keep-buckets: expected some of head, middle, tail, got {','.join(keep) or '(none)'}")
        self.folder, self.keep = str(folder), sorted(keep)
        self.scorer = resolve_scorer(scorer)  # resolved here: the run's manifest records which scorer ran
        self._bundle: LMBundle | None = None

    def __getstate__(self):
        return {**self.__dict__, "_bundle": None}

    def setup(self) -> None:
        """Load the LM bundle (SentencePiece model, 5-gram LM, cut-offs) in the worker; it is never pickled."""
        if self._bundle is None:
            self._bundle = LMBundle(self.folder, self.scorer)

    def __call__(self, doc: Doc) -> Result:
        self.setup()
        return self._decide(doc, self._bundle.perplexity(doc["text"]))

    def batch(self, docs: list[Doc]) -> list[Result]:
        """Decide a batch of documents at once (the pipeline's `Stage.batch`): one SentencePiece call and one
        scoring pass for all their lines; the same results, in order, as deciding each document alone."""
        self.setup()
        return [self._decide(d, p) for d, p in zip(docs, self._bundle.perplexities([d["text"] for d in docs]))]

    def _decide(self, doc: Doc, ppl: float) -> Result:
        bucket = self._bundle.bucket(ppl)
        doc["meta"]["perplexity"] = round(ppl, 1) if math.isfinite(ppl) else None
        doc["meta"]["bucket"] = bucket
        return doc if bucket in self.keep else f"bucket_{bucket}"
