"""CommonCrawl source (CCNet steps) on real WARC / WET captures: boilerplate line dedup, English kept."""

from __future__ import annotations

import gzip
import json
import re
import zlib
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


# ---- HTTP transfer / content codings (a WARC response record stores the body as the server sent it)

HEX_START = re.compile(r"^\s*[0-9a-fA-F]{1,8}(;[^\n]*)?\s")  # a chunk-size line, maybe glued to the title
ALL_WARCS = WARCS + ["commoncrawl/whirlwind/whirlwind.warc.gz"]


def _chunked(data: bytes, size: int = 7) -> bytes:
    """RFC 9112 chunked framing, written independently of the reader's decoder."""
    parts = [b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size]) for i in range(0, len(data), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


def _warc_response(url: str, headers: dict[str, str], body: bytes) -> bytes:
    http = b"HTTP/1.1 200 OK\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n" + body
    warc = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {url}\r\nWARC-Date: 2020-01-01T00:00:00Z\r\n"
            f"WARC-Record-ID: <urn:uuid:{abs(hash(url)):032x}>\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n").encode()
    return warc + http + b"\r\n\r\n"


def test_no_shared_warc_page_starts_with_a_chunk_header():
    """6 of the 37 shared pages are sent `Transfer-Encoding: chunked`: the hex size lines must not reach the text."""
    pages = 0
    for rel in ALL_WARCS:
        for doc in CCReader()(str(shared_path(rel)), Counter()):
            pages += 1
            assert not HEX_START.match(doc["text"]), f"{doc['meta']['url']}: {doc['text'][:40]!r}"
    assert pages == 22 + 15 + 1


def test_every_transfer_and_content_coding_is_decoded(tmp_path: Path):
    html = ("<html><body>" + "".join(f"<p>Paragraph number {i} says something about rivers and hills.</p>"
                                      for i in range(20)) + "</body></html>").encode()
    variants = {
        "plain": ({}, html),
        "chunked": ({"Transfer-Encoding": "chunked"}, _chunked(html)),
        "gzip": ({"Content-Encoding": "gzip"}, gzip.compress(html)),
        "deflate-zlib": ({"Content-Encoding": "deflate"}, zlib.compress(html)),
        "deflate-raw": ({"Content-Encoding": "deflate"}, _raw_deflate(html)),
        "gzip+chunked": ({"Content-Encoding": "gzip", "Transfer-Encoding": "chunked"},
                         _chunked(gzip.compress(html), 50)),
        "header-but-decoded": ({"Content-Encoding": "gzip"}, html),  # a crawler that stored the decoded body
    }
    path = tmp_path / "codings.warc.gz"
    path.write_bytes(gzip.compress(b"".join(
        _warc_response(f"http://example.com/{name}", {"Content-Type": "text/html", **h}, body)
        for name, (h, body) in variants.items())))
    drops: Counter = Counter()
    docs = {d["meta"]["url"].rsplit("/", 1)[1]: d["text"] for d in CCReader()(str(path), drops)}
    assert drops == Counter()
    assert set(docs) == set(variants)
    for name, text in docs.items():
        assert text == docs["plain"], name
        assert text.startswith("Paragraph number 0 says"), name


def test_out_of_range_options_are_one_error_line_with_or_without_models(tmp_path: Path):
    """Every commoncrawl option value is checked before anything runs, also when the LM/classifier steps are off
    (no --wikipedia / --models): `--dedup-group -1` used to end in an AssertionError traceback with OUT/_work left
    behind, and a bad `--keep-buckets`, `--classifier-threshold 1.5`, `--min-length -5`, `--lm-vocab 0` or
    `--cutoff-sample 0` ran to exit 0."""
    import subprocess
    import sys

    page = tmp_path / "pages.jsonl"
    page.write_text(json.dumps({"text": "An English page about rivers and the towns along them. " * 10}) + "\n")
    cases = [("--dedup-group", "-1"), ("--keep-buckets", "foo"), ("--classifier-threshold", "1.5"),
             ("--min-length", "-5"), ("--lm-vocab", "0"), ("--cutoff-sample", "0")]
    for flag, value in cases:
        out = tmp_path / f"out{flag}"
        r = subprocess.run([sys.executable, "-m", "llamaforge", "prepare", "commoncrawl", str(page), "--out", str(out),
                            "--no-progress", flag, value], capture_output=True, text=True)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (flag, r.returncode, r.stderr[-500:])
        assert len(lines) == 1 and lines[0].startswith(f"error: {flag}: expected"), (flag, r.stderr)
        assert not out.exists(), (flag, sorted(p.name for p in out.rglob("*")))


def test_wikipedia_and_models_together_are_refused(tmp_path: Path, capsys):
    """--wikipedia and --models name two sources of the CCNet LM and the reference classifier: which one is used
    is not left to guess (an existing --models folder used to win silently, an empty one to be trained into).
    One error line, exit 2, nothing written; also through the Python API (a flow's options)."""
    import pytest

    from llamaforge.cli import main
    from llamaforge.data.sources import commoncrawl
    from llamaforge.errors import UserError

    page, wiki, models = tmp_path / "pages.jsonl", tmp_path / "wiki.jsonl", tmp_path / "models"
    page.write_text(json.dumps({"text": "An English page about rivers and the towns along them. " * 10}) + "\n")
    wiki.write_text(json.dumps({"text": "Rivers are natural flowing watercourses. " * 10}) + "\n")
    models.mkdir()
    (models / "info.json").write_text("{}")
    out = tmp_path / "out"
    rc = main(["prepare", "commoncrawl", str(page), "--out", str(out), "--no-progress", "--wikipedia", str(wiki),
               "--models", str(models)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --wikipedia, --models: expected one"), err
    assert not out.exists()
    with pytest.raises(UserError, match="expected one of them"):
        commoncrawl.check([str(page)], wikipedia=[str(wiki)], models=str(models))
