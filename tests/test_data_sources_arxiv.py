"""ArXiv source on two real papers' LaTeX sources, plus the rules RedPajama's regexes got wrong."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

from conftest import shared_path
from data_helpers import run_source

from llamaforge.data.sources.arxiv import (
    SECTION,
    clean_paper,
    collect_macros,
    remove_comments,
)

COMMENT = re.compile(r"(?<!\\)%")


def test_arxiv_papers(tmp_path: Path):
    root = shared_path("arxiv-latex")
    stats, written = run_source("arxiv", [root], tmp_path / "out")
    docs = {d["meta"]["arxiv_id"]: d for d in written}
    assert set(docs) == {"1707.08043", "1708.00137"}
    assert stats["stages"]["latex_clean"]["docs_out"] == 2
    for paper_id, d in docs.items():
        text = d["text"]
        raw = (root / paper_id / "main.tex").read_bytes().decode("utf-8", errors="replace")
        assert SECTION.match(text), "nothing before the first sectioning command"
        assert "\\documentclass" not in text and "\\begin{document}" not in text
        assert "\\begin{thebibliography}" not in text and "\\bibitem" not in text
        assert not COMMENT.search(text), "comments are removed"
        # every argument-less \newcommand of the paper is expanded away
        defined = re.findall(r"^\\newcommand\s*\{(\\[A-Za-z]+)\}\s*\{", raw, re.MULTILINE)
        assert defined
        for name in defined:
            assert not re.search(re.escape(name) + r"(?![A-Za-z])", text), name
    assert "{\\cal L}(" in docs["1708.00137"]["text"]  # \lin( expanded to its value


def test_rules_fixed_from_redpajama():
    body = r"""\documentclass{article}
\newcommand{\R}{\mathbb{R}}
\def\eps{\varepsilon}
\newcommand{\pair}[2]{(#1, #2)}
\begin{document}
\maketitle
\paragraph{Setting} Let $x \in \R$ and $\eps > 0$; a 50\% chance. % a comment
% a whole comment line
Use \pair{a}{b} and \Rx.
\appendix
\section{Proofs} gone
"""
    assert collect_macros(remove_comments(body)) == {r"\R": r"\mathbb{R}", r"\eps": r"\varepsilon"}
    text = clean_paper([body])
    assert text.startswith(r"\paragraph{Setting}")  # RedPajama's regex never matched \paragraph
    assert r"$x \in \mathbb{R}$ and $\varepsilon > 0$; a 50\% chance." in text
    assert "comment" not in text and "Proofs" not in text
    assert r"\pair{a}{b}" in text and r"\Rx" in text  # macros with arguments and longer names untouched


def test_arxiv_tarball(tmp_path: Path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("preamble.tex", b"\\newcommand{\\N}{\\mathbb{N}}\n"),
                           ("body.tex", b"\\section{Intro}\nLet $n \\in \\N$.\n\\bibliography{refs}\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "2101.00001.tar.gz").write_bytes(buf.getvalue())
    _, (doc,) = run_source("arxiv", [tmp_path / "2101.00001.tar.gz"], tmp_path / "out")
    assert doc["text"] == "\\section{Intro}\nLet $n \\in \\mathbb{N}$."
    assert doc["meta"]["arxiv_id"] == "2101.00001"
