r"""ArXiv: LaTeX sources reduced to their body.

Inputs: `.tex` files, paper folders (their `.tex` files), folders of paper folders, and tarballs: a paper's source
(`.tar.gz`, or a gzipped single `.tex`) or arXiv's bulk `arXiv_src_*.tar` whose members are such papers. Each
input path is one shard; each paper one document. Files are UTF-8 or, failing that, Latin-1 (the usual legacy
encoding of arXiv sources: `Hauptstra\xdfe`); RedPajama skipped such papers whole, `strict_utf8=True` does too.

Per paper (RedPajama's rules, with its regex bugs fixed):
1. argument-less user macros are collected from all its files: `\newcommand{\x}{...}`, `\newcommand*\x{...}`,
   `\renewcommand`, `\def\x{...}`; the value is read with balanced braces, so `{\mathbb{R}}` is not cut at the first
   `}` (the public regex stops at the end of the line and breaks on nested braces);
2. per file: comments are dropped (a `%` not escaped by a backslash, to the end of the line; whole comment lines
   vanish), then everything before the first sectioning command (`\part` ... `\subparagraph`; RedPajama's regex
   missed `\paragraph`), then everything from the bibliography or `\appendix` on; a file without a sectioning
   command contributes nothing (the preamble of a multi-file paper);
3. each macro is replaced by its value where its name is not followed by a letter (replacement text is inserted
   literally: `re.sub` with a string would read `\m` in the value as an escape).
"""

from __future__ import annotations

import io
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from llamaforge.data.pipeline import Doc, Result, Source, Stage
from llamaforge.data.readers import LATEX, TAR, expand_inputs, refuse_other_kinds
from llamaforge.errors import UserError

SECTION = re.compile(r"\\(?:part|chapter|section|subsection|subsubsection|paragraph|subparagraph)\*?\s*[\[{]")
END_OF_BODY = re.compile(r"\\appendix\b|\\begin\{(?:references|REFERENCES|thebibliography)\}|\\bibliography\{")
COMMENT = re.compile(r"(?<!\\)((?:\\\\)*)%.*$", re.MULTILINE)  # % after an even number of backslashes
COMMENT_LINE = re.compile(r"^[ \t]*%.*\n?", re.MULTILINE)
MACRO_HEAD = re.compile(r"\\(?:(?:re)?newcommand\*?\s*(?:\{\s*(\\[A-Za-z@]+)\s*\}|(\\[A-Za-z@]+))|def\s*(\\[A-Za-z@]+))\s*")
MAX_EXPANSION_ROUNDS = 3  # macros defined with other macros
MACRO_GROWTH = 8  # macro expansion may grow a paper to at most 8x its size (+ 1 MB)
MAX_PAPER_BYTES = 64 * 1024 * 1024  # a paper's .tex files after decompression; more is dropped as "too_large"


