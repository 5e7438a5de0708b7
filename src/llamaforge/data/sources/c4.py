"""C4: the Colossal Clean Crawled Corpus rules (TFDS `c4_utils.py`, with its numbers) over web text.

Inputs: JSONL(.gz) documents with a "text" field (allenai/c4, CCNet or dolma shards) or Common Crawl WET / WARC
files (read as in `commoncrawl`). Per line: strip; drop the line if a word is longer than 1000 characters; remove
citation markers `[1]`, `[edit]`, `[citation needed]`; keep only lines ending in `.`, `?`, `!` or `"` (not `...`)
with at least 5 words, without "javascript" and without a cookie / privacy / terms-of-use phrase. Per page: drop it
if a kept line contains "lorem ipsum" or a curly brace `{`, if fewer than 3 sentences remain, if it is over 190,000
characters, or if it contains an entry of C4's bad-words list (LDNOOBW `en` at commit 25e679f, the list C4 used; given as `badwords`, not bundled). Then English only (langid score >= 0.99, as
TFDS's langdetect threshold) and exact line dedup: each normalized line (stripped, lowercased, MD5) is kept in the
first page that has it, after which pages are re-checked for 3 sentences.

Deviation: TFDS counts sentences with NLTK's punkt model, which is a download; here a sentence is a run of text
ending in `.`, `?` or `!` (followed by a space, a quote or the end of the line).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from llamaforge.data.filters.dedup import LineDedup
from llamaforge.data.filters.langid import LanguageFilter
from llamaforge.data.pipeline import Doc, MapStage, Result, Source, Stage
from llamaforge.data.readers import expand_inputs, is_warc, iter_jsonl, refuse_folders_without, refuse_unless_records
from llamaforge.data.sources.commoncrawl import CCReader
from llamaforge.errors import UserError
from llamaforge.io import read_text

MIN_WORDS_PER_LINE = 5
MIN_SENTENCES = 3
MAX_WORD_LENGTH = 1000
MAX_PAGE_CHARS = 190_000
END_MARKS = (".", "?", "!", '"')
ELLIPSIS = "..."
POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")


def count_sentences(text: str) -> int:
    """The number of sentence ends in `text` (a run of . ! ? with any closing quotes or brackets, before whitespace or
    the end); C4 drops pages with fewer than MIN_SENTENCES (3)."""
    return len(SENTENCE_END.findall(text))




def badwords_regex(words) -> re.Pattern | None:
    """TFDS's C4 bad-words test: an entry (a word, a phrase or an emoji) found in the lowercased page between
    non-word characters or the text's ends, `(?:\\W|^)(w1|w2|...)(?:\\W|$)`; None for an empty list."""
    words = sorted(words)
    if not words:
        return None
    return re.compile(r"(?:\W|^)({})(?:\W|$)".format("|".join(re.escape(w) for w in words)))


def clean_page(text: str, badwords: re.Pattern | None = None) -> tuple[str | None, str | None]:
    """C4's line and page rules: `(kept text, None)` or `(None, reason)`; `badwords` from `badwords_regex`."""
    kept: list[str] = []
    for line in text.split("\n"):
        line = line.strip()
        words = line.split()
        if not words or max(len(w) for w in words) > MAX_WORD_LENGTH:
            continue
        line = CITATION.sub("", line)
        if not line.endswith(END_MARKS) or line.endswith(ELLIPSIS):
            continue
        if len(line.split()) < MIN_WORDS_PER_LINE:
            continue
        lower = line.lower()
        if "lorem ipsum" in lower:
            return None, "lorem_ipsum"
        if "javascript" in lower:
            continue
        if "{" in line:
            return None, "curly_bracket"
        if any(p in lower for p in POLICY):
            continue
        kept.append(line)
    page = "\n".join(kept)
    if count_sentences(page) < MIN_SENTENCES:
        return None, "too_few_sentences"
    if len(page) > MAX_PAGE_CHARS:
        return None, "too_long"
    if badwords is not None and badwords.search(page.lower()):
        return None, "bad_words"
    return page, None


class C4Rules(Stage):
    """The C4 line and page rules of `clean_page` as a stage: the page with only its kept lines, or the reason it is
    dropped."""
    name = "c4_rules"

    def __init__(self, badwords: frozenset[str] = frozenset()):
        self.badwords = badwords
        self._regex = badwords_regex(badwords)

    def __call__(self, doc: Doc) -> Result:
        text, reason = clean_page(doc["text"], self._regex)
        if reason:
            return reason
        doc["text"] = text
        return doc


def _recheck_sentences(doc: Doc) -> Result:
    return doc if count_sentences(doc["text"]) >= MIN_SENTENCES else "too_few_sentences"


class C4Reader:
    """JSONL documents, or WET / WARC records through the Common Crawl reader."""

    def __call__(self, shard: str, drops: Counter) -> Iterator[Doc]:
        if is_warc(shard):
            for doc in CCReader()(shard, drops):
                doc["meta"]["source"] = "c4"
                yield doc
            return
        for obj in iter_jsonl(shard, drops, text_keys=("text", "raw_content")):
            meta = {"source": "c4"}
            for key in ("url", "timestamp", "id"):
                if key in obj:
                    meta[key] = obj[key]
            yield {"text": obj["text"], "meta": meta}


NO_BADWORDS = ("no list given: pass --badwords FILE, the LDNOOBW en list C4 used (e.g. "
               "../shared/data/c4-badwords/en.txt), or --badwords none")


def build(inputs: list[str], badwords: str | None = None, lang_threshold: float = 0.99,
          langid: str = "py3langid", languages: list[str] | None = None) -> Source:
    """C4's rules; `badwords`: a file (one entry a line; C4 used LDNOOBW's `en`) or "none". The list is not
    bundled: without one the bad-words step is off and the stage table says why."""
    words: frozenset[str] = frozenset()
    off = {}
    if badwords is None:
        off["bad_words"] = NO_BADWORDS
    elif badwords == "none":
        off["bad_words"] = "--badwords none"
    else:
        path = Path(badwords)
        if not path.is_file():
            raise UserError(f"--badwords: {path}: expected a file of words, one a line (or none)")
        # read_text: a binary file (a tokenizer, a gzip of anything but text) is refused, not read as "words"
        try:
            lines = read_text(path).split("\n")
        except UserError as e:
            raise UserError(f"--badwords: {e}") from None
        words = frozenset(w.strip().lower() for w in lines if w.strip())
    suffixes = (".jsonl", ".jsonl.gz", ".json.gz", ".warc.gz", ".wet.gz", ".warc")
    expected = 'JSONL(.gz) with a "text" field, or Common Crawl WARC / WET (.warc.gz)'
    refuse_folders_without(inputs, suffixes, "c4", expected)
    shards = expand_inputs(inputs, suffixes)
    refuse_unless_records(shards, "c4", expected, warc=True)
    return Source("c4", shards, C4Reader(), off=off, stages=[
        C4Rules(words),
        LanguageFilter(languages or ["en"], lang_threshold, langid),
        LineDedup(mode="first", algo="md5", lowercase_only=True),
        MapStage("sentences_after_dedup", _recheck_sentences),
    ])
