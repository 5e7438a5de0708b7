"""Pipeline framework: resume after a kill, malformed input, stats, local processes give identical output."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_path
from data_helpers import CC_SAMPLES, cc_input_shards, output_docs

from llamaforge.data import pipeline
from llamaforge.data.readers import iter_jsonl
from llamaforge.data.sources import prepare

KILLABLE_RUN = """
import os, signal, sys
from llamaforge.data import pipeline
from llamaforge.data.sources import build_source

seen = {"probe0": 0, "probe1": 0}

def probe(name):
    def step(doc):
        seen[name] += 1
        if seen[name] == int(os.environ.get("KILL_" + name, "0")):
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: like a lost machine
        return doc
    return step

src = build_source("c4", sys.argv[2:], langid="resiliparse")  # light model: four processes start
src.stages.insert(1, pipeline.MapStage("probe0", probe("probe0")))  # before the line dedup (segment 0)
src.stages.append(pipeline.MapStage("probe1", probe("probe1")))     # after it (segment 1)
pipeline.run(src, sys.argv[1], progress=False)
"""


def _outputs(out: Path) -> dict[str, list[str]]:
    """Decompressed output lines by file name."""
    res = {}
    for p in sorted(out.glob("*.jsonl.gz")):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            res[p.name] = f.read().splitlines()
    return res


def _run_script(script: Path, out: Path, inputs: list[str], **kill) -> int:
    env = {**os.environ, **{f"KILL_{k}": str(v) for k, v in kill.items()}}
    return subprocess.run([sys.executable, str(script), str(out), *inputs], env=env, timeout=300, check=False).returncode


def test_kill_and_rerun_loses_and_duplicates_nothing(tmp_path: Path):
    inputs = cc_input_shards(tmp_path / "in")
    assert len(inputs) >= 6
    script = tmp_path / "run.py"
    script.write_text(KILLABLE_RUN)

    clean_out = tmp_path / "clean"
    assert _run_script(script, clean_out, inputs) == 0
    expected = _outputs(clean_out)
    assert sum(len(v) for v in expected.values()) > 10

    out = tmp_path / "killed"
    assert _run_script(script, out, inputs, probe0=10) == -9  # killed in the middle of segment 0's third shard
    done0 = sorted((out / "_work" / "seg0").glob("*.done"))
    assert 0 < len(done0) < len(inputs)
    assert not (out / "stats.json").exists()
    assert _run_script(script, out, inputs, probe1=5) == -9  # resumed, then killed again in segment 1
    assert len(list((out / "_work" / "seg0").glob("*.done"))) == len(inputs)
    assert _run_script(script, out, inputs) == 0  # finishes

    got = _outputs(out)
    assert got == expected
    texts = [json.loads(line)["text"] for lines in got.values() for line in lines]
    assert len(texts) == len(set(texts)), "no document twice"
    assert json.loads((out / "stats.json").read_text())["stages"] == \
        json.loads((clean_out / "stats.json").read_text())["stages"]
    assert not list(out.rglob(".*.tmp-*")), "half-written files of the killed runs are cleaned up"


def test_malformed_input_is_counted_and_skipped(tmp_path: Path):
    good = shared_path(CC_SAMPLES[0]).read_bytes()
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(good[: len(good) * 2 // 3])
    lines = gzip.decompress(good).split(b"\n")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(b"\n".join([lines[0], b'{"text": "caf\xe9 broken utf-8"}', b'{"text": unquoted}',
                                  b'{"no_text": 1}', lines[1]]) + b"\n")
    stats = prepare("c4", [str(truncated), str(mixed)], str(tmp_path / "out"), progress=False)
    read = stats["stages"]["read"]
    assert read["drops"] == {"truncated_gzip": 1, "invalid_utf8": 1, "bad_json": 1, "missing_text": 1}
    full = len(gzip.decompress(good).splitlines())
    assert 0 < read["docs_out"] - 2 < full  # the records before the cut, plus the two good lines
    assert read["docs_in"] == read["docs_out"] + 4


def test_unpaired_surrogate_escape_is_counted_and_skipped(tmp_path: Path):
    src = tmp_path / "s.jsonl"  # "\ud800" alone is valid JSON but no UTF-8 text; "\ud83d\ude00" is an emoji
    src.write_text('{"text": "lone \\ud800 surrogate"}\n{"text": "a pair: \\ud83d\\ude00"}\n')
    source = pipeline.Source("s", [str(src)], iter_jsonl)
    stats = pipeline.run(source, tmp_path / "out", progress=False)
    assert stats["stages"]["read"]["drops"] == {"invalid_utf8": 1}
    assert [d["text"] for d in output_docs(tmp_path / "out")] == ["a pair: \U0001f600"]


def test_stats_and_table(tmp_path: Path):
    inputs = cc_input_shards(tmp_path / "in", per_shard=10)
    stats = prepare("c4", inputs, str(tmp_path / "out"), progress=False)
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == json.loads(json.dumps(stats))
    names = list(stats["stages"])
    assert names == ["read", "c4_rules", "langid", "line_dedup", "sentences_after_dedup"]
    for a, b in itertools.pairwise(names):  # what leaves one stage enters the next
        assert stats["stages"][a]["docs_out"] == stats["stages"][b]["docs_in"]
        assert stats["stages"][a]["bytes_out"] == stats["stages"][b]["bytes_in"]
    for s in stats["stages"].values():
        assert s["docs_in"] - s["docs_out"] == sum(s["drops"].values())
    n_out = sum(len(v) for v in _outputs(tmp_path / "out").values())
    assert n_out == stats["stages"]["sentences_after_dedup"]["docs_out"]
    table = pipeline.format_stats_table(stats)
    assert "c4_rules" in table and "too_few_sentences" in table


def test_worker_processes_match_single_process(tmp_path: Path):
    inputs = cc_input_shards(tmp_path / "in")
    prepare("c4", inputs, str(tmp_path / "one"), workers=1, progress=False)
    prepare("c4", inputs, str(tmp_path / "two"), workers=2, progress=False)
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").glob("*.jsonl.gz")}
    two = {p.name: p.read_bytes() for p in (tmp_path / "two").glob("*.jsonl.gz")}
    assert one == two and len(one) == len(inputs)  # byte-identical gzip files


def test_changed_inputs_refuse_to_resume(tmp_path: Path):
    inputs = cc_input_shards(tmp_path / "in")
    prepare("c4", inputs[:2], str(tmp_path / "out"), progress=False)
    with pytest.raises(pipeline.UserError, match="other inputs"):
        prepare("c4", inputs[:3], str(tmp_path / "out"), progress=False)
    prepare("c4", inputs[:3], str(tmp_path / "out"), progress=False, overwrite=True)


def test_cli_prepare(tmp_path: Path, capsys):
    from llamaforge.cli import main

    posts = shared_path("stackexchange/beer.stackexchange.com-Posts.xml")
    assert main(["prepare", "stackexchange", str(posts), "--out", str(tmp_path / "se"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "docs in" in printed and "wrote 1 shards" in printed
    assert (tmp_path / "se" / "stackexchange-00000.jsonl.gz").exists()
    assert main(["prepare", "books", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "b")]) == 2
    assert "missing.txt: no such file or folder" in capsys.readouterr().err


def test_changed_settings_refuse_to_resume(tmp_path: Path):
    inputs = cc_input_shards(tmp_path / "in")[:2]
    prepare("c4", inputs, str(tmp_path / "out"), progress=False)
    with pytest.raises(pipeline.UserError, match="other inputs or stages"):
        prepare("c4", inputs, str(tmp_path / "out"), lang_threshold=0.5, progress=False)


def test_resumed_run_says_which_shards_were_skipped(tmp_path: Path):
    inputs = cc_input_shards(tmp_path / "in")
    first = prepare("c4", inputs, str(tmp_path / "out"), progress=False, keep_work=True)
    assert first["resumed"]["tasks_skipped"] == 0
    assert "resumed:" not in pipeline.format_stats_table(first)
    # a run killed after its first two shards of segment 0: their markers stay, everything else is redone
    work = tmp_path / "out" / "_work"
    for seg_dir in sorted(work.glob("seg*")):
        for marker in sorted(seg_dir.glob("*.done")):
            if seg_dir.name != "seg0" or marker.name not in ("00000.done", "00001.done"):
                marker.unlink()
    for resolved in work.glob("group*/resolved.done"):
        resolved.unlink()
    again = prepare("c4", inputs, str(tmp_path / "out"), progress=False)
    assert again["resumed"]["tasks_skipped"] == 2
    assert again["resumed"]["shards"] == inputs[:2]
    assert again["resumed"]["by_segment"]["0"] == [0, 1]
    assert again["stages"] == first["stages"]
    table = pipeline.format_stats_table(again)
    assert "resumed: 2 of" in table and Path(inputs[0]).name in table and Path(inputs[2]).name not in table


def test_dropped_documents_and_removed_lines_are_sampled(tmp_path: Path):
    inputs = cc_input_shards(tmp_path / "in")
    # without the bad-words filter, which would drop the pages whose lines repeat before line dedup sees them
    stats = prepare("c4", inputs, str(tmp_path / "out"), progress=False, keep_dropped=2, badwords="none")
    root = tmp_path / "out" / "dropped"
    expected = {}
    for stage, s in stats["stages"].items():
        for reason, n in s["drops"].items():
            if stage != "read":
                expected.setdefault(stage, {})[reason] = min(n, 2)
    assert expected, "the sample run drops something"
    for stage, reasons in expected.items():
        for reason, n in reasons.items():
            recs = [json.loads(x) for x in (root / stage / f"{reason}.jsonl").read_text().splitlines()]
            assert len(recs) == n and all(r["stage"] == stage and r["reason"] == reason for r in recs)
            assert all(r["text"] for r in recs)
    removed = [json.loads(x) for x in (root / "line_dedup" / "removed_lines.jsonl").read_text().splitlines()]
    assert len(removed) == 2 and all("\n" not in r["text"] for r in removed)
    assert stats["dropped"]["line_dedup"]["removed_lines"] == 2
    assert "dropped/STAGE/REASON.jsonl" in pipeline.format_stats_table(stats)
    # C4's line dedup keeps a line's first copy only: each sampled line is in the output once at most
    out_lines = [line for d in output_docs(tmp_path / "out") for line in d["text"].split("\n")]
    assert all(out_lines.count(r["text"]) <= 1 for r in removed)
    prepare("c4", inputs, str(tmp_path / "none"), progress=False, keep_dropped=0)
    assert not (tmp_path / "none" / "dropped").exists()


def test_dropped_samples_are_merged_through_the_one_jsonl_reader(tmp_path: Path):
    """`_merge_dropped` reads the tasks' dropped.jsonl with `io.read_jsonl`: records come back as written, a blank
    line is no record, and a damaged file is one UserError naming FILE:LINE (a JSONDecodeError traceback before)."""
    from types import SimpleNamespace

    from llamaforge.errors import UserError

    plan = SimpleNamespace(segments=[[]], out=tmp_path / "out",
                           task_file=lambda seg, i, suffix: tmp_path / f"seg{seg}-{i:05d}.{suffix}")
    recs = [{"stage": "langid", "reason": "not_en", "text": f"é {i}"} for i in range(3)]
    plan.task_file(0, 0, "dropped.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs[:2]) + "\n", encoding="utf-8")
    plan.task_file(0, 1, "dropped.jsonl").write_text(json.dumps(recs[2], ensure_ascii=False) + "\n", encoding="utf-8")
    assert pipeline._merge_dropped(plan, [0, 1], 5) == {"langid": {"not_en": 3}}
    merged = (plan.out / pipeline.DROPPED / "langid" / "not_en.jsonl").read_text(encoding="utf-8")
    assert merged == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    plan.task_file(0, 1, "dropped.jsonl").write_text('{"stage": "langid", "rea', encoding="utf-8")
    with pytest.raises(UserError, match=r"00001\.dropped\.jsonl:1: not valid JSON"):
        pipeline._merge_dropped(plan, [0, 1], 5)


def test_every_file_a_task_marker_vouches_for_is_fsynced_first(tmp_path: Path, monkeypatch):
    """A `.done` marker is read as "this task's files are all there": each file of the task that holds records
    (its output shard, its group summary, its dropped-document samples) must be durable (fsynced) before the
    marker is written, or a machine crash can leave a marker beside an empty or cut samples file (never redone;
    a cut one ends the next run at `_merge_dropped`). Only the marker itself may be lost (its task then reruns)."""
    from llamaforge import io as lf_io

    synced, order = set(), []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        tmp = Path(os.readlink(f"/proc/self/fd/{fd}"))  # FOLDER/.NAME.tmp-PID-XXXX
        synced.add(tmp.parent / tmp.name[1:].split(".tmp-")[0])
        return real_fsync(fd)

    def replace(src, dst):
        order.append((Path(dst), set(synced)))
        return real_replace(src, dst)

    monkeypatch.setattr(lf_io.os, "fsync", fsync)
    monkeypatch.setattr(lf_io.os, "replace", replace)
    inputs = cc_input_shards(tmp_path / "in")
    prepare("c4", inputs, str(tmp_path / "out"), progress=False, keep_dropped=2, badwords="none")
    markers = [(dst, seen) for dst, seen in order if dst.name.endswith(".done")]
    assert markers
    for marker, synced_before in markers:
        task = marker.name[: -len(".done")]  # NNNNN
        for f in marker.parent.glob(f"{task}.*"):
            if f != marker and f.stat().st_size > 0:
                assert f in synced_before, f"{f} was not fsynced before {marker.name}"
