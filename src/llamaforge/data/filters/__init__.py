"""Filters shared by the sources: deduplication (line hash, exact, MinHash), language id, quality scores."""

from llamaforge.data.filters.dedup import (
    ExactDedup,
    LineDedup,
    MinHashDedup,
    normalize_for_dedup,
)
from llamaforge.data.filters.langid import LanguageFilter
from llamaforge.data.filters.quality import (
    NGramLM,
    PerplexityBuckets,
    PerplexityScorer,
    ReferenceClassifier,
    ReferenceClassifierFilter,
)

__all__ = [
    "ExactDedup",
    "LanguageFilter",
    "LineDedup",
    "MinHashDedup",
    "NGramLM",
    "PerplexityBuckets",
    "PerplexityScorer",
    "ReferenceClassifier",
    "ReferenceClassifierFilter",
    "normalize_for_dedup",
]
