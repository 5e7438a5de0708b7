"""Reading raw inputs robustly: a malformed record is counted under a reason and skipped, the run goes on.

Reasons used here: `truncated_gzip` (the compressed stream ends early or is corrupt: what was read before is
kept), `invalid_utf8`, `bad_json`, `missing_text`, `unreadable` (the file cannot be opened).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from llamaforge.errors import UserError

# what a compressed stream raises when it is cut short or corrupt
STREAM_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, OSError, lzma.LZMAError)


def expand_inputs(inputs: list[str], suffixes: tuple[str, ...], dirs_are_shards: bool = False) -> list[str]:
    """Files (and folders searched recursively for `suffixes`) as a sorted, de-duplicated list of shard paths.

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
            out += sorted(str(f) for f in p.rglob("*") if f.is_file() and f.name.endswith(suffixes))
        else:
            out.append(str(p))
    return list(dict.fromkeys(out))  # keep order, drop repeats


def open_binary(path: str):
    """Open plain, .gz, .bz2 or .xz files for binary reading."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".bz2"):
        return bz2.open(path, "rb")
    if path.endswith(".xz"):
        return lzma.open(path, "rb")
    return open(path, "rb")


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
        obj["text"] = obj[key]
        yield obj
