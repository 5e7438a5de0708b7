"""Books (Project Gutenberg and the like): one book a document, license boilerplate stripped, near-duplicates out.

Inputs: plain-text books (`.txt`, maybe compressed; one book a file, one shard a file) or JSONL(.gz) with a
"text" field. Project Gutenberg's header (up to the `*** START OF ... PROJECT GUTENBERG EBOOK ... ***` line) and
footer (from `*** END OF ...` on: the license) are removed; a book without those markers is kept whole.
Books with more than 90% content overlap with an earlier book (MinHash-LSH over word 5-grams, Jaccard >= 0.9)
are removed, the earliest in input order kept.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from llamaforge.data.filters.dedup import MinHashDedup
from llamaforge.data.pipeline import Doc, MapStage, Result, Source
from llamaforge.data.readers import expand_inputs, is_jsonl, iter_jsonl, read_text_file

START = re.compile(r"^\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.MULTILINE | re.IGNORECASE)
END = re.compile(r"^\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.MULTILINE | re.IGNORECASE)
TITLE = re.compile(r"^Title:\s*(.+)$", re.MULTILINE)
MIN_CHARS = 1000  # shorter "books" are empty shells or error pages


def strip_gutenberg(text: str) -> str:
    """The body of a Project Gutenberg file: between the START and END marker lines (whole text if absent)."""
    start, end = START.search(text), END.search(text)
    if start:
        text_end = end.start() if end and end.start() > start.end() else len(text)
        text = text[start.end():text_end]
    elif end:
        text = text[:end.start()]
    return text.strip("\n") + "\n"


class BookReader:
    def __call__(self, shard: str, drops: Counter) -> Iterator[Doc]:
        if is_jsonl(shard):
            for obj in iter_jsonl(shard, drops):
                yield {"text": obj["text"], "meta": {"source": "books", **obj.get("meta", {})}}
            return
        text = read_text_file(shard, drops)
        if text is None:
            return
        title = TITLE.search(text[:5000])  # Gutenberg's "Title:" line is in the header, near the top
        meta = {"source": "books", "file": Path(shard).name}
        if title:
            meta["title"] = title.group(1).strip()
        yield {"text": text, "meta": meta}


def _clean(doc: Doc) -> Result:
    text = strip_gutenberg(doc["text"].replace("\r\n", "\n"))
    if len(text.strip()) < MIN_CHARS:
        return "too_short"
    doc["text"] = text
    return doc


def build(inputs: list[str], near_dup_threshold: float = 0.9, **_) -> Source:
    shards = expand_inputs(inputs, (".txt", ".txt.gz", ".txt.bz2", ".jsonl", ".jsonl.gz"))
    return Source("books", shards, BookReader(),
                  [MapStage("gutenberg_strip", _clean), MinHashDedup(threshold=near_dup_threshold)])
