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


def sniff_kind(path) -> str | None:
    """What the first 4 KiB of `path` (decompressed) show it to be, when that is one of the raw-dump kinds a source
    may be handed by mistake: "a WARC file" (`WARC/` version line, ISO 28500), "an XML file" (`<?xml`, a MediaWiki
    or Stack Exchange root), "a binary file" (a NUL byte, which UTF-8 text never has); else None. Unreadable: None
    (the reader counts it)."""
    try:
        with open_binary(path) as f:
            head = f.read(4096)
    except (OSError, *STREAM_ERRORS):
        return None
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if start.startswith(b"WARC/"):
        return "a WARC file"
    if start.startswith((b"<?xml", b"<mediawiki", b"<posts")):
        return "an XML file"
    if b"\x00" in head:
        return "a binary file"
    return None


def refuse_other_kinds(shards: Iterable, source: str, expected: str, refuse: tuple[str, ...]) -> None:
    """Raise UserError for the first file among `shards` whose `sniff_kind` is in `refuse`: a file given by name is
    taken whatever its name, so a WARC handed to `prepare books` was kept as one "book". Folders are skipped."""
    for shard in shards:
        if Path(shard).is_file():
            kind = sniff_kind(shard)
            if kind in refuse:
                raise UserError(f"{shard}: {source}: this is {kind}; expected {expected}")


def refuse_unless_records(shards: Iterable, source: str, expected: str, warc: bool = False) -> None:
    """Raise UserError for the first file among `shards` that its reader would take as JSON lines (or, with `warc`,
    as WARC when `.warc` is in its name, the rule `CCReader` routes by) but that is of another kind: a `.txt` book
    or a Posts.xml given to `prepare c4` was read line by line as bad JSON and the run "succeeded" with 0 documents.
    JSON lines start with `{` (a JSON object per line); a WARC with its `WARC/` version line (ISO 28500). Folders
    and empty or unreadable files are left to the reader, which counts them."""
    for shard in shards:
        if not Path(shard).is_file():
            continue
        try:
            with open_binary(shard) as f:
                start = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        except (OSError, *STREAM_ERRORS):
            continue
        if not start:
            continue
        kind = sniff_kind(shard)
        if warc and ".warc" in Path(shard).name:
            if kind != "a WARC file":
                raise UserError(f"{shard}: {source}: named .warc but this is {kind or 'a text file'}; "
                                f"expected {expected}")
        elif not start.startswith(b"{"):
            raise UserError(f"{shard}: {source}: this is {kind or 'a text file, not JSON lines'}; expected {expected}")


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
