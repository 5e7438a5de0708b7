"""User tasks as data: `llamaforge eval MODEL --task-file FILE.jsonl`.

One JSON object per line, in one of three formats (the format is read off each line's keys):

- multiple choice: `{"query": str, "choices": [str, ...], "gold": int}`; each choice is scored as
  log p(" " + choice | query).
- schema: `{"context_options": [str, ...], "continuation": str, "gold": int}`; the continuation is scored after
  each option (WinoGrande's partial scoring).
- language model: `{"context": str, "continuation": str}`; log p(continuation | context), accuracy = the
  continuation is the greedy decode.

A malformed line raises `UserError("FILE:LINE: what was expected")`.
"""

from __future__ import annotations

from pathlib import Path

from llamaforge.errors import UserError
from llamaforge.eval.items import ChoiceItem, ContinuationItem
from llamaforge.io import read_jsonl as _read_jsonl

FORMATS = {
    "multiple choice": ("query", "choices", "gold"),
    "schema": ("context_options", "continuation", "gold"),
    "language model": ("context", "continuation"),
}


def read_jsonl(path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line (`llamaforge.io.read_jsonl`: plain or gzip, `FILE:LINE`
    errors); a missing or empty file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such task file")
    out = list(_read_jsonl(path))
    if not out:
        raise UserError(f"{path}: empty task file; expected one JSON object per line")
    return out


def detect_format(obj: dict) -> str | None:
    """The name of the first FORMATS entry whose keys `obj` all has, or None."""
    for name, keys in FORMATS.items():
        if all(k in obj for k in keys):
            return name
    return None


def _string(obj, key, where) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise UserError(f"{where}: {key}: expected a string, got {type(value).__name__}")
    return value


def _options(obj, key, where) -> list[str]:
    value = obj[key]
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, str) for c in value):
        raise UserError(f"{where}: {key}: expected a list of at least 2 strings")
    return value


def _gold(obj, n_options, where) -> int:
    gold = obj["gold"]
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < n_options:
        raise UserError(f"{where}: gold: expected an integer index in [0, {n_options}), got {gold!r}")
    return gold


def parse_line(obj: dict, where: str):
    """One task-file object -> a ChoiceItem or ContinuationItem."""
    fmt = detect_format(obj)
    if fmt is None:
        expected = "; ".join(f"{name}: {', '.join(keys)}" for name, keys in FORMATS.items())
        raise UserError(f"{where}: unknown line format (keys {sorted(obj)}); expected the keys of one of: {expected}")
    if fmt == "multiple choice":
        query, choices = _string(obj, "query", where), _options(obj, "choices", where)
        return ChoiceItem.shared_context(query, choices, _gold(obj, len(choices), where))
    if fmt == "schema":
        options, cont = _options(obj, "context_options", where), _string(obj, "continuation", where)
        return ChoiceItem.partial(options, cont, _gold(obj, len(options), where))
    context, cont = _string(obj, "context", where), _string(obj, "continuation", where)
    if not cont:
        raise UserError(f"{where}: continuation: expected a non-empty string")
    return ContinuationItem(context, cont)


def load_task_file(path) -> list:
    """All items of a task file; every line must have the same format."""
    path = Path(path)
    items, first = [], None
    for n, obj in read_jsonl(path):
        where = f"{path}:{n}"
        item = parse_line(obj, where)
        if first is None:
            first = type(item)
        elif type(item) is not first:
            raise UserError(f"{where}: line format differs from the file's first line; use one format per file")
        items.append(item)
    return items
