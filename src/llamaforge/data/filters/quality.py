"""The paper's linear classifier of "pages used as references in Wikipedia" against random pages.

RedPajama-v1 trained fastText supervised (linear, unigrams) on ~300K cited pages vs as many random CCNet pages and
kept pages with P(wiki) >= 0.25. Here: hashed word uni- and bigram features and a logistic regression
(scikit-learn), also linear. fastText supervised would need the full `fasttext` bindings, which install the same
`fasttext` module as the predict-only `fasttext-predict` that the lid.176 language id uses, so only one of them can
be present. The positive set comes from `cited_urls` (see `sources.commoncrawl.build_models`); the perplexity
filter is in `filters.lm`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from llamaforge.data.pipeline import Doc, Result, Stage
from llamaforge.data.readers import is_jsonl, iter_jsonl, iter_lines
from llamaforge.errors import UserError
from llamaforge.io import atomic_file

_URL = re.compile(r"https?://[^\s\[\]|{}<>\"']+", re.IGNORECASE)
_REF = re.compile(r"<ref(?:\s[^>]*)?(?<!/)>(.*?)</ref\s*>", re.IGNORECASE | re.DOTALL)  # not <ref name=x />
_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)
_BRACES = re.compile(r"\{\{|\}\}")


def _outside_templates(wikitext: str) -> str:
    """`wikitext` with every `{{...}}` template call removed (nesting counted; an unclosed `{{` runs to the end)."""
    out, depth, pos = [], 0, 0
    for m in _BRACES.finditer(wikitext):
        if m.group(0) == "{{":
            if depth == 0:
                out.append(wikitext[pos:m.start()])
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                pos = m.end()
    if depth == 0:
        out.append(wikitext[pos:])
    return " ".join(out)


def _urls(text: str) -> Iterator[str]:
    for m in _URL.finditer(text):
        url = normalize_url(m.group(0).rstrip(".,;:)'"))
        if url:
            yield url


def cited_urls(wikitext: str) -> set[str]:
    """Normalised URLs an article cites. Definition (the paper's "pages used as references in Wikipedia"):
    - every http(s) URL inside a `<ref>...</ref>` body, templates included (`{{cite web |url=...}}`): what
      RedPajama-v1 extracted for its positive set (`data_prep/cc/classifier/extract_urls.py`: URLs regex-matched
      inside `<ref>...</ref>` of the English dump);
    - external links outside templates: bracketed `[http://... label]` and bare URLs in the article text, which
      MediaWiki renders as external links (the "External links" section's `* [http://... Site]` lines).
    Not taken: URLs in template parameters outside a `<ref>` (an infobox's `website = http://...`,
    `{{Official website|...}}`, image and coordinate templates), in HTML comments, or in self-closing
    `<ref name=x />` (which only point at a ref defined elsewhere)."""
    text = _COMMENT.sub(" ", wikitext)
    urls = {u for body in _REF.findall(text) for u in _urls(body)}
    urls.update(_urls(_outside_templates(_REF.sub(" ", text))))
    return urls


def normalize_url(url: str) -> str:
    """A URL reduced to what identifies the page: scheme dropped (http = https), host lowercased without `www.`
    and default port, fragment dropped, trailing `/` dropped; path and query kept as they are."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return ""
    if not host:
        return ""
    host = host.removeprefix("www.")
    if port and port not in (80, 443):
        host = f"{host}:{port}"
    path = parts.path.rstrip("/")
    return host + path + (f"?{parts.query}" if parts.query else "")


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
        """Fit the logistic regression (C = `c`, L2, lbfgs) on positive pages (the kind Wikipedia cites) against
        negative ones (random crawl pages), each hashed into `n_features` uni- and bigram features. Raises UserError
        when either list is empty."""
        from sklearn.linear_model import LogisticRegression

        if not positives or not negatives:
            raise UserError("reference classifier: needs positive and negative examples")
        x = cls._vectorizer(n_features).transform([t.replace("\n", " ") for t in positives + negatives])
        y = np.array([1] * len(positives) + [0] * len(negatives))
        fit = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(x, y)
        return cls(fit.coef_[0], fit.intercept_[0], n_features)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """P(reference-like) of each text: float array of len(texts), in [0, 1]."""
        x = self._vectorizer(self.n_features).transform([t.replace("\n", " ") for t in texts])
        return 1.0 / (1.0 + np.exp(-(x @ self.weights + self.bias)))

    def save(self, path: str | Path) -> None:
        """Write the weights, bias and feature count to `path` (numpy .npz, atomically); the hashing vectorizer is
        stateless and needs no saving."""
        with atomic_file(Path(path), "wb") as f:
            np.savez_compressed(f, weights=self.weights, bias=np.float64(self.bias),
                                n_features=np.int64(self.n_features))

    @classmethod
    def load(cls, path: str | Path) -> ReferenceClassifier:
        """A classifier written by `save`. Raises UserError naming the file when it is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["weights"], float(z["bias"]), int(z["n_features"]))
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{path}: expected a reference classifier saved by llamaforge ({e})") from None


class ReferenceClassifierFilter(Stage):
    """Write `meta.wiki_prob`; drop documents below `threshold` (`not_reference_like`)."""

    name = "reference_classifier"
    batch_size = 64

    def __init__(self, model: str | Path | ReferenceClassifier, threshold: float = 0.25):
        self.model, self.threshold = (str(model) if isinstance(model, Path) else model), threshold
        self._clf = model if isinstance(model, ReferenceClassifier) else None

    def __getstate__(self):  # loaded in the worker from its file
        return {**self.__dict__, "_clf": None if isinstance(self.model, str) else self._clf}

    def setup(self) -> None:
        """Load the classifier from its file in the worker (a classifier object given directly is used as is)."""
        if self._clf is None:
            self._clf = ReferenceClassifier.load(self.model)

    def __call__(self, doc: Doc) -> Result:
        return self.batch([doc])[0]

    def batch(self, docs: list[Doc]) -> list[Result]:
        """Classify a batch of documents with one vectorised `predict_proba` (the pipeline's `Stage.batch`); the
        same results, in order, as classifying each document alone."""
        self.setup()
        out: list[Result] = []
        for doc, p in zip(docs, self._clf.predict_proba([d["text"] for d in docs]).tolist()):
            doc["meta"]["wiki_prob"] = round(p, 4)
            out.append(doc if p >= self.threshold else "not_reference_like")
        return out


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
