"""Every `prepare` source given a file of a kind it cannot read refuses it in one line naming the file and what was
expected, exit 2, nothing written (a `.txt` book given to c4 was read as 2803 lines of bad JSON and "prepared" into
an empty shard, exit 0; a WAT given to commoncrawl, a book given to arxiv, a JSONL given to stackexchange: the
same). Table-driven: sources x small synthetic files of each kind; the kinds a source does read still pass."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile

import pytest

from conftest import shared_path
from llamaforge import cli
from llamaforge.data.sources import SOURCES, build_source

TEXT = "The quick brown fox jumps over the lazy dog. " * 30


def _warc_record(kind: str, body: bytes, extra: str = "") -> bytes:
    head = (f"WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Target-URI: http://example.com/\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body + b"\r\n\r\n"


def _warc(*types: str) -> bytes:
    bodies = {"warcinfo": b"software: test\r\n", "request": b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
              "response": b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html><p>" + TEXT.encode() + b"</p>",
              "conversion": TEXT.encode(), "metadata": json.dumps({"Envelope": {}}).encode()}
    return b"".join(_warc_record(t, bodies[t]) for t in types)


def _tar_gz() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = KINDS["latex"][1]()
        info = tarfile.TarInfo("main.tex")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.py", "print(1)\n")
    return buf.getvalue()


# kind -> (file name, contents)
KINDS = {
    "jsonl": ("doc.jsonl", lambda: "".join(json.dumps({"text": f"{i} {TEXT}"}) + "\n" for i in range(3)).encode()),
    "jsonl_gz": ("doc.jsonl.gz", lambda: gzip.compress(KINDS["jsonl"][1]())),
    "text": ("book.txt", lambda: ("CHAPTER I.\n\n" + TEXT + "\n\n[Illustration]\n\n" + TEXT).encode()),
    "warc": ("crawl.warc.gz", lambda: gzip.compress(_warc("warcinfo", "request", "response"))),
    "wet": ("crawl.warc.wet.gz", lambda: gzip.compress(_warc("warcinfo", "conversion"))),
    "wat": ("crawl.warc.wat.gz", lambda: gzip.compress(_warc("warcinfo", "metadata"))),
    "posts": ("site-Posts.xml", lambda: b'<?xml version="1.0" encoding="utf-8"?>\n<posts>\n  <row Id="1" '
                                        b'PostTypeId="1" Score="1" Title="Q" Body="&lt;p&gt;Why?&lt;/p&gt;" />\n</posts>\n'),
    "mediawiki": ("enwiki-pages-articles.xml",
                  lambda: b'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">\n<siteinfo><dbname>enwiki'
                          b'</dbname></siteinfo>\n<page><title>Fox</title><ns>0</ns><id>1</id><revision><text>'
                          + TEXT.encode() + b"</text></revision></page>\n</mediawiki>\n"),
    "html": ("page.html", lambda: b"<!DOCTYPE html>\n<html><body><p>" + TEXT.encode() + b"</p></body></html>\n"),
    "latex": ("paper.tex", lambda: ("\\documentclass{article}\n\\begin{document}\n\\section{Intro}\n" + TEXT
                                    + "\n\\end{document}\n").encode()),
    "tar_gz": ("paper.tar.gz", _tar_gz),
    "zip": ("repo.zip", _zip),
    "binary": ("model.bin", lambda: bytes(range(256)) * 8),
    "json_array": ("docs.json", lambda: json.dumps([{"text": TEXT}]).encode()),
    "json_pretty": ("doc.json", lambda: json.dumps({"text": TEXT}, indent=2).encode()),
    "jsonl_as_txt": ("docs.txt", lambda: KINDS["jsonl"][1]()),  # JSON lines under a text name
    "folder": ("repo", None),  # a repository folder: LICENSE + one Python file
}

# what each source reads; every other kind is refused
READS = {
    "c4": {"jsonl", "jsonl_gz", "jsonl_as_txt", "warc", "wet"},  # JSON lines by content, whatever the name
    "commoncrawl": {"jsonl", "jsonl_gz", "jsonl_as_txt", "warc", "wet"},
    "github": {"jsonl", "jsonl_gz", "jsonl_as_txt", "folder"},
    "stackexchange": {"posts"},
    "wikipedia": {"mediawiki"},
    "books": {"text", "jsonl", "jsonl_gz"},
    "arxiv": {"latex", "tar_gz"},
}


def test_the_table_covers_every_source():
    assert set(READS) == set(SOURCES)


def _make(tmp_path, kind: str):
    name, contents = KINDS[kind]
    path = tmp_path / "in" / name
    path.parent.mkdir(exist_ok=True)
    if contents is None:
        path.mkdir()
        (path / "LICENSE").write_text("MIT License\n\nPermission is hereby granted, free of charge, ...\n")
        (path / "a.py").write_text("def add_one(x):\n    return x + 1\n" * 5)
    else:
        path.write_bytes(contents())
    return path


@pytest.mark.parametrize("source, kind", [(s, k) for s in SOURCES for k in KINDS if k not in READS[s]])
def test_prepare_refuses_a_file_of_another_kind(tmp_path, capsys, source, kind):
    path = _make(tmp_path, kind)
    out = tmp_path / "out"
    capsys.readouterr()
    rc = cli.main(["prepare", source, str(path), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, (rc, err)
    assert err[0].startswith(f"error: {path}: "), err
    assert "expected" in err[0] or "looked for names matching" in err[0], err  # what the source reads
    if source != "wikipedia":  # wikipedia's line says "expected a MediaWiki XML dump", which names it
        assert f"{source}:" in err[0] or "Stack Exchange" in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("source, kind", [(s, k) for s in SOURCES for k in sorted(READS[s])])
def test_prepare_sources_still_take_their_own_kinds(tmp_path, source, kind):
    path = _make(tmp_path, kind)
    assert build_source(source, [str(path)]).shards == [str(path)]


def test_the_shared_wat_file_is_refused_by_the_crawl_sources(tmp_path, capsys):
    """Common Crawl's WAT (metadata records) given to commoncrawl or c4 gave 0 documents, exit 0."""
    wat = shared_path("commoncrawl/whirlwind/whirlwind.warc.wat.gz")
    for source in ("commoncrawl", "c4"):
        capsys.readouterr()
        assert cli.main(["prepare", source, str(wat), "--out", str(tmp_path / source), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {wat}: {source}: this is a WAT file"), err
        assert not (tmp_path / source).exists()


def test_a_warc_without_a_warc_name_is_read_as_warc(tmp_path):
    """The crawl readers routed by `.warc` in the name, so a WARC named `crawl.gz` was read as bad JSON lines."""
    from collections import Counter

    from llamaforge.data.sources.commoncrawl import CCReader

    path = tmp_path / "crawl.gz"
    path.write_bytes(gzip.compress(_warc("warcinfo", "conversion")))
    src = build_source("c4", [str(path)])
    drops = Counter()
    docs = list(CCReader()(src.shards[0], drops))
    assert len(docs) == 1 and docs[0]["text"].startswith("The quick brown fox") and not drops


def test_a_file_that_is_not_the_compression_its_name_says_is_one_line(tmp_path, capsys):
    path = tmp_path / "book.txt.bz2"
    path.write_bytes(b"this was never bzip2\n" * 10)
    capsys.readouterr()
    assert cli.main(["prepare", "books", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: cannot be decompressed"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85"])
def test_a_dropped_document_with_a_unicode_line_break_is_sampled(tmp_path, capsys, char):
    """A dropped page holding U+2028 (common in web text) was written raw into its task's sample file, which the
    merge cut in two with `str.splitlines`: `prepare` ended in a JSONDecodeError traceback after the whole run
    (fixed on main by reading it with `io.read_jsonl`; this is the end-to-end check)."""
    from llamaforge.io import read_jsonl

    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"text": f"too short{char}for commoncrawl"}) + "\n")
    out = tmp_path / "out"
    assert cli.main(["prepare", "commoncrawl", str(path), "--out", str(out), "--no-progress"]) == 0
    (sample,) = (out / "dropped" / "min_length").iterdir()
    assert [rec["text"] for _, rec in read_jsonl(sample)] == [f"too short{char}for commoncrawl"]


