"""The built-in corpus for `make demo`: two sources that every Python install has, so the demo runs offline.

- **code**: the standard library's own source, one document per `.py` file (test folders, site-packages and caches
  left out). Each file goes through the data pipeline's GitHub rules (`llamaforge.data.sources.github.clean_file`:
  leading license header removed, line-length and alphanumeric filters), as the paper's GitHub slice does, unless
  `github_rules=False`.
- **docs**: English prose about Python: every entry of `pydoc_data.topics` (the language reference that `help()`
  shows), then per module its docstring and the docstrings of its public classes and functions, read from the source
  with `ast` (nothing is imported, so no module's import side effects run).

Files are visited in an order fixed by a hash of their relative path (a spread sample when a size cap cuts the
list), so the output depends only on the Python version and the options. `write_builtin_corpus(out_dir)` writes
`out_dir/code.jsonl` and `out_dir/docs.jsonl` (`{"text": ..., "meta": {...}}` per line), atomically;
`llamaforge demo` (commands/demo.py) goes on to train the tokenizer and the token shards from them.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from llamaforge.errors import UserError
from llamaforge.io import atomic_file

SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "_bundled"}


def stdlib_root() -> Path:
    """The folder of this Python's standard library (sysconfig's `stdlib` path): the built-in corpus's code and docs
    come from it."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The standard library's .py files outside test folders, in a fixed pseudo-random order."""
    root = root or stdlib_root()
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(("test_", "."))]
        files += [Path(folder, n) for n in names if n.endswith(".py") and not n.startswith("test_")]
    # ordered by a hash of the path: stable across runs and file systems, and not alphabetical, so a cap samples
    # the whole library rather than its first letters
    return sorted(files, key=lambda p: hashlib.sha1(p.relative_to(root).as_posix().encode()).hexdigest())


def _github_rules():
    """The data pipeline's per-file GitHub rules (imported only when used: the pipeline module imports torch)."""
    from llamaforge.data.sources.github import clean_file

    return clean_file


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def _capped(docs: Iterator[dict], max_bytes: int | None) -> Iterator[dict]:
    """Documents until the next one would take the total UTF-8 size over max_bytes."""
    total = 0
    for doc in docs:
        size = len(doc["text"].encode("utf-8"))
        if max_bytes is not None and total + size > max_bytes:
            if total == 0:
                continue  # a first document larger than the whole cap: look for a smaller one
            return
        total += size
        yield doc


def code_documents(max_bytes: int | None = None, github_rules: bool = True, root: Path | None = None,
                   drops: dict | None = None) -> Iterator[dict]:
    """One document per standard-library source file; `drops` counts files the GitHub rules rejected, by reason."""
    root = root or stdlib_root()
    rules = _github_rules() if github_rules else None

    def docs():
        for path in stdlib_files(root):
            rel = path.relative_to(root).as_posix()
            text, reason = _read(path), None
            if text is not None and rules is not None:
                text, reason = rules(text, rel)
            if text is None or not text.strip():
                reason = reason or "unreadable_or_empty"
            if reason is not None:
                if drops is not None:
                    drops[reason] = drops.get(reason, 0) + 1
                continue
            yield {"text": text, "meta": {"source": "python-stdlib", "path": rel, "github_rules": rules is not None}}

    return _capped(docs(), max_bytes)


def module_docstrings(source: str) -> str | None:
    """A module's docstring and its public classes' and functions' docstrings, as one text; None when it has none."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    parts = []
    if doc := ast.get_docstring(tree):
        parts.append(doc)
    for node in ast.walk(tree):
        public = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name[0] != "_"
        if public and (doc := ast.get_docstring(node)):
            parts.append(f"{node.name}: {doc}")
    return "\n\n".join(parts) or None


def docs_documents(max_bytes: int | None = None, root: Path | None = None) -> Iterator[dict]:
    """`pydoc_data` topics first, then one document of docstrings per standard-library module."""
    root = root or stdlib_root()

    def docs():
        try:
            from pydoc_data.topics import topics
        except ImportError:  # some distributions strip pydoc_data
            topics = {}
        for name in sorted(topics):
            if topics[name].strip():
                yield {"text": topics[name], "meta": {"source": "pydoc-topics", "topic": name}}
        for path in stdlib_files(root):
            source = _read(path)
            text = module_docstrings(source) if source else None
            if text:
                yield {"text": text, "meta": {"source": "python-docstrings", "path": path.relative_to(root).as_posix()}}

    return _capped(docs(), max_bytes)


def write_jsonl(path: Path, docs: Iterator[dict]) -> dict:
    """Write documents as JSONL, atomically; returns {"docs", "bytes"} of the texts written."""
    n_docs = n_bytes = 0
    with atomic_file(path) as f:
        for doc in docs:
            f.write((json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))
            n_docs += 1
            n_bytes += len(doc["text"].encode("utf-8"))
    return {"docs": n_docs, "bytes": n_bytes}


def write_builtin_corpus(out_dir, max_mb: float | dict | None = None, github_rules: bool = True) -> dict[str, dict]:
    """Write `out_dir/code.jsonl` and `out_dir/docs.jsonl`, each capped at max_mb megabytes of text (one number for
    both, or {"code": MB, "docs": MB}; None: no cap).

    Returns per source {"path", "docs", "bytes"} (and, for code, "drops": files the GitHub rules rejected).
    """
    out_dir = Path(out_dir)
    caps = max_mb if isinstance(max_mb, dict) else {"code": max_mb, "docs": max_mb}
    cap = {n: None if caps.get(n) is None else int(caps[n] * 1e6) for n in ("code", "docs")}
    drops: dict = {}
    out = {
        "code": write_jsonl(out_dir / "code.jsonl", code_documents(cap["code"], github_rules, drops=drops)),
        "docs": write_jsonl(out_dir / "docs.jsonl", docs_documents(cap["docs"])),
    }
    out["code"]["drops"] = drops
    for name, stats in out.items():
        stats["path"] = str(out_dir / f"{name}.jsonl")
    if out["code"]["docs"] == 0 or out["docs"]["docs"] == 0:
        raise UserError(f"{stdlib_root()}: found no standard-library sources to build the demo corpus from")
    return out


if __name__ == "__main__":  # python -m llamaforge.data.builtin_corpus OUT_DIR [MAX_MB]
    stats = write_builtin_corpus(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else None)
    print(json.dumps(stats, indent=2))
