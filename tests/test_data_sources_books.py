"""Books source on real Project Gutenberg files: boilerplate stripped, a planted near-duplicate removed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


TITLE_PAGE = "LEVIATHAN\n\nBy Thomas Hobbes\n\n1651"
BOOK = ("TO MY MOST HONOR'D FRIEND\n\n" + "Your most worthy Brother was pleased to think my studies something. " * 40
        + "\n\n") * 12
NOTE_PROSE = ["Hobbes used capitals and italics very extensively, for emphasis, for proper names, for quotations, "
              "and sometimes, it seems, just because.",
              "The original has very extensive margin notes, which are used to show where he introduces the "
              "definitions of words and concepts.",
              "To deal with these within the limits of plain vanilla ASCII, I have done the following in this "
              "E-text.",
              "Where it is clear that the italics are to indicate the text is quoting, I have introduced quotation "
              "marks, and kept his capitals."]


@pytest.mark.parametrize("note", [
    # Leviathan's shape without its heading: prose, the paragraph naming the E-text, more prose
    "\n\n".join(NOTE_PROSE),
    # with its heading and credit (the credit paragraph alone was stripped, the rest kept)
    "TRANSCRIBER'S NOTES ON THE E-TEXT:\n\nThis E-text was prepared from the Pelican Classics edition.\n\n"
    + "\n\n".join(NOTE_PROSE),
    # an etext preparer's note, other spelling
    "A NOTE ON THIS ETEXT\n\nThe etext keeps the first edition's spelling; obvious misprints of the printer have "
    "been corrected without notice, and the Greek words are given in Latin letters.",
])
def test_transcriber_notes_of_several_paragraphs_go_whole(note):
    """Leviathan kept its transcriber's notes ("... I have done the following in this E-text." and the paragraphs
    around it): a note in the front matter goes with its whole section; the title page and the book stay."""
    raw = f"{TITLE_PAGE}\n\n\n{note}\n\n\n\n{BOOK}"
    body = strip_gutenberg(raw)
    assert "E-text" not in body and "etext" not in body and "Hobbes used capitals" not in body, body[:600]
    assert "quotation marks" not in body and "misprints" not in body
    assert body.startswith(TITLE_PAGE + "\n\n\n") and body.endswith(BOOK.strip("\n") + "\n")


def test_transcriber_note_heading_alone_takes_its_section_and_prose_stays():
    """A back-matter "TRANSCRIBER'S NOTES:" heading standing alone (2+ blank lines after it) takes the next section;
    "pretext" and "transcribers" in the book, and a note-like word deep inside it, are prose."""
    prose = "Under the pretext of care, the modern transcribers of old texts erred. " * 30
    raw = (f"{TITLE_PAGE}\n\n\n{prose}\n\n\n{BOOK}\n\nThe e-text of his letter was lost, he said.\n\n{BOOK}"
           "\n\n\nTRANSCRIBER'S NOTES:\n\n\n  Perceived typographical errors have been corrected.\n"
           "  Archaic spelling has been retained.\n")
    body = strip_gutenberg(raw)
    assert prose.strip() in body and "The e-text of his letter was lost" in body
    assert "TRANSCRIBER" not in body and "typographical" not in body and "Archaic" not in body
    assert body.endswith(BOOK.strip("\n") + "\n")


def test_leviathan_transcriber_notes_are_gone():
    path = shared_path("gutenberg/pg3207_leviathan.txt")
    body = strip_gutenberg(path.read_text(encoding="utf-8-sig").replace("\r\n", "\n"))
    for leftover in ("plain vanilla ASCII", "this E-text", "Hobbes used capitals", "sub-vocalization"):
        assert leftover not in body
    assert body.startswith("LEVIATHAN\n\nBy Thomas Hobbes") and "TO MY MOST HONOR’D FRIEND" in body
