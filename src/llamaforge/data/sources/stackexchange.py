r"""StackExchange: each question with its answers, HTML stripped, answers sorted by score (high to low).

Inputs: Stack Exchange data-dump `Posts.xml` files, named `<site>-Posts.xml` or `<site>/Posts.xml` (one site a
shard). With `max_sites=N` only the N largest sites (by number of posts) are used; the paper took the 28 largest.
Document: `Q: <title>\n<question>\nA: <best answer>\nA: <next>...`. Scores are compared as integers (RedPajama
sorted the XML strings, so "9" came before "10"); ties keep the dump's order. A question with no answer is kept.

Each row of a dump is one line, so rows are parsed one by one: a broken row is counted (`bad_xml`) and skipped.
Pairing goes through a temporary SQLite file (answers indexed by question), so memory stays bounded even for
Stack Overflow's ~60M posts; the disk holds one site's posts at a time.
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import lxml.html

from llamaforge.data.pipeline import Doc, Source
from llamaforge.data.readers import XML, iter_lines, match_inputs, sniff_kind
from llamaforge.errors import UserError
from llamaforge.io import open_binary

BATCH = 10_000  # rows inserted at once


def site_name(path: str) -> str:
    """The site a Posts.xml belongs to: `SITE` of `SITE-Posts.xml`, else the name of its folder (`SITE/Posts.xml`)."""
    p = Path(path)
    if p.name.endswith("-Posts.xml"):
        return p.name[: -len("-Posts.xml")]
    return p.parent.name


def html_to_text(html: str) -> str:
    """Visible text of a post body; list items start a new line with "* " (as RedPajama did)."""
    if not html.strip():
        return ""
    root = lxml.html.fragment_fromstring(html, create_parent="div")
    for li in root.iter("li"):
        li.text = "\n* " + (li.text or "")
    return re.sub(r"\n{3,}", "\n\n", root.text_content()).strip()


def iter_rows(path: str, drops: Counter) -> Iterator[dict[str, str]]:
    """Attributes of each `<row .../>` of a Posts.xml, one line at a time."""
    for line in iter_lines(path, drops):
        line = line.strip().lstrip("\ufeff")  # the first line may carry a byte-order mark
        if not line.startswith("<row"):
            continue  # <?xml ...?>, <posts>, </posts>
        try:
            yield ET.fromstring(line).attrib
        except ET.ParseError:
            drops["bad_xml"] += 1


def count_posts(path: str) -> int:
    """The number of `<row` lines in a Posts.xml (a site's size, to keep the largest sites)."""
    return sum(1 for line in iter_lines(path, Counter()) if line.lstrip().startswith("<row"))


class StackExchangeReader:
    """Read one site's Posts.xml into a temporary SQLite table and yield one document per question: its title and body,
    then its answers by score, high to low (ties in dump order); malformed rows are counted as drops."""
    def __call__(self, shard: str, drops: Counter) -> Iterator[Doc]:
        site = site_name(shard)
        with tempfile.TemporaryDirectory(prefix="llamaforge-se-") as tmp:
            db = sqlite3.connect(os.path.join(tmp, "posts.db"))
            try:
                self._load(db, shard, drops)
                yield from self._pairs(db, site)
            finally:
                db.close()

    @staticmethod
    def _load(db: sqlite3.Connection, shard: str, drops: Counter) -> None:
        """Questions and answers into two tables, in dump order (`pos`), a batch of rows at a time."""
        db.execute("CREATE TABLE q (pos INTEGER PRIMARY KEY, id TEXT, title TEXT, body TEXT, score INTEGER)")
        db.execute("CREATE TABLE a (pos INTEGER PRIMARY KEY, parent TEXT, body TEXT, score INTEGER)")
        qs, ans = [], []
        for pos, row in enumerate(iter_rows(shard, drops)):
            try:
                score = int(row.get("Score", "0"))
            except ValueError:
                drops["bad_score"] += 1
                continue
            if row.get("PostTypeId") == "1":
                if not row.get("Id"):  # a question nothing can answer or link to
                    drops["missing_id"] += 1
                    continue
                qs.append((pos, row["Id"], row.get("Title", ""), row.get("Body", ""), score))
            elif row.get("PostTypeId") == "2" and "ParentId" in row:
                ans.append((pos, row["ParentId"], row.get("Body", ""), score))
            if len(qs) + len(ans) >= BATCH:
                db.executemany("INSERT INTO q VALUES (?, ?, ?, ?, ?)", qs)
                db.executemany("INSERT INTO a VALUES (?, ?, ?, ?)", ans)
                qs, ans = [], []
        db.executemany("INSERT INTO q VALUES (?, ?, ?, ?, ?)", qs)
        db.executemany("INSERT INTO a VALUES (?, ?, ?, ?)", ans)
        db.execute("CREATE INDEX a_by_parent ON a (parent, score DESC, pos)")

    @staticmethod
    def _pairs(db: sqlite3.Connection, site: str) -> Iterator[Doc]:
        for qid, title, body, score in db.cursor().execute("SELECT id, title, body, score FROM q ORDER BY pos"):
            # integer scores, high to low; ties keep the dump's order
            ranked = db.execute("SELECT score, body FROM a WHERE parent = ? ORDER BY score DESC, pos",
                                (qid,)).fetchall()
            question = (title + "\n" + html_to_text(body)).strip()
            parts = ["Q: " + question] + ["A: " + html_to_text(b) for _, b in ranked]
            yield {"text": "\n".join(parts),
                   "meta": {"source": "stackexchange", "site": site, "url": f"https://{site}/questions/{qid}",
                            "question_score": score, "answer_scores": [s for s, _ in ranked]}}


POSTS_PATTERNS = ("*-Posts.xml", "Posts.xml")  # `<site>-Posts.xml`, or `<site>/Posts.xml` as the dump's .7z unpacks
EXPECTED = ("a Stack Exchange dump's Posts.xml (a <posts> root of <row> elements; the site's .7z from archive.org "
            "unpacked), named <site>-Posts.xml or <site>/Posts.xml")


def check_is_posts(path: str) -> None:
    """Raise UserError unless the first 64 KiB of `path` (decompressed) hold the `<posts` root of a Posts.xml: a
    file given by name is taken whatever its name, and one of another kind (a book, Comments.xml, JSONL) was read
    as a dump without rows, 0 documents, exit 0."""
    kind = sniff_kind(path)
    if kind == XML:
        with open_binary(path) as f:
            if b"<posts" in f.read(1 << 16):
                return
        kind = "an XML file without a <posts> root"
    raise UserError(f"{path}: stackexchange: this is {kind or 'a text file'}; expected {EXPECTED}")


def build(inputs: list[str], max_sites: int | None = None) -> Source:
    """One shard per Posts.xml among `inputs` (files as given, folders searched for `POSTS_PATTERNS`). Raises
    UserError for a folder without one and for a file that is not a Posts.xml (`check_is_posts`)."""
    shards = match_inputs(inputs, POSTS_PATTERNS, what="Stack Exchange Posts.xml")
    for shard in shards:
        check_is_posts(shard)
    if max_sites:  # the N largest sites by number of posts, in input order
        largest = set(sorted(shards, key=count_posts, reverse=True)[:max_sites])
        shards = [s for s in shards if s in largest]
    return Source("stackexchange", shards, StackExchangeReader(), [])