def remove_comments(tex: str) -> str:
    """LaTeX without comments: whole comment lines removed, and a trailing `%...` cut unless the % is escaped (an odd
    number of backslashes before it)."""
    return COMMENT.sub(r"\1", COMMENT_LINE.sub("", tex))


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The contents of the brace group opening at `text[start]`, and the index after it."""
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "\\":
            continue
        if c == "{" and text[i - 1] != "\\":
            depth += 1
        elif c == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    return None


def collect_macros(tex: str) -> dict[str, str]:
    """Argument-less macros defined in `tex` (comments already removed): name (with backslash) -> value."""
    macros: dict[str, str] = {}
    for m in MACRO_HEAD.finditer(tex):
        name = m.group(1) or m.group(2) or m.group(3)
        rest = m.end()
        if rest < len(tex) and tex[rest] in "[#":  # takes arguments: not expanded
            continue
        value = _braced(tex, rest)
        if value is not None:
            macros[name] = value[0]
    return macros


class TooLarge(ValueError):
    """A paper that would grow past its size limit (a decompression or macro-expansion bomb); the reader or stage
    drops it under `reason`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def expand_macros(tex: str, macros: dict[str, str], max_chars: int | None = None) -> str:
    """Replace each macro by its value, up to MAX_EXPANSION_ROUNDS rounds (macros defined with macros).

    The size of each round's result is computed before it is built: past `max_chars` (default
    MACRO_GROWTH x the input + 1 MB) it raises TooLarge("macro_expansion_too_large"), so macros that expand
    exponentially (each defined as many copies of the previous) cost a scan, not memory."""
    if not macros:
        return tex
    limit = max_chars if max_chars is not None else MACRO_GROWTH * len(tex) + (1 << 20)
    # longest names first so that \RR is not matched as \R followed by R
    names = sorted(macros, key=len, reverse=True)
    pattern = re.compile("(" + "|".join(re.escape(n) for n in names) + r")(?![A-Za-z@])")
    for _ in range(MAX_EXPANSION_ROUNDS):
        size = len(tex) + sum(len(macros[m.group(1)]) - len(m.group(1)) for m in pattern.finditer(tex))
        if size > limit:
            raise TooLarge("macro_expansion_too_large", f"macros would expand the paper to {size} characters")
        new = pattern.sub(lambda m: macros[m.group(1)], tex)
        if new == tex:
            break
        tex = new
    return tex


def clean_file(tex: str) -> str:
    """One file's body: comments out, nothing before the first sectioning command, nothing from the bibliography
    or the appendix on ("" when there is no sectioning command)."""
    tex = remove_comments(tex)
    start = SECTION.search(tex)
    if start is None:
        return ""
    tex = tex[start.start():]
    end = END_OF_BODY.search(tex)
    return tex[:end.start()] if end else tex


def clean_paper(files: list[str]) -> str:
    """One paper's text from its .tex files (RedPajama's arXiv cleaning): each file's body (`clean_file`: comments out,
    the preamble and everything from the bibliography or appendix on removed), then the argument-less macros defined
    in any of the files expanded (`expand_macros`, bounded: TooLarge past MACRO_GROWTH x the paper)."""
    macros: dict[str, str] = {}
    for tex in files:
        macros.update(collect_macros(remove_comments(tex)))
    bodies = [clean_file(tex) for tex in files]
    return expand_macros("\n".join(b for b in bodies if b), macros).strip()


# ---- reading papers


def gunzip_bounded(data: bytes, limit: int = MAX_PAPER_BYTES) -> bytes:
    """gzip.decompress (every member) that stops past `limit` output bytes with TooLarge("too_large"): a 1 MB gzip
    bomb costs `limit`, not gigabytes. A cut-short stream raises EOFError, as gzip.decompress does."""
    out = bytearray()
    while data:
        d = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
        out += d.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            raise TooLarge("too_large", f"decompresses to more than {limit} bytes")
        if not d.eof:
            raise EOFError("compressed file ended before the end-of-stream marker was reached")
        data = d.unused_data.lstrip(b"\x00")  # gzip allows trailing zero padding
    return bytes(out)


def _tex_from_bytes(name: str, data: bytes, limit: int = MAX_PAPER_BYTES) -> list[tuple[str, bytes]]:
    """The .tex files of one paper given as bytes: a gzipped tar, a gzipped .tex, a tar or a .tex. More than
    `limit` bytes after decompression raises TooLarge."""
    if data[:2] == b"\x1f\x8b":
        data = gunzip_bounded(data, limit)
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".tex")]
            if sum(m.size for m in members) > limit:
                raise TooLarge("too_large", f"its .tex files hold more than {limit} bytes")
            return [(m.name, tar.extractfile(m).read()) for m in members]
    except tarfile.ReadError:
        return [(name, data)]


def _files_or_too_large(name: str, data: bytes):
    """One paper's files, or the TooLarge that says why it is dropped (one paper never ends a bulk archive)."""
    try:
        return _tex_from_bytes(name, data)
    except TooLarge as e:
        return e


