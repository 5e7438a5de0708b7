"""Filters shared by the sources: deduplication (line hash, exact, MinHash), language id, CCNet perplexity,
the Wikipedia-reference classifier."""

from llamaforge.data.filters.dedup import (
    ExactDedup,
    LineDedup,
    MinHashDedup,
    normalize_for_dedup,
)
from llamaforge.data.filters.langid import LanguageFilter
from llamaforge.data.filters.lm import KneserNeyLM, LMBundle, PerplexityFilter
from llamaforge.data.filters.quality import (
    ReferenceClassifier,
    ReferenceClassifierFilter,
    cited_urls,
    normalize_url,
)

__all__ = [
    "ExactDedup",
    "KneserNeyLM",
    "LMBundle",
    "LanguageFilter",
    "LineDedup",
    "MinHashDedup",
    "PerplexityFilter",
    "ReferenceClassifier",
    "ReferenceClassifierFilter",
    "cited_urls",
    "normalize_for_dedup",
    "normalize_url",
]
