"""Reading inputs, under two policies.

Lenient (`prepare`, raw dumps): a malformed record is counted under a reason and skipped, the run goes on.
Reasons used here: `truncated_gzip` (the compressed stream ends early or is corrupt: what was read before is
kept), `invalid_utf8` (also a JSON text with an unpaired surrogate escape), `bad_json`, `missing_text`,
`unreadable` (the file cannot be opened).

Strict (`tokenize`, `tokenizer train`: they read what `prepare` wrote, so a bad line is a real problem): the first
unreadable file or malformed line is a `UserError` naming the file and the line number.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from llamaforge.errors import UserError
from llamaforge.io import STREAM_ERRORS, open_binary, parse_jsonl_line, read_jsonl

# JSON's spelling of a UTF-16 surrogate ("\ud800"): unpaired, it decodes to a str that UTF-8 cannot encode;
# searched for first so that only the rare line that has one pays for the full check
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


# ----------------------------------------------------------------------------------------------------------------
# finding and opening files


def expand_inputs(inputs: Iterable, suffixes: tuple[str, ...], dirs_are_shards: bool = False,
                  recursive: bool = True) -> list[str]:
    """Files (and folders searched for `suffixes`) as a sorted, de-duplicated list of shard paths.

    With `dirs_are_shards`, a folder given on the command line is one shard itself (a GitHub repository).
    """
    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise UserError(f"{item}: no such file or folder")
        if p.is_dir() and dirs_are_shards:
            out.append(str(p))
        elif p.is_dir():
            found = p.rglob("*") if recursive else p.iterdir()
            out += sorted(str(f) for f in found if f.is_file() and f.name.endswith(suffixes))
        else:
            out.append(str(p))
    return list(dict.fromkeys(out))  # keep order, drop repeats


def match_inputs(inputs: Iterable, patterns: tuple[str, ...], exclude: tuple[str, ...] = (),
                 what: str = "input") -> list[str]:
    """Files given as they are, plus the files under each folder (searched recursively) whose name matches one of
    the glob `patterns` and none of `exclude`; sorted within a folder, repeats dropped. A folder with no match is a
    UserError that lists the patterns, so a user sees which names are looked for."""
    import fnmatch

    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise UserError(f"{item}: no such file or folder")
        if not p.is_dir():
            out.append(str(p))
            continue
        found = sorted(str(f) for f in p.rglob("*") if f.is_file()
                       and any(fnmatch.fnmatch(f.name, pat) for pat in patterns)
                       and not any(fnmatch.fnmatch(f.name, pat) for pat in exclude))
        if not found:
            raise UserError(f"{item}: no {what} files in folder; looked for names matching {', '.join(patterns)}")
        out += found
    return list(dict.fromkeys(out))


WARC_NAMES = ("warc", "wet", "wat")  # name parts of Common Crawl's WARC, WET and WAT files: all WARC containers
SNIFF_BYTES = 1 << 16  # what is decompressed and looked at to tell a file's kind

# kinds `sniff_kind` tells apart (plain text that is none of these: None)
WARC, WAT, XML, HTML, BINARY = "a WARC file", "a WAT file (WARC metadata records, no page text)", "an XML file", \
    "an HTML file", "a binary file"
ZIP, TAR, JSON_LINES, JSON = "a ZIP archive", "a tar archive", "JSON lines", "a JSON file, not one object a line"
LATEX, EMPTY = "a LaTeX file", "an empty file"
UTF16 = "UTF-16 text (only UTF-8 text is read)"  # a byte-order mark FF FE / FE FF, then NUL-laden text
UNREADABLE = "an unreadable file"  # cannot be opened or decompressed at all: left to the reader, which counts it
# a LaTeX document's structure at the start of a line (a book or a web page has none of these)
LATEX_COMMAND = re.compile(rb"^[ \t]*\\(?:documentclass|usepackage|begin\{|section|subsection|chapter|input\{"
                           rb"|include\{|newcommand|renewcommand|def\\|title\{|author\{|maketitle|label\{|item\b)",
                           re.MULTILINE)
JSON_ARRAY = re.compile(rb"\[\s*[\[{\"]")  # `[{...`, `["...`, `[[...`; not a book's "[Illustration]" or "[1]"
WARC_TYPE = re.compile(rb"^WARC-Type:[ \t]*(\w+)", re.MULTILINE)


def sniff_kind(path) -> str | None:
    """What the first 64 KiB of `path` (decompressed) show it to be, for telling a file of another kind from one a
    source reads: `WARC` (`WARC/` version line, ISO 28500), `WAT` (a WARC whose records are only `warcinfo`,
    `request` and `metadata`: Common Crawl's link metadata, no page text), `XML` (`<?xml`, a MediaWiki or
    Stack Exchange root), `HTML` (`<!DOCTYPE html` / `<html`), `ZIP` (`PK\\3\\4`), `TAR` (`ustar` at byte 257,
    POSIX.1-1988), `BINARY` (a NUL byte, which UTF-8 text never has; `UTF16` when a UTF-16 byte-order mark
    starts it), `JSON_LINES` (starts with `{`), `JSON`
    (pretty-printed: a first line `{` alone, or a `[` array), `LATEX` (a
    line starting with a LaTeX structure command such as `\\documentclass`, `\\section`, `\\begin{`), `EMPTY`;
    plain text that is none of these: None. A file that cannot be opened, or whose compressed stream ends before
    its first byte: `UNREADABLE` (left to the reader, which counts it); one cut short or corrupt further on is told
    by the bytes before the damage (a partly downloaded .jsonl.gz is still JSON lines: the reader keeps its
    complete records and counts the rest); one whose first byte does not decompress (not the compression its name
    says) raises UserError."""
    try:
        f = open_binary(path)
    except OSError:
        return UNREADABLE  # cannot be opened: the reader counts it as unreadable
    with f:
        try:
            head = f.read(1)
        except EOFError:
            return UNREADABLE
        except STREAM_ERRORS as e:  # not one byte decompresses: this is not the compression its name says
            raise UserError(f"{path}: cannot be decompressed ({e}); expected the compression its name says") from None
        while len(head) < SNIFF_BYTES:  # in pieces: a stream cut short raises without returning what came before
            try:
                piece = f.read(min(4096, SNIFF_BYTES - len(head)))
            except STREAM_ERRORS:
                break  # cut short or corrupt further on: judged by what came before, as the reader keeps it
            if not piece:
                break
            head += piece
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not start:
        return EMPTY
    if start.startswith(b"WARC/"):
        types = {t.lower() for t in WARC_TYPE.findall(head)}
        return WAT if b"metadata" in types and types <= {b"warcinfo", b"request", b"metadata"} else WARC
    if head[257:262] == b"ustar":
        return TAR
    if start.startswith(b"PK\x03\x04"):
        return ZIP
    lower = start[:64].lower()
    if lower.startswith((b"<!doctype html", b"<html")):
        return HTML
    if start.startswith((b"<?xml", b"<mediawiki", b"<posts")):
        return XML
    if b"\x00" in head:  # UTF-16 text has NULs too: told apart by its byte-order mark, so the message is right
        return UTF16 if head.startswith((b"\xff\xfe", b"\xfe\xff")) else BINARY
    if start.startswith(b"{"):  # a first line that is a lone `{`: pretty-printed JSON; else one object a line
        return JSON if start.partition(b"\n")[0].strip() == b"{" else JSON_LINES
    if JSON_ARRAY.match(start):
        return JSON
    if LATEX_COMMAND.search(head):
        return LATEX
    return None


def is_warc(path) -> bool:
    """Whether a crawl reader takes `path` as WARC records (WARC, WET or WAT) rather than JSON lines: by its name
    (`.warc`, `.wet`, `.wat` in it, Common Crawl's names) or, failing that, by its `WARC/` version line."""
    parts = Path(path).name.lower().split(".")[1:]
    return any(n in parts for n in WARC_NAMES) or sniff_kind(path) in (WARC, WAT)


def refuse_other_kinds(shards: Iterable, source: str, expected: str, refuse: tuple[str, ...] = (),
                       accept: tuple[str | None, ...] | None = None) -> None:
    """Raise UserError for the first file among `shards` whose `sniff_kind` is in `refuse` (or, with `accept`, not
    in `accept`; None there is plain text): a file given by name is taken whatever its name, so a WARC handed to
    `prepare books` was kept as one "book". Empty or unreadable files and folders are left to the reader."""
    for shard in shards:
        if Path(shard).is_file():
            kind = sniff_kind(shard)
            if kind in (EMPTY, UNREADABLE):
                continue
            if kind in refuse or (accept is not None and kind not in accept):
                raise UserError(f"{shard}: {source}: this is {kind or 'a text file'}; expected {expected}")


def refuse_unless_records(shards: Iterable, source: str, expected: str, warc: bool = False) -> None:
    """Raise UserError for the first file among `shards` that its reader would take as JSON lines (or, with `warc`,
    as WARC: `is_warc`, the rule `CCReader` routes by) but that is of another kind: a `.txt` book or a Posts.xml
    given to `prepare c4` was read line by line as bad JSON and the run "succeeded" with 0 documents, and a WAT
    (metadata only) gave 0 documents too. Folders and empty or unreadable files are left to the reader, which
    counts them."""
    for shard in shards:
        if not Path(shard).is_file():
            continue
        kind = sniff_kind(shard)
        if kind in (EMPTY, UNREADABLE):
            continue
        if warc and is_warc(shard):
            if kind != WARC:
                what = kind if kind == WAT else f"{kind or 'a text file'} named as a WARC"
                raise UserError(f"{shard}: {source}: this is {what}; expected {expected}")
        elif kind not in (JSON_LINES, EMPTY):
            raise UserError(f"{shard}: {source}: this is {kind or 'a text file, not JSON lines'}; expected {expected}")


def refuse_folders_without(inputs: Iterable, suffixes: tuple[str, ...], source: str, expected: str) -> None:
    """Raise UserError for a folder among `inputs` that holds no file (searched recursively) whose name ends in one
    of `suffixes`: such a folder gave `SOURCE: no input shards found`, naming neither the folder nor the names
    looked for."""
    for item in inputs:
        p = Path(item)
        if p.is_dir() and not any(f.is_file() and f.name.endswith(suffixes) for f in p.rglob("*")):
            raise UserError(f"{item}: {source}: no {' / '.join('*' + s for s in suffixes)} files in this folder or "
                            f"below; expected {expected}")


def input_files(inputs: Iterable, suffixes: tuple[str, ...]) -> list[Path]:
    """The strict form for `tokenize` and `tokenizer train`: files as given, folders as their sorted files ending
    in `suffixes`, top level only (`prepare` keeps its intermediate files in a subfolder, and only the final shards
    at the top are its output); a folder without any such file is an error."""
    files: list[Path] = []
    for item in inputs:
        found = expand_inputs([item], suffixes, recursive=False)
        if not found:
            raise UserError(f"{item}: no {' / '.join('*' + s for s in suffixes)} files in folder")
        files += map(Path, found)
    if not files:
        raise UserError("no input files given")
    return files


def is_jsonl(path) -> bool:
    """Whether a file holds JSON lines, by its name (`x.jsonl`, `x.jsonl.gz`, `x.json.gz`) rather than text."""
    name = Path(path).name
    return ".jsonl" in name or name.endswith(".json.gz")


# ----------------------------------------------------------------------------------------------------------------
# lenient reading


def iter_lines(path: str, drops: Counter) -> Iterator[str]:
    """Decoded lines of a (maybe compressed) text file; undecodable lines and a cut-short stream are counted."""
    try:
        f = open_binary(path)
    except OSError:
        drops["unreadable"] += 1
        return
    with f:
        while True:
            try:
                raw = f.readline()
            except STREAM_ERRORS:
                drops["truncated_gzip"] += 1
                return
            if not raw:
                return
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                drops["invalid_utf8"] += 1


def read_text_file(path: str, drops: Counter) -> str | None:
    """A whole (maybe compressed) text file, or None with the reason counted."""
    try:
        with open_binary(path) as f:
            data = f.read()
    except STREAM_ERRORS:
        drops["truncated_gzip"] += 1
        return None
    try:
        return data.decode("utf-8-sig")  # Gutenberg files start with a byte-order mark
    except UnicodeDecodeError:
        drops["invalid_utf8"] += 1
        return None


def iter_jsonl(path: str, drops: Counter, text_keys: tuple[str, ...] = ("text",)) -> Iterator[dict]:
    """JSON objects from a JSONL(.gz) file with a string under one of `text_keys`, copied to `obj["text"]`;
    the rest counted and skipped."""
    for line in iter_lines(path, drops):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            drops["bad_json"] += 1
            continue
        key = next((k for k in text_keys if isinstance(obj, dict) and isinstance(obj.get(k), str)), None)
        if key is None:
            drops["missing_text"] += 1
            continue
        if SURROGATE_ESCAPE.search(line) and not _is_utf8_encodable(obj[key]):
            drops["invalid_utf8"] += 1  # a text that no UTF-8 file (our output shards included) can hold
            continue
        obj["text"] = obj[key]
        yield obj


def _is_utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ----------------------------------------------------------------------------------------------------------------
# strict reading


def text_of_line(path, lineno: int, line: bytes) -> str | None:
    """The "text" of one JSONL line (None for a blank line); anything else is a UserError naming file and line."""
    doc = parse_jsonl_line(path, lineno, line)
    if doc is None:
        return None
    if not isinstance(doc.get("text"), str):
        raise UserError(f'{path}:{lineno}: text: expected a JSON object with a "text" string')
    return doc["text"]


def jsonl_texts(path) -> Iterator[str]:
    """The texts of a JSONL(.gz) file, strictly (see `text_of_line`)."""
    for lineno, doc in read_jsonl(path):
        if not isinstance(doc.get("text"), str):
            raise UserError(f'{path}:{lineno}: text: expected a JSON object with a "text" string')
        yield doc["text"]
