"""One bad record never ends a data run (issue #18 item 5), size limits on decompression and macro expansion, and
workers that die with their parent (item 7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

from data_helpers import run_source

from llamaforge.data import pipeline
from llamaforge.data.pipeline import StageStats

PAPER = "\\section{Intro}\nA plain paper about $x$.\n"


def _paper(root: Path, name: str, tex: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "main.tex").write_text(tex)


def test_stackexchange_row_without_id_is_dropped_and_the_run_goes_on(tmp_path):
    posts = tmp_path / "x.example.com-Posts.xml"
    posts.write_text('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n'
                     '  <row PostTypeId="1" Score="1" Title="no id" Body="q" />\n'
                     '  <row Id="2" PostTypeId="1" Score="1" Title="t" Body="&lt;p&gt;q&lt;/p&gt;" />\n'
                     '  <row Id="3" PostTypeId="2" ParentId="2" Score="4" Body="a" />\n</posts>\n')
    stats, docs = run_source("stackexchange", [posts], tmp_path / "out")
    assert [d["meta"]["url"] for d in docs] == ["https://x.example.com/questions/2"]
    assert stats["stages"]["read"]["drops"] == {"missing_id": 1}


def test_exponential_latex_macros_are_dropped_with_a_reason(tmp_path):
    # \a0 is 16 copies of \a1, ... : 16^3 x 256 = 1M x the input after three rounds (a MemoryError before)
    macros = "".join("\\newcommand{\\m" + chr(97 + i) + "}{" + (" \\m" + chr(98 + i)) * 16 + "}\n" for i in range(6))
    bomb = macros + "\\section{Boom}\n" + "\\ma " * 256 + "\n"
    assert len(bomb) < 6000
    _paper(tmp_path / "in", "2101.00001", bomb)
    _paper(tmp_path / "in", "2101.00002", PAPER)
    start = time.monotonic()
    stats, docs = run_source("arxiv", [tmp_path / "in"], tmp_path / "out")
    assert time.monotonic() - start < 30
    assert [d["meta"]["arxiv_id"] for d in docs] == ["2101.00002"]
    assert stats["stages"]["latex_clean"]["drops"] == {"macro_expansion_too_large": 1}


def _gzip_bomb(path: Path, mib: int) -> None:
    """A gzipped "paper": a LaTeX section line, then `mib` MiB of spaces, written in chunks (about mib KB on disk).
    (It starts as LaTeX so that `prepare arxiv` takes it as a paper: a file of zeros is refused as binary.)"""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b" " * (1 << 20)
    with open(path, "wb") as f:
        f.write(comp.compress(b"\\section{Boom}\n"))
        for _ in range(mib):
            f.write(comp.compress(chunk))
        f.write(comp.flush())


def test_gzip_bomb_given_to_prepare_arxiv_is_dropped_in_bounded_memory(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _gzip_bomb(inputs / "2101.00003.gz", 1024)  # 1 GiB of spaces in ~1 MB
    assert (inputs / "2101.00003.gz").stat().st_size < 2 << 20
    _paper(inputs, "2101.00002", PAPER)
    code = ("import json, sys\nfrom llamaforge.data.sources import prepare\n"
            f"s = prepare('arxiv', [{str(inputs / '2101.00003.gz')!r}, {str(inputs / '2101.00002')!r}], "
            f"{str(tmp_path / 'out')!r}, progress=False)\nprint(json.dumps(s['stages']['read']['drops']))\n")
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert '"too_large": 1' in out, out
    assert usage.ru_maxrss / 1024 < 1024, usage.ru_maxrss  # MiB: far below the bomb's 1 GiB (was 2.3 GB)
    assert time.monotonic() - start < 60


def test_document_above_the_maximum_is_dropped_not_processed(tmp_path):
    _paper(tmp_path / "in", "2101.00004", PAPER + "word " * 2000)
    _paper(tmp_path / "in", "2101.00002", PAPER)
    stats, docs = run_source("arxiv", [tmp_path / "in"], tmp_path / "out", max_doc_bytes=5000)
    assert [d["meta"]["arxiv_id"] for d in docs] == ["2101.00002"]
    assert stats["stages"]["read"]["drops"] == {"too_large": 1}


def test_a_stage_that_fails_on_one_document_drops_it_with_the_reason():
    def stage(doc):
        if doc["text"] == "key":
            return {}["Id"]
        if doc["text"] == "mem":
            raise MemoryError()
        return doc

    stats = StageStats()
    docs = [{"text": t, "meta": {}} for t in ("a", "key", "b", "mem", "c")]
    kept = list(pipeline._counted(iter(docs), stats, stage))
    assert [d["text"] for d in kept] == ["a", "b", "c"]
    assert stats.drops == Counter({"error: KeyError": 1, "error: MemoryError": 1})


def test_workers_die_with_the_parent(tmp_path):
    """The pool that `prepare --workers N` uses: SIGKILL its parent, and no worker lives on."""
    code = ("import os, sys, time\nfrom concurrent.futures import ProcessPoolExecutor\n"
            "from llamaforge.data.pipeline import die_with_parent\n"
            "pool = ProcessPoolExecutor(2, initializer=die_with_parent, initargs=(os.getpid(),))\n"
            "futures = [pool.submit(time.sleep, 300) for _ in range(2)]\n"
            "time.sleep(1)\nprint(' '.join(str(p) for p in pool._processes), flush=True)\ntime.sleep(300)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert len(workers) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in workers if Path(f"/proc/{p}").exists() and
                 Path(f"/proc/{p}/stat").read_text().split()[2] != "Z"]
    assert alive == []
