"""StackExchange: each question with its answers, HTML stripped, answers sorted by score (high to low).

Inputs: Stack Exchange data-dump `Posts.xml` files, named `<site>-Posts.xml` or `<site>/Posts.xml` (one site a
shard). With `max_sites=N` only the N largest sites (by number of posts) are used; the paper took the 28 largest.
Document: `Q: <title>\n<question>\nA: <best answer>\nA: <next>...`. Scores are compared as integers (RedPajama
sorted the XML strings, so "9" came before "10"); ties keep the dump's order. A question with no answer is kept.

Each row of a dump is one line, so rows are parsed one by one: a broken row is counted (`bad_xml`) and skipped.
A site's questions and answers are held in memory while pairing them (one site at a time).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import lxml.html

from llamaforge.data.pipeline import Doc, Source
from llamaforge.data.readers import expand_inputs, iter_lines


def site_name(path: str) -> str:
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
        line = line.strip().lstrip("\ufeff")
        if not line.startswith("<row"):
            continue  # <?xml ...?>, <posts>, </posts>
        try:
            yield ET.fromstring(line).attrib
        except ET.ParseError:
            drops["bad_xml"] += 1


def count_posts(path: str) -> int:
    return sum(1 for line in iter_lines(path, Counter()) if line.lstrip().startswith("<row"))


class StackExchangeReader:
    def __call__(self, shard: str, drops: Counter) -> Iterator[Doc]:
        site = site_name(shard)
        questions: dict[str, dict[str, str]] = {}
        answers: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for row in iter_rows(shard, drops):
            try:
                score = int(row.get("Score", "0"))
            except ValueError:
                drops["bad_score"] += 1
                continue
            if row.get("PostTypeId") == "1":
                questions[row["Id"]] = row
            elif row.get("PostTypeId") == "2" and "ParentId" in row:
                answers[row["ParentId"]].append((score, row.get("Body", "")))
        for qid, q in questions.items():
            ranked = sorted(answers.get(qid, []), key=lambda a: -a[0])  # stable: ties keep dump order
            question = (q.get("Title", "") + "\n" + html_to_text(q.get("Body", ""))).strip()
            parts = ["Q: " + question] + ["A: " + html_to_text(body) for _, body in ranked]
            yield {"text": "\n".join(parts),
                   "meta": {"source": "stackexchange", "site": site, "url": f"https://{site}/questions/{qid}",
                            "question_score": int(q.get("Score", "0")),
                            "answer_scores": [s for s, _ in ranked]}}


def build(inputs: list[str], max_sites: int | None = None, **_) -> Source:
    shards = [s for s in expand_inputs(inputs, ("Posts.xml",)) if s.endswith("Posts.xml")]
    if max_sites:  # the N largest sites by number of posts, in input order
        largest = set(sorted(shards, key=count_posts, reverse=True)[:max_sites])
        shards = [s for s in shards if s in largest]
    return Source("stackexchange", shards, StackExchangeReader(), [])
