"""Books source on real Project Gutenberg files: boilerplate stripped, a planted near-duplicate removed."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import shared_path
from data_helpers import run_source

from llamaforge.data.sources.books import strip_gutenberg

BOOKS = ["pg1080_modest_proposal.txt", "pg1952_yellow_wallpaper.txt", "pg41_legend_of_sleepy_hollow.txt"]


def _near_copy(text: str) -> str:
    """Another "edition": a different header, a few words changed, the last paragraphs missing (~97% overlap)."""
    text = text.replace("EBOOK A MODEST PROPOSAL", "EBOOK A MODEST PROPOSAL (SECOND EDITION)")
    text = text.replace("melancholy", "sad", 1).replace("children", "infants", 2)
    paragraphs = text.split("\r\n\r\n")
    return "\r\n\r\n".join(paragraphs[:-6] + paragraphs[-3:])  # drops three paragraphs before the footer


def test_books_strip_and_near_dedup(tmp_path: Path):
    src = [shared_path(f"gutenberg/{b}") for b in BOOKS]
    planted = tmp_path / "zz_modest_proposal_copy.txt"
    planted.write_bytes(_near_copy(src[0].read_text(encoding="utf-8-sig")).encode("utf-8"))
    stats, docs = run_source("books", src + [planted], tmp_path / "out")
    files = [d["meta"]["file"] for d in docs]
    assert files == BOOKS, "the planted near-duplicate is removed, the original (earlier) kept"
    assert stats["stages"]["near_dedup"]["drops"] == {"near_duplicate": 1}
    for d in docs:
        text = d["text"]
        assert "*** START OF" not in text and "*** END OF" not in text
        assert "Project Gutenberg License" not in text and "gutenberg.org/license" not in text
        assert "\r" not in text
    assert docs[0]["text"].startswith("A Modest Proposal")
    assert "my wife past child-bearing." in docs[0]["text"]  # the last line of the book survives


def test_strip_gutenberg_without_markers():
    assert strip_gutenberg("just a text\n") == "just a text\n"
    marked = "header\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nbody\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicense"
    assert strip_gutenberg(marked) == "body\n"


def test_no_gutenberg_front_matter_or_licence_left_in_any_shared_book():
    """All shared books: no transcriber credit ("Produced by ..."), no Project Gutenberg mention (also across a
    line break), no transcriber's note heading; and the book itself is kept (at least 99% of the marked body)."""
    folder = shared_path("gutenberg")
    books = sorted(folder.glob("*.txt"))
    assert len(books) >= 70
    for path in books:
        raw = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
        body = strip_gutenberg(raw)
        flat = " ".join(body.split())
        assert "project gutenberg" not in flat.lower(), path.name
        assert not re.search(r"(?m)^\s*Produced by ", body), path.name
        assert not re.search(r"(?im)^\W*(original )?transcriber['’]?s? notes?", body), path.name
        start, end = raw.find("*** START OF"), raw.find("*** END OF")
        marked = raw[raw.index("\n", start):end] if start >= 0 and end > start else raw
        assert len(body) >= 0.99 * len(marked.strip()), path.name
