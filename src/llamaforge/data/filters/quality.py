"""Quality filters of the paper's CommonCrawl branch.

1. CCNet's language-model score: a word n-gram model trained on a reference corpus (Wikipedia in CCNet) gives each
   document a perplexity; documents are bucketed head / middle / tail by percentiles of that perplexity over the
   corpus (CCNet: 30th and 60th) and the tail is dropped (RedPajama keeps head and middle). CCNet uses KenLM 5-gram
   on SentencePiece pieces; KenLM has no wheel (it needs Boost to build), so `NGramLM` below is a small interpolated
   Kneser-Ney model written out in full. Any object with `perplexity(text) -> float` can be plugged in instead.
2. The paper's linear classifier of "pages used as references in Wikipedia" against random pages: hashed word
   uni- and bigram features and a logistic regression (scikit-learn), trained on the user's own examples; a document
   is kept when its probability of being a reference is at least the threshold (RedPajama: 0.25).
"""

from __future__ import annotations

import gzip
import json
import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from llamaforge.data.pipeline import Doc, GroupStage, Result, Stage
from llamaforge.data.readers import is_jsonl, iter_jsonl, iter_lines
from llamaforge.errors import UserError
from llamaforge.io import atomic_file

_TOKEN = re.compile(r"\w+|[^\w\s]")
_DIGIT = re.compile(r"\d")