def _decode(data: bytes, strict_utf8: bool) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        if strict_utf8:
            raise
        return data.decode("latin-1")  # never fails: every byte is a character


class ArxivReader:
    """Read one shard (a .tex file, a paper folder, a gzipped source or a tar of papers) as one document per paper, its
    .tex files joined; papers with no .tex, undecodable text (with `strict_utf8`) or beyond MAX_PAPER_BYTES are
    counted as drops."""
    def __init__(self, strict_utf8: bool = False):
        self.strict_utf8 = strict_utf8

    def __call__(self, shard: str, drops: Counter) -> Iterator[Doc]:
        for paper_id, files in self._papers(Path(shard), drops):
            if isinstance(files, TooLarge):
                drops[files.reason] += 1
                continue
            try:
                texts = [_decode(data, self.strict_utf8).replace("\r\n", "\n") for _, data in files]
            except UnicodeDecodeError:
                drops["invalid_utf8"] += 1
                continue
            if not texts:
                drops["no_tex"] += 1
                continue
            yield {"text": "\n".join(texts), "meta": {"source": "arxiv", "arxiv_id": paper_id,
                                                      "url": f"https://arxiv.org/abs/{paper_id}",
                                                      "files": [name for name, _ in files]},
                   "_files": texts}

    def _papers(self, path: Path, drops: Counter) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
        try:
            if path.is_dir():
                tex = sorted(path.glob("*.tex"))
                if tex:
                    yield path.name, [(p.name, p.read_bytes()) for p in tex]
                for sub in sorted(p for p in path.iterdir() if p.is_dir()):
                    yield from self._papers(sub, drops)
            elif path.name.endswith(".tex"):
                yield path.parent.name if path.name == "main.tex" else path.stem, [(path.name, path.read_bytes())]
            elif path.name.endswith(".tar") and not path.name.endswith(".tar.gz"):  # arXiv bulk: many papers
                with tarfile.open(path) as tar:
                    for m in tar.getmembers():
                        if m.isfile():
                            stem = Path(m.name).name.split(".gz")[0]
                            yield stem, _files_or_too_large(m.name, tar.extractfile(m).read())
            else:
                yield path.name.split(".tar")[0].removesuffix(".gz"), _files_or_too_large(path.name, path.read_bytes())
        except (OSError, EOFError, tarfile.TarError):
            drops["truncated_gzip"] += 1


class LatexClean(Stage):
    """Clean one paper. The reader passes the paper's files separately under `_files` (macros are collected
    across files, sections are found per file); the key does not survive this stage."""

    name = "latex_clean"

    def __call__(self, doc: Doc) -> Result:
        try:
            text = clean_paper(doc.pop("_files", None) or [doc["text"]])
        except TooLarge as e:
            return e.reason
        if not text:
            return "no_section"
        doc["text"] = text
        return doc


def build(inputs: list[str], strict_utf8: bool = False) -> Source:
    """ArXiv papers from `inputs` (see the module's Inputs). Raises UserError for a folder without any `.tex` file
    below it and for a file that is neither LaTeX (a line starting with a structure command such as
    `\\documentclass` or `\\section`, `readers.sniff_kind`; maybe gzipped) nor a tar archive (maybe gzipped):
    a book, a JSONL file or a ZIP archive was read as a paper with no section and dropped, 0 documents, exit 0."""
    expected = "LaTeX sources (.tex, paper folders, .tar.gz / .gz paper sources or arXiv's bulk .tar)"
    shards = expand_inputs(inputs, (), dirs_are_shards=True)
    for shard in shards:
        if Path(shard).is_dir() and not any(f.is_file() for f in Path(shard).rglob("*.tex")):
            raise UserError(f"{shard}: arxiv: no .tex files in this folder or below; expected {expected}")
    refuse_other_kinds(shards, "arxiv", expected, accept=(LATEX, TAR))
    return Source("arxiv", shards, ArxivReader(strict_utf8), [LatexClean()])
