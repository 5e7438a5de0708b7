"""Books (Project Gutenberg and the like): one book a document, license boilerplate stripped, near-duplicates out.

Inputs: plain-text books (`.txt`, maybe compressed; one book a file, one shard a file) or JSONL(.gz) with a
"text" field. Project Gutenberg's header (up to the `*** START OF ... PROJECT GUTENBERG EBOOK ... ***` line) and
footer (from `*** END OF ...` on: the license) are removed; a book without those markers is kept whole.
Paragraphs Project Gutenberg added (mentions of it, transcriber credits) and transcriber's notes in the front
and back matter (with the rest of their section) are removed too.
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
from llamaforge.data.readers import (
    BINARY, HTML, JSON, LATEX, TAR, UTF16, WARC, WAT, XML, ZIP, expand_inputs, is_jsonl, iter_jsonl, read_text_file,
    refuse_folders_without, refuse_other_kinds, refuse_unless_records)
from llamaforge.errors import UserError

START = re.compile(r"^\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.MULTILINE | re.IGNORECASE)
END = re.compile(r"^\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.MULTILINE | re.IGNORECASE)
TITLE = re.compile(r"^Title:\s*(.+)$", re.MULTILINE)
MIN_CHARS = 1000  # shorter "books" are empty shells or error pages


# Paragraphs that are Project Gutenberg's, not the book's: any mention of Project Gutenberg (licence leftovers,
# "End of Project Gutenberg's ...", "Preface to the Project Gutenberg Etext", linked-volume indexes), transcriber
# credits ("Produced by ... and the Online Distributed Proofreading Team"), and transcriber's notes.
PG_MENTION = re.compile(r"project\s+gutenberg|gutenberg\s+(?:e-?texts?|e-?books?|editions?|volumes?|literary archive)"
                        r"|gutenberg\.(?:org|net)|pgdp\.net|distributed\s+proofread", re.IGNORECASE)
CREDIT = re.compile(r"^\W*(?:this\s+)?(?:e-?text|e-?book|html\s+version|text\s+file|etext\s+edition)?\s*"
                    r"(?:was\s+)?(?:produced|prepared|transcribed|digitized|scanned|proofread|created|updated)"
                    r"(?:\s+from\s+[^.]*?)?\s+by\b", re.IGNORECASE)
TRANSCRIBER_NOTE = re.compile(r"^\W*(?:original\s+)?transcriber['’]?s?\s+notes?\b", re.IGNORECASE)
CREDIT_WINDOW = 8  # credits are among the first (or last) paragraphs of the body; "produced by" mid-book is prose
# A transcriber's note mentions the e-text or its transcriber ("...I have done the following in this E-text.",
# "[Transcriber's note: ...]"); "pretext" and "transcribers" (prose) do not match.
NOTE_MENTION = re.compile(r"\be-?texts?\b|\btranscriber(?:['’]s)?\b", re.IGNORECASE)
SECTION_BREAK = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")  # two or more blank lines: Gutenberg's break between sections
NOTE_EDGE = 0.05  # notes stand in the front (or back) matter: sections starting in the first / ending in the last 5%
# transcriber's notes on an e-text's conventions are short (the shared books': 14 to 502 words); a longer run is an
# essay (Art of War's 735-word preface by its e-text's preparer, on the translation's history) or the book: kept
NOTE_MAX_WORDS = 600
NOTE_PROSE_WORDS = 15  # shorter paragraphs before a note are its section's title lines (the book's), not its prose


def strip_transcriber_notes(text: str) -> str:
    """`text` without the transcriber's notes in its front and back matter: in a section (paragraphs up to the next
    run of 2+ blank lines) that starts in the first or ends in the last NOTE_EDGE of the text, everything from the
    first paragraph mentioning the e-text or a transcriber (NOTE_MENTION, or a "Transcriber's note" heading), with the
    prose paragraphs right before it (NOTE_PROSE_WORDS words or more each), to the section's end (to the next
    section's end for a heading standing alone), when that is at most NOTE_MAX_WORDS words. Such notes run over
    several paragraphs (Leviathan's: a heading, the credit, then eleven paragraphs of "I have ..." on how the E-text
    renders italics and Greek), so dropping the matching paragraph alone, or the heading and the one after it, kept
    the rest."""
    n = len(text)
    breaks = [*SECTION_BREAK.finditer(text)]
    sections = [(0 if i == 0 else breaks[i - 1].end(), breaks[i].start() if i < len(breaks) else n)
                for i in range(len(breaks) + 1)]
    cuts: list[tuple[int, int]] = []
    for i, (start, end) in enumerate(sections):
        if not (start < NOTE_EDGE * n or end > (1 - NOTE_EDGE) * n) or (cuts and cuts[-1][1] >= end):
            continue
        paras = [*re.finditer(r"(?:[^\n]|\n(?![ \t]*\n))+", text[start:end])]
        for j, para in enumerate(paras):
            flat = " ".join(para.group().split())
            if _is_list(para.group()) or not (NOTE_MENTION.search(flat) or TRANSCRIBER_NOTE.match(flat)):
                continue  # a contents list naming the note is the book's (its Gutenberg lines go later)
            alone = j == len(paras) - 1  # a heading alone in its section: the note is the next section
            while j and len(paras[j - 1].group().split()) >= NOTE_PROSE_WORDS and not _is_list(paras[j - 1].group()):
                j -= 1  # the note's prose before the paragraph naming the e-text ("Hobbes used capitals ...")
            para, cut_end = paras[j], end
            if alone and TRANSCRIBER_NOTE.match(flat) and len(flat.split()) <= 12 and i + 1 < len(sections):
                cut_end = sections[i + 1][1]
            if len(text[start + para.start():cut_end].split()) <= NOTE_MAX_WORDS:
                cuts.append((start + para.start(), cut_end))
            break
    out, pos = [], 0
    for a, b in cuts:
        out.append(text[pos:a].rstrip("\n") + ("\n" if a else ""))
        pos = b
    out.append(text[pos:])
    return "".join(out)


def strip_gutenberg(text: str) -> str:
    """The book inside a Project Gutenberg file: the text between the START and END marker lines (the whole text
    when they are absent), without the paragraphs Project Gutenberg added (see `pg_paragraph`). Paragraphs are
    blank-line separated; a paragraph's lines are kept or dropped together, except in a list of short lines (a table
    of contents), where only the lines mentioning Project Gutenberg go. A transcriber's-note heading standing alone
    (12 words at most) takes the paragraph after it along; transcriber's notes in the front and back matter go with
    the rest of their section (`strip_transcriber_notes`)."""
    start, end = START.search(text), END.search(text)
    if start:
        text_end = end.start() if end and end.start() > start.end() else len(text)
        text = text[start.end():text_end]
    elif end:
        text = text[:end.start()]
    text = strip_transcriber_notes(text)
    paragraphs = re.split(r"(\n[ \t]*\n)", text.strip("\n"))  # keep the separators: spacing is preserved
    bodies = paragraphs[0::2]
    n = len(bodies)
    out: list[str] = []
    skip_next = False
    for i, para in enumerate(bodies):
        edge = i < CREDIT_WINDOW or i >= n - CREDIT_WINDOW
        if skip_next:  # the body of a transcriber's note whose heading was its own paragraph
            skip_next = False
            continue
        if _is_list(para) and not (edge and _credit(para)):  # a contents list: drop only its lines that are Project Gutenberg's
            para = "\n".join(line for line in para.split("\n") if not pg_paragraph(line, False))
            if not para.strip():
                continue
        elif pg_paragraph(para, edge):
            skip_next = bool(TRANSCRIBER_NOTE.match(para.strip())) and len(para.split()) <= 12
            continue
        if out:
            out.append(paragraphs[2 * i - 1])
        out.append(para)
    return "".join(out).strip("\n") + "\n"


def _is_list(paragraph: str) -> bool:
    lines = paragraph.split("\n")
    return len(lines) >= 3 and all(len(line.strip()) <= 60 for line in lines)


def pg_paragraph(paragraph: str, edge: bool) -> bool:
    """True for a paragraph Project Gutenberg added: it mentions Project Gutenberg anywhere in the book, or (only near
    the start or end, `edge`) it credits who produced or transcribed the e-text; or it is a transcriber's note."""
    flat = " ".join(paragraph.split())
    return bool(PG_MENTION.search(flat) or TRANSCRIBER_NOTE.match(flat)) or (edge and _credit(paragraph))