def normalize_for_lm(text: str) -> str:
    """CCNet's text normalization before scoring: lowercase, accents stripped, digits -> 0."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")  # drop combining accents
    return _DIGIT.sub("0", text)


def lm_tokens(line: str) -> list[str]:
    return _TOKEN.findall(normalize_for_lm(line))


class NGramLM:
    """Interpolated Kneser-Ney word n-gram language model (one absolute discount D per order).

    P(w | h) = max(c(h w) - D, 0) / c(h .) + D * N1+(h .) / c(h .) * P(w | h'),   h' = h without its first word,
    where c are raw counts at the highest order and continuation counts N1+(. g) (distinct left neighbours) below
    it, and the recursion ends in a unigram mixed with a uniform distribution over the vocabulary + <unk>.
    A history never seen backs off to the lower order unchanged.
    """

    def __init__(self, order: int = 3, discount: float = 0.75):
        self.order, self.discount = order, discount
        self.counts: list[Counter] = [Counter() for _ in range(order + 1)]  # counts[k]: k-gram -> (cont.) count
        self._finalize()

    # ---- training
    @classmethod
    def train(cls, texts: Iterable[str], order: int = 3, discount: float = 0.75) -> NGramLM:
        lm = cls(order, discount)
        top = lm.counts[order]
        for text in texts:
            for line in text.split("\n"):
                words = lm_tokens(line)
                if not words:
                    continue
                padded = ["<s>"] * (order - 1) + words + ["</s>"]
                for i in range(order - 1, len(padded)):
                    top[tuple(padded[i - order + 1:i + 1])] += 1
        for k in range(order - 1, 0, -1):  # continuation counts: distinct words seen to the left of each k-gram
            for gram in lm.counts[k + 1]:
                lm.counts[k][gram[1:]] += 1
        lm._finalize()
        return lm

    def _finalize(self) -> None:
        """Per-history totals and numbers of distinct followers, derived from the counts."""
        self.totals = [defaultdict(int) for _ in range(self.order + 1)]
        self.types = [defaultdict(int) for _ in range(self.order + 1)]
        for k in range(1, self.order + 1):
            for gram, c in self.counts[k].items():
                self.totals[k][gram[:-1]] += c
                self.types[k][gram[:-1]] += 1
        self.vocab_size = len(self.counts[1]) + 1  # + <unk>

    # ---- scoring
    def prob(self, history: tuple[str, ...], word: str) -> float:
        d = self.discount
        total = self.totals[1][()]
        p = 1.0 / self.vocab_size
        if total:
            p = max(self.counts[1].get((word,), 0) - d, 0) / total + d * self.types[1][()] / total * p
        for k in range(2, self.order + 1):
            h = history[len(history) - k + 1:]
            total = self.totals[k].get(h)
            if not total:  # unseen history: keep the lower-order estimate
                continue
            p = max(self.counts[k].get(h + (word,), 0) - d, 0) / total + d * self.types[k][h] / total * p
        return p

    def log_prob_line(self, line: str) -> tuple[float, int]:
        """(natural log probability, number of predicted tokens = words + </s>) of one line."""
        words = lm_tokens(line)
        if not words:
            return 0.0, 0
        padded = ["<s>"] * (self.order - 1) + words + ["</s>"]
        logp = sum(math.log(self.prob(tuple(padded[i - self.order + 1:i]), padded[i]))
                   for i in range(self.order - 1, len(padded)))
        return logp, len(words) + 1

    def perplexity(self, text: str) -> float:
        """CCNet's document perplexity: exp(-sum of log-probs over lines / sum of (words + 1))."""
        logp, n = 0.0, 0
        for line in text.split("\n"):
            lp, k = self.log_prob_line(line)
            logp, n = logp + lp, n + k
        return math.exp(-logp / n) if n else float("inf")

    # ---- files (gzip JSON, no pickle)
    def save(self, path: str | Path) -> None:
        obj = {"order": self.order, "discount": self.discount,
               "counts": [[[" ".join(g), c] for g, c in self.counts[k].items()] for k in range(self.order + 1)]}
        with atomic_file(Path(path), "wb") as f:
            f.write(gzip.compress(json.dumps(obj).encode("utf-8"), mtime=0))

    @classmethod
    def load(cls, path: str | Path) -> NGramLM:
        try:
            obj = json.loads(gzip.decompress(Path(path).read_bytes()))
            lm = cls(obj["order"], obj["discount"])
            lm.counts = [Counter({tuple(g.split(" ")) if g else (): c for g, c in level}) for level in obj["counts"]]
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{path}: expected an n-gram LM saved by llamaforge ({e})") from None
        lm._finalize()
        return lm


class PerplexityScorer(Stage):
    """Write `meta.perplexity` from a language model: an `NGramLM` file path or any object with `perplexity`."""

    name = "lm_score"

    def __init__(self, model):
        self.model = model
        self._lm = None if isinstance(model, (str, Path)) else model

    def __getstate__(self):
        return {**self.__dict__, "_lm": None if isinstance(self.model, (str, Path)) else self._lm}

    def setup(self) -> None:
        if self._lm is None:
            self._lm = NGramLM.load(self.model)

    def __call__(self, doc: Doc) -> Result:
        self.setup()
        doc["meta"]["perplexity"] = round(self._lm.perplexity(doc["text"]), 1)
        return doc


class PerplexityBuckets(GroupStage):
    """Bucket by perplexity: head below the first cutoff, middle below the second, tail above; keep `keep`.

    Cutoffs are the `percentiles` (CCNet: 30, 60) of the perplexities of this run's documents, or fixed `cutoffs`
    (CCNet's English cutoffs for its own Wikipedia model are 340 and 520; they only mean that for that model).
    """

    name = "lm_buckets"

    def __init__(self, percentiles=(30.0, 60.0), cutoffs: tuple[float, float] | None = None,
                 keep=("head", "middle")):
        self.percentiles, self.cutoffs, self.keep = tuple(percentiles), cutoffs, set(keep)
        self._ppl: list[float] = []

    def observe(self, index: int, doc: Doc) -> None:
        self._ppl.append(doc["meta"]["perplexity"])

    def summary(self):
        out, self._ppl = np.asarray(self._ppl, dtype=np.float64), []
        return {"perplexity": out}

    def resolve(self, summaries):
        if self.cutoffs is not None:
            cut = np.asarray(self.cutoffs, dtype=np.float64)
        else:
            allp = np.concatenate([s["perplexity"] for s in summaries])
            cut = np.percentile(allp, self.percentiles) if len(allp) else np.array([np.inf, np.inf])
        return [{"cutoffs": cut} for _ in summaries]

    def apply(self, index: int, doc: Doc, decision) -> Result:
        ppl = doc["meta"]["perplexity"]
        head, middle = decision["cutoffs"]
        bucket = "head" if ppl < head else "middle" if ppl < middle else "tail"
        doc["meta"]["bucket"] = bucket
        return doc if bucket in self.keep else f"bucket_{bucket}"


class ReferenceClassifier:
    """Logistic regression on hashed word uni/bigrams: P(page is of the kind Wikipedia cites as a reference)."""

    def __init__(self, weights: np.ndarray, bias: float, n_features: int = 2**18):
        self.weights, self.bias, self.n_features = weights.astype(np.float32), float(bias), n_features

    @staticmethod
    def _vectorizer(n_features: int):
        from sklearn.feature_extraction.text import HashingVectorizer

        # stateless: the same text always maps to the same features, so only the weights need saving
        return HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False, norm="l2")

    @classmethod
    def train(cls, positives: list[str], negatives: list[str], n_features: int = 2**18, c: float = 4.0,
              seed: int = 0) -> ReferenceClassifier:
        from sklearn.linear_model import LogisticRegression

        if not positives or not negatives:
            raise UserError("reference classifier: needs positive and negative examples")
        x = cls._vectorizer(n_features).transform([t.replace("\n", " ") for t in positives + negatives])
        y = np.array([1] * len(positives) + [0] * len(negatives))
        fit = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(x, y)
        return cls(fit.coef_[0], fit.intercept_[0], n_features)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        x = self._vectorizer(self.n_features).transform([t.replace("\n", " ") for t in texts])
        return 1.0 / (1.0 + np.exp(-(x @ self.weights + self.bias)))

    def save(self, path: str | Path) -> None:
        with atomic_file(Path(path), "wb") as f:
            np.savez_compressed(f, weights=self.weights, bias=np.float64(self.bias),
                                n_features=np.int64(self.n_features))

    @classmethod
    def load(cls, path: str | Path) -> ReferenceClassifier:
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["weights"], float(z["bias"]), int(z["n_features"]))
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{path}: expected a reference classifier saved by llamaforge ({e})") from None


class ReferenceClassifierFilter(Stage):
    """Write `meta.wiki_prob`; drop documents below `threshold` (`not_reference_like`)."""

    name = "reference_classifier"

    def __init__(self, model: str | Path | ReferenceClassifier, threshold: float = 0.25):
        self.model, self.threshold = model, threshold
        self._clf = model if isinstance(model, ReferenceClassifier) else None

    def setup(self) -> None:
        if self._clf is None:
            self._clf = ReferenceClassifier.load(self.model)

    def __call__(self, doc: Doc) -> Result:
        self.setup()
        p = float(self._clf.predict_proba([doc["text"]])[0])
        doc["meta"]["wiki_prob"] = round(p, 4)
        return doc if p >= self.threshold else "not_reference_like"


def load_texts(paths: Iterable[str]) -> list[str]:
    """Example documents from JSONL(.gz) files with a "text" field, or plain text files (one document a line)."""
    texts: list[str] = []
    drops: Counter = Counter()  # malformed lines are skipped, as in `prepare`
    for p in paths:
        if is_jsonl(p):
            texts += [o["text"] for o in iter_jsonl(p, drops)]
        else:
            texts += [line.rstrip("\n") for line in iter_lines(p, drops) if line.strip()]
    return texts
