"""GitHub: permissively licensed source files, boilerplate headers removed, heuristics, exact dedup.

Inputs (`github_shards`): a repository folder, a folder of repository folders (each repository's license, from the
LICENSE / COPYING file at its root, decides for its files; one shard per repository), or JSONL(.gz) files / a folder
of them with `{"content" or "text", "path", "repo_name", "license"}` (RedPajama's BigQuery export).
Rules (RedPajama-v1, as in the paper): MIT / BSD / Apache only; the 66-extension allowlist; drop a file whose
longest line exceeds 1000 characters, whose mean line length exceeds 100, whose alphanumeric fraction is below
0.25, or with fewer than 1.5 alphabetic characters per token (tokens = whitespace-separated words, as in dolma's
reimplementation: RedPajama used the Pythia tokenizer, which cannot be loaded offline); remove a leading copyright
header; drop exact duplicates (MD5 of the content, first copy kept).

`clean_file(path_or_text, name)` applies the per-file rules alone (no license, no dedup): other modules, such as
the built-in demo corpus, use it on single files.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from llamaforge.data.filters.dedup import ExactDedup
from llamaforge.data.pipeline import Doc, MapStage, Result, Source
from llamaforge.data.readers import expand_inputs, iter_jsonl, read_text_file, refuse_unless_records

EXTENSIONS = (
    ".asm", ".bat", ".cmd", ".c", ".h", ".cs", ".cpp", ".hpp", ".c++", ".h++", ".cc", ".hh", ".C", ".H", ".cmake",
    ".css", ".dockerfile", ".f90", ".f", ".f03", ".f08", ".f77", ".f95", ".for", ".fpp", ".go", ".hs", ".html",
    ".java", ".js", ".jl", ".lua", ".md", ".markdown", ".php", ".php3", ".php4", ".php5", ".phps", ".phpt", ".pl",
    ".pm", ".pod", ".perl", ".ps1", ".psd1", ".psm1", ".py", ".rb", ".rs", ".sql", ".scala", ".sh", ".bash",
    ".command", ".zsh", ".ts", ".tsx", ".tex", ".vb", "Dockerfile", "Makefile", ".xml", ".rst", ".m", ".smali",
)
LICENSES = ("mit", "bsd", "apache")  # prefixes of SPDX-like ids: mit, bsd-3-clause, apache-2.0, ...

MAX_LINE, MAX_MEAN_LINE, MIN_ALNUM, MIN_ALPHA_PER_TOKEN = 1000, 100, 0.25, 1.5

# first C-style block comment anywhere in the file (an unrolled loop: no catastrophic backtracking)
BLOCK_COMMENT = re.compile(r"/\*[^*]*\*+(?:[^/*][^*]*\*+)*/")
LINE_COMMENT = ("//", "#", "--")

# license texts, recognized by a phrase each one must contain
LICENSE_PHRASES = {
    "mit": "permission is hereby granted, free of charge",
    "apache-2.0": "apache license",
    "bsd": "redistribution and use in source and binary forms",
}
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "COPYING", "COPYING.txt", "LICENSE-MIT")


def remove_header(text: str) -> str:
    """Drop a leading copyright header: the first block comment if it mentions copyright, otherwise (no block
    comment at all) the leading run of line comments and blank lines (RedPajama's rule)."""
    m = BLOCK_COMMENT.search(text)
    if m:
        if "copyright" in m.group(0).lower():
            return (text[:m.start()] + text[m.end():]).lstrip("\n")
        return text
    lines = text.split("\n")
    i = 0
    while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith(LINE_COMMENT)):
        i += 1
    return "\n".join(lines[i:])


def file_reason(text: str, name: str) -> str | None:
    """Why a (header-stripped) file is rejected, or None to keep it."""
    if not name.endswith(EXTENSIONS):
        return "extension"
    if not text.strip():
        return "empty"
    lines = text.split("\n")
    if max(len(s) for s in lines) > MAX_LINE:
        return "max_line_length"
    if len(text) / len(lines) > MAX_MEAN_LINE:  # RedPajama: len(content) / number of lines
        return "mean_line_length"
    if sum(c.isalnum() for c in text) / len(text) < MIN_ALNUM:
        return "alphanumeric_fraction"
    tokens = text.split()
    if sum(c.isalpha() for c in text) / max(len(tokens), 1) < MIN_ALPHA_PER_TOKEN:
        return "alpha_per_token"
    return None


def clean_file(path_or_text: str | Path, name: str | None = None) -> tuple[str | None, str | None]:
    """Apply GitHub's per-file rules to one file: `(cleaned text, None)` or `(None, reason)`.

    `path_or_text` is a `Path` (read as UTF-8) or the file's text; `name` is the file name the extension rule
    looks at (defaults to the path's name). License and dedup rules are not applied here.
    """
    if isinstance(path_or_text, Path):
        name = name or path_or_text.name
    if name is None:
        raise ValueError("clean_file: a name is needed when passing text")
    if name.endswith(".crt") or Path(name).name == "LICENSE":
        return None, "skipped_path"
    if isinstance(path_or_text, Path):
        try:
            text = path_or_text.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            return None, "invalid_utf8"
        except OSError:
            return None, "unreadable"
    else:
        text = path_or_text
    text = remove_header(text)
    reason = file_reason(text, name)
    return (None, reason) if reason else (text, None)


