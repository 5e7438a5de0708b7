"""CommonCrawl source (CCNet steps) on real WARC / WET captures: boilerplate line dedup, English kept."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from conftest import shared_path
from data_helpers import run_source

from llamaforge.data.filters.dedup import normalize_for_dedup
from llamaforge.data.sources.commoncrawl import CCReader

WARCS = ["commoncrawl/dolma-tests/warc_sample-0000.warc.gz", "commoncrawl/dolma-tests/warc_sample-0001.warc.gz"]
WET = "commoncrawl/whirlwind/whirlwind.warc.wet.gz"


def test_commoncrawl_ccnet_steps(tmp_path: Path):
    inputs = [str(shared_path(p)) for p in WARCS + [WET]]
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "A page that is far too short to keep.", "url": "http://short/"}) + "\n")
    inputs.append(str(short))

    # what the reader sees, counted line by line independently of the dedup code
    counts: Counter = Counter()
    for shard in inputs:
        for doc in CCReader()(shard, Counter()):
            if len(doc["text"]) >= 300:
                counts.update(normalize_for_dedup(line) for line in doc["text"].split("\n"))
    boilerplate = {line for line, n in counts.items() if n >= 5 and line}
    assert boilerplate, "the WARC sample shares navigation lines across pages"

    stats, docs = run_source("commoncrawl", inputs, tmp_path / "out")
    st = stats["stages"]
    assert st["read"]["docs_out"] == 22 + 15 + 1 + 1
    assert st["min_length"]["drops"] == {"too_short": 1}
    assert st["langid"]["drops"].get("language", 0) >= 1  # the Aragonese Wikipedia page
    assert not any("an.wikipedia.org" in (d["meta"].get("url") or "") for d in docs)
    assert len(docs) >= 20
    for d in docs:
        assert d["meta"]["language"] == "en" and d["meta"]["language_score"] >= 0.5
        assert d["meta"]["url"].startswith("http")
        for line in d["text"].split("\n"):
            assert counts[normalize_for_dedup(line)] == 1, f"a repeated line survived: {line!r}"
    # and lines seen once survive (CCNet removes repeated lines only)
    kept = sum(len(d["text"].split("\n")) for d in docs)
    assert kept > 100


def test_truncated_warc_keeps_earlier_records(tmp_path: Path):
    data = shared_path(WARCS[0]).read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(data[: len(data) // 2])
    drops: Counter = Counter()
    docs = list(CCReader()(str(cut), drops))
    assert drops == {"truncated_gzip": 1}
    assert 0 < len(docs) < 22
