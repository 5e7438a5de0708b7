"""StackExchange source on the real beer.stackexchange.com dump: Q/A pairing, HTML stripped, numeric score order."""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from conftest import shared_path
from data_helpers import run_source

from llamaforge.data.sources.stackexchange import html_to_text

TAG = re.compile(r"</?(?:p|a|em|strong|code|pre|ul|ol|li|blockquote|br|img|h\d|hr|div|span)\b[^>]*>", re.IGNORECASE)


def test_stackexchange_beer(tmp_path: Path):
    posts = shared_path("stackexchange/beer.stackexchange.com-Posts.xml")
    small = tmp_path / "tiny.example.com-Posts.xml"  # a smaller site, dropped by max_sites=1
    small.write_text('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n  <row Id="1" PostTypeId="1" Score="1" '
                     'Title="t" Body="&lt;p&gt;q&lt;/p&gt;" />\n</posts>\n')
    stats, docs = run_source("stackexchange", [posts, small], tmp_path / "out", max_sites=1)
    assert stats["inputs"] == [str(posts)]

    # independent reading of the dump: every answer's score, by question
    root = ET.parse(posts).getroot()
    rows = [r.attrib for r in root.iter("row")]
    questions = [r for r in rows if r["PostTypeId"] == "1"]
    answers: dict[str, list[int]] = {}
    for r in rows:
        if r["PostTypeId"] == "2":
            answers.setdefault(r["ParentId"], []).append(int(r["Score"]))
    assert len(docs) == len(questions)

    by_url = {d["meta"]["url"]: d for d in docs}
    n_checked = 0
    for q in questions:
        d = by_url[f"https://beer.stackexchange.com/questions/{q['Id']}"]
        scores = d["meta"]["answer_scores"]
        assert scores == sorted(answers.get(q["Id"], []), reverse=True)  # numeric, high to low
        assert d["text"].startswith("Q: " + html.unescape(q["Title"]))
        assert d["text"].count("\nA: ") >= len(scores)
        assert not TAG.search(d["text"]), d["text"][:300]
        n_checked += len(scores) > 1 and any(s >= 10 for s in scores) and any(s < 10 for s in scores)
    assert n_checked > 0, "the sample must contain scores that sort differently as strings"


def test_answers_text_in_score_order_and_html():
    assert html_to_text("<p>a <b>bold</b> move</p><ul><li>one</li><li>two</li></ul>") == "a bold move\n* one\n* two"


def test_broken_row_is_counted_and_skipped(tmp_path: Path):
    posts = tmp_path / "x.example.com-Posts.xml"
    posts.write_text('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n'
                     '  <row Id="1" PostTypeId="1" Score="3" Title="Good?" Body="&lt;p&gt;Yes&lt;/p&gt;" />\n'
                     '  <row Id="2" PostTypeId="2" ParentId="1" Score="9" Body="&lt;p&gt;nine&lt;/p&gt;" />\n'
                     '  <row Id="3" PostTypeId="2" ParentId="1" Score="10" Body="&lt;p&gt;broken" <<< />\n'
                     '  <row Id="4" PostTypeId="2" ParentId="1" Score="10" Body="&lt;p&gt;ten&lt;/p&gt;" />\n'
                     '</posts>\n')
    stats, (doc,) = run_source("stackexchange", [posts], tmp_path / "out")
    assert stats["stages"]["read"]["drops"] == {"bad_xml": 1}
    assert doc["text"] == "Q: Good?\nYes\nA: ten\nA: nine"