def detect_license(repo: Path) -> str | None:
    """The license of a repository folder from its LICENSE / COPYING file: an id of `LICENSE_PHRASES`, "other"
    for a license text not recognized, None when there is no license file."""
    for fname in LICENSE_FILES:
        p = repo / fname
        if p.is_file():
            text = " ".join(p.read_text(encoding="utf-8", errors="replace").lower().split())
            for lic, phrase in LICENSE_PHRASES.items():
                if phrase in text:
                    return lic
            return "other"
    return None


def license_allowed(license_id: str | None) -> bool:
    """Whether a license id is one RedPajama keeps: MIT, BSD or Apache (any variant, by prefix, case-insensitive)."""
    return bool(license_id) and license_id.lower().startswith(LICENSES)


class GithubReader:
    """A repository folder or a JSONL file -> one document per file."""

    def __call__(self, shard: str, drops: Counter) -> Iterator[Doc]:
        p = Path(shard)
        if p.is_dir():
            yield from self._repo(p, drops)
            return
        for obj in iter_jsonl(shard, drops, text_keys=("content", "text")):
            text = obj["text"]
            meta = {k: obj[k] for k in ("repo_name", "path", "license") if k in obj}
            if not license_allowed(obj.get("license")):
                drops["license"] += 1
                continue
            yield {"text": text, "meta": {"source": "github", **meta}}

    @staticmethod
    def _repo(repo: Path, drops: Counter) -> Iterator[Doc]:
        license_id = detect_license(repo)
        files = sorted(f for f in repo.rglob("*") if f.is_file() and ".git" not in f.relative_to(repo).parts)
        if not license_allowed(license_id):
            # told apart in the stage table: a folder without a license file at its root (often the wrong folder
            # given: a subfolder of the repository) vs. a license RedPajama does not keep (GPL, ...)
            drops["license" if license_id else "no_license_file"] += len(files)
            return
        for f in files:
            text = read_text_file(str(f), drops)
            if text is not None:
                rel = f.relative_to(repo).as_posix()
                yield {"text": text, "meta": {"source": "github", "repo_name": repo.name, "path": rel,
                                              "license": license_id}}


def _clean(doc: Doc) -> Result:
    text, reason = clean_file(doc["text"], doc["meta"].get("path", ""))
    if reason:
        return reason
    doc["text"] = text
    return doc


JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz")


def is_repository(folder: Path) -> bool:
    """A folder is a repository when it has a license file or a `.git` entry at its root."""
    return (folder / ".git").exists() or any((folder / name).is_file() for name in LICENSE_FILES)


def _repositories(folder: Path) -> list[str]:
    """Repository folders under a folder that is not one itself (an `owner/repo` tree is searched two levels)."""
    found: list[str] = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if is_repository(child):
            found.append(str(child))
        else:
            found += _repositories(child) if any(is_repository(g) for g in child.iterdir() if g.is_dir()) else []
    return found


def github_shards(inputs: list[str]) -> list[str]:
    """Shards (one per repository folder or JSONL file) of the inputs a user has:

    - a repository folder (license file or `.git` at its root): one shard, its license decides;
    - a folder of repository folders (or `owner/repo` folders): one shard per repository, each repository's own
      license decides; a subfolder that is no repository (no license file, no `.git`) is not searched;
    - a folder of JSONL files (a BigQuery-style export, no license file of its own): one shard per file;
    - a JSONL(.gz) file: one shard.
    A folder that is none of these is one repository without a license file (all its files dropped as
    `no_license_file`; a license file whose license is not kept: `license`)."""
    shards: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir() and not is_repository(p):
            exported = sorted(str(f) for f in p.iterdir() if f.name.endswith(JSONL_SUFFIXES))
            repos = _repositories(p)
            if exported or repos:
                shards += exported + repos
                continue
        shards += expand_inputs([item], JSONL_SUFFIXES, dirs_are_shards=True)
    return list(dict.fromkeys(shards))


def build(inputs: list[str]) -> Source:
    """GitHub code from `inputs` (repository folders, folders of them, or RedPajama's BigQuery JSONL): one document per
    file, the file filters, then exact dedup. Raises UserError for inputs that hold neither repositories nor such
    records."""
    shards = github_shards(inputs)
    refuse_unless_records(shards, "github", 'a repository folder (LICENSE at its root), a folder of them, or JSONL(.gz) '
                          'with "content", "path", "repo_name", "license" (RedPajama\'s BigQuery export)')
    return Source("github", shards, GithubReader(), [MapStage("code_filters", _clean), ExactDedup()])