@pytest.mark.parametrize("start", ["[1] A footnote first.", "[Illustration]", "{Sic} a brace", "\\ a backslash"])
def test_books_that_start_like_another_kind_are_still_books(tmp_path, start):
    path = tmp_path / "book.txt"
    path.write_text(f"{start}\n\n{TEXT}\n")
    assert build_source("books", [str(path)]).shards == [str(path)]


@pytest.mark.parametrize("source", ["c4", "commoncrawl", "github", "books"])
def test_a_jsonl_gz_cut_short_is_still_taken_as_json_lines(tmp_path, capsys, source):
    """A partly downloaded .jsonl.gz (its gzip stream ends early, inside the 64 KiB the kind is told from) was
    refused as "a text file, not JSON lines"; it is JSON lines up to the cut, and the reader keeps its complete
    records (as before the kind check)."""
    path = tmp_path / "doc.jsonl.gz"
    path.write_bytes(gzip.compress(KINDS["jsonl"][1]() * 4)[:-40])  # cut inside the deflate stream
    with pytest.raises(EOFError):
        gzip.decompress(path.read_bytes())
    assert build_source(source, [str(path)]).shards == [str(path)]


def test_a_utf16_book_is_refused_as_utf16_not_as_binary(tmp_path, capsys):
    """Only UTF-8 text is read (README); a UTF-16 book (Windows Notepad's "Unicode") has NUL bytes and was refused
    as "a binary file", which sends the user looking for the wrong mistake."""
    path = tmp_path / "book.txt"
    path.write_bytes(("CHAPTER I.\n\n" + TEXT).encode("utf-16"))
    capsys.readouterr()
    assert cli.main(["prepare", "books", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: books: this is UTF-16 text (only UTF-8"), err
    assert not (tmp_path / "out").exists()