def _credit(paragraph: str) -> bool:
    flat = " ".join(paragraph.split())
    return bool(CREDIT.match(flat) or TRANSCRIBER_NOTE.match(flat))


class BookReader:
    """Read one shard: a plain-text file is one book (its Gutenberg `Title:` kept in meta), a JSONL(.gz) file one book a
    line; unreadable files and malformed lines are counted as drops."""
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


def _first_line_is_json_object(path: str) -> bool:
    """Whether the first line of a (maybe compressed) file is a JSON object, `{"text": ...}` (a book whose first
    line merely starts with a brace is not)."""
    import json

    from llamaforge.io import STREAM_ERRORS, open_binary

    try:
        with open_binary(path) as f:
            first = f.readline(1 << 20).lstrip(b"\xef\xbb\xbf \t")
    except (OSError, *STREAM_ERRORS):
        return False
    if not first.startswith(b"{"):
        return False
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:
        return False


def build(inputs: list[str], near_dup_threshold: float = 0.9) -> Source:
    """Books from `inputs`: plain-text files (one book each) and JSONL(.gz) files (one book a line, by their name,
    `readers.is_jsonl`), or folders of them. Raises UserError for a folder without such files, a text-named file
    of another kind (WARC, XML, HTML, LaTeX, JSON, an archive or binary: each would be kept as one "book") and a
    JSONL-named file that is not JSON lines (each line would be dropped as bad JSON, 0 books, exit 0)."""
    suffixes = (".txt", ".txt.gz", ".txt.bz2", ".jsonl", ".jsonl.gz")
    expected = 'plain-text books (.txt) or JSONL with a "text" field'
    refuse_folders_without(inputs, suffixes, "books", expected)
    shards = expand_inputs(inputs, suffixes)
    refuse_unless_records([s for s in shards if is_jsonl(s)], "books", expected)
    texts = [s for s in shards if not is_jsonl(s)]
    refuse_other_kinds(texts, "books", expected, (WARC, WAT, XML, HTML, LATEX, JSON, ZIP, TAR, BINARY, UTF16))
    for shard in texts:  # JSON lines under a text name would be kept as one "book" of JSON
        if _first_line_is_json_object(shard):
            raise UserError(f"{shard}: books: this is JSON lines under a text name; expected {expected} (name it "
                            ".jsonl to read one book a line)")
    return Source("books", shards, BookReader(),
                  [MapStage("gutenberg_strip", _clean), MinHashDedup(threshold=near_dup_threshold)])
