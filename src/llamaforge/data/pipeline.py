"""Stages over shards: read -> filter -> dedup -> write, on local processes or on Ray.

A document is a dict `{"text": str, "meta": dict}`. A `Source` names its input shards (files or folders, in a
fixed order), a reader that turns one shard into documents, and a list of stages:

- a `Stage` looks at one document at a time and returns it (possibly changed) or a drop reason (a short string);
- a `GroupStage` needs every shard before it can decide (dedup, percentiles). It runs in three phases, like CCNet's
  `hashes` -> `mine`: while a shard streams through, `observe` gathers a small numpy summary (hashes, signatures);
  the driver then calls `resolve` once on all summaries and saves one decision per shard; a later pass `apply`s it.

Group stages cut the stage list into segments. Segment k is one task per shard: read its input (the raw shard for
k = 0, else the previous segment's output), apply the pending group decision, run the per-document stages, observe
for the next group stage, write. Tasks stream documents, so memory is bounded by one document plus the summaries.

Every file is written under a temporary name and renamed; a task ends by writing a `.done` marker holding its
stats, so a rerun skips finished tasks and a killed run resumes where it stopped. Files that hold documents,
dropped-document samples or summaries are fsynced at their rename, before the marker; markers are not (a marker a
machine crash empties just reruns its task), and a group's decision files get one `os.sync` before its marker. Per-stage counts (documents and bytes in and
out, drops by reason) are merged into `OUT/stats.json` and printed as a table.

Executors: `local` (the calling process when workers == 1, else a process pool) and `ray` (each task is a Ray
task; Ray does the scheduling). Both run the same `run_task`, so their outputs are byte-identical.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from llamaforge.errors import UserError
from llamaforge.io import atomic_file, make_dir, read_jsonl

Doc = dict[str, Any]
Result = Doc | str  # a kept (maybe changed) document, or the reason it was dropped
Reader = Callable[[str, Counter], Iterator[Doc]]  # (shard, drops) -> documents; malformed records go to drops

WORK = "_work"  # intermediate shards, summaries, decisions, markers and per-task stats live here


class Stage:
    """A per-document step. Subclasses set `name` and implement `__call__`; `setup` loads models in the worker.
    A stage whose model is cheaper per document on many documents at once (datatrove's `filter_batch`) also sets
    `batch_size` > 0 and implements `batch(docs) -> [result per doc]`, equal to `[self(d) for d in docs]`."""

    name = "stage"
    batch_size = 0

    def setup(self) -> None:
        """Load what the stage needs (models, tables) in the worker process, once, before its first document; nothing by
        default."""
        pass

    def __call__(self, doc: Doc) -> Result:
        raise NotImplementedError


class GroupStage:
    """A cross-shard step: observe each shard -> resolve once over all shards -> apply one decision per shard."""

    name = "group"

    def setup(self) -> None:
        """Load what the stage needs in the worker process, before `observe`; nothing by default."""
        pass

    def observe(self, index: int, doc: Doc) -> None:
        """See document `index` of the shard being written (called in the worker, in document order)."""
        raise NotImplementedError

    def summary(self) -> dict[str, np.ndarray]:
        """What `observe` gathered for this shard, as numpy arrays; then reset for the next shard."""
        raise NotImplementedError

    def resolve(self, summaries: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """All shards' summaries, in shard order -> one decision per shard (called once, in the driver)."""
        raise NotImplementedError

    def apply(self, index: int, doc: Doc, decision: dict[str, np.ndarray]) -> Result:
        """Document `index` of a shard given that shard's decision from `resolve`: the document (maybe changed) or the
        reason it is dropped."""
        raise NotImplementedError


class MapStage(Stage):
    """Wrap a plain function `doc -> doc | reason` as a stage (handy for the Python API and for tests)."""

    def __init__(self, name: str, fn: Callable[[Doc], Result]):
        self.name, self.fn = name, fn

    def __call__(self, doc: Doc) -> Result:
        return self.fn(doc)


@dataclass
class Source:
    """What `prepare` runs: named input shards in order, a reader for one shard, and the stages."""

    name: str
    shards: list[str]
    read: Reader
    stages: list[Stage | GroupStage] = field(default_factory=list)
    off: dict[str, str] = field(default_factory=dict)  # steps of the recipe that do not run: name -> why
    notes: list[str] = field(default_factory=list)  # one-line facts the run must report (e.g. a fallback taken)


# ---------------------------------------------------------------------------------------------------------------
# statistics


@dataclass
class StageStats:
    """Counts of one stage: documents, UTF-8 bytes of their text, drops by reason (docs_in = docs_out + drops).
    For `read`, docs_in also counts the records the reader skipped, whose bytes are unknown."""

    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    drops: Counter = field(default_factory=Counter)

    def add(self, other: dict) -> None:
        """Add another task's counts (a dict as from `as_dict`) to these."""
        for k in ("docs_in", "docs_out", "bytes_in", "bytes_out"):
            setattr(self, k, getattr(self, k) + other[k])
        self.drops.update(other["drops"])

    def as_dict(self) -> dict:
        """{docs_in, docs_out, bytes_in, bytes_out, drops} with drops sorted by reason, for stats.json."""
        return {"docs_in": self.docs_in, "docs_out": self.docs_out, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "drops": dict(sorted(self.drops.items()))}


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))  # surrogatepass: count, never crash on, a lone surrogate


MAX_DOC_BYTES = 64 * 1024 * 1024  # a document above this (UTF-8 bytes) is dropped as "too_large" when read


def _counted(docs: Iterable[Doc], stats: StageStats, step: Callable[[Doc], Result],
             sampler: DropSampler | None = None, stage: str = "", max_bytes: int | None = None) -> Iterator[Doc]:
    """Run `step` on each document, counting documents and bytes in and out and drops by reason; a `sampler` keeps
    the first dropped documents per reason and the lines a line-level filter removed (`doc["_removed_lines"]`).
    A step with a `batch(docs) -> results` method (a `Stage` with `batch_size` > 0) gets the documents in lists of
    `batch_size`, in order (a model called once per list instead of once per document); the results are the same.

    One bad record never ends the run: a document above `max_bytes` is dropped as "too_large" before the step,
    and an exception the step raises on one document (a KeyError on a missing field, a MemoryError) drops that
    document under the reason "error: ExceptionName", as the readers do for bad JSON (a batch that raises is
    redone one document at a time, so only the bad document is dropped)."""
    size = getattr(step, "batch_size", 0) if hasattr(step, "batch") else 0
    for chunk in _chunks(docs, max(size, 1)):
        texts = [doc["text"] for doc in chunk]  # before the step, which may change a document in place
        sizes = [_nbytes(text) for text in texts]
        todo = [doc for doc, n in zip(chunk, sizes) if max_bytes is None or n <= max_bytes]
        if size > 0 and todo:
            try:
                results = iter(step.batch(todo))
            except Exception:  # noqa: BLE001 - find the bad document: one at a time
                results = iter([_one(step, doc) for doc in todo])
        else:
            results = iter([_one(step, doc) for doc in todo])
        for doc, text, n_in in zip(chunk, texts, sizes):
            stats.docs_in += 1
            stats.bytes_in += n_in
            if max_bytes is not None and n_in > max_bytes:
                out = "too_large"
            else:
                out = next(results)
                if isinstance(out, tuple):  # ("error: NAME", doc with meta.error)
                    out, doc = out
            if isinstance(out, str):
                stats.drops[out] += 1
                if sampler is not None:
                    sampler.add_doc(stage, out, doc)
                continue
            removed = out.pop("_removed_lines", None)
            if removed and sampler is not None:
                sampler.add_lines(stage, removed, out)
            stats.docs_out += 1
            # filters pass the text through untouched (the same object): no need to encode it a second time
            stats.bytes_out += n_in if out["text"] is text else _nbytes(out["text"])
            yield out


def _one(step: Callable[[Doc], Result], doc: Doc) -> Result | tuple[str, Doc]:
    """`step(doc)`; an exception -> ("error: NAME", the document with `meta.error`), counted as that drop."""
    try:
        return step(doc)
    except Exception as e:  # noqa: BLE001 - one record's failure is counted, the run goes on
        return f"error: {type(e).__name__}", {**doc, "meta": {**doc.get("meta", {}),
                                                              "error": f"{type(e).__name__}: {str(e)[:500]}"}}


def _chunks(docs: Iterable[Doc], size: int) -> Iterator[list[Doc]]:
    chunk: list[Doc] = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


DROPPED = "dropped"  # OUT/dropped/STAGE/REASON.jsonl: samples of what each stage threw away
SAMPLE_CHARS = 20_000  # a sampled document's text is cut to this many characters ("truncated": true)


class DropSampler:
    """The first `limit` dropped documents per (stage, reason) of one task, and the first `limit` lines removed by
    each line-level stage (reason `removed_lines`), as JSON records `{"stage", "reason", "text", "meta"}`."""

    def __init__(self, limit: int):
        self.limit = limit
        self.records: list[dict] = []
        self._counts: Counter = Counter()

    def add_doc(self, stage: str, reason: str, doc: Doc) -> None:
        """Keep a record of `doc`, dropped by `stage` for `reason`, unless `limit` records of that pair are kept
        already; text cut to SAMPLE_CHARS (marked `truncated`)."""
        if self._counts[stage, reason] >= self.limit:
            return
        self._counts[stage, reason] += 1
        text = doc["text"]
        rec = {"stage": stage, "reason": reason, "text": text[:SAMPLE_CHARS],
               "meta": {k: v for k, v in doc["meta"].items() if k != "_removed_lines"}}
        if len(text) > SAMPLE_CHARS:
            rec["truncated"] = True
        self.records.append(rec)

    def add_lines(self, stage: str, lines: list[str], doc: Doc) -> None:
        """Keep records of lines a line-level `stage` removed from `doc` (reason "removed_lines", with the document's
        url/title/file), up to `limit` per stage."""
        for line in lines:
            if self._counts[stage, "removed_lines"] >= self.limit:
                return
            self._counts[stage, "removed_lines"] += 1
            self.records.append({"stage": stage, "reason": "removed_lines", "text": line,
                                 "meta": {k: doc["meta"][k] for k in ("url", "title", "file") if k in doc["meta"]}})


def format_stats_table(stats: dict) -> str:
    """The summary table printed at the end of a run."""
    rows = [("stage", "docs in", "docs out", "MB in", "MB out", "dropped (reason: docs)")]
    for name, s in stats["stages"].items():
        drops = ", ".join(f"{r}: {n}" for r, n in sorted(s["drops"].items(), key=lambda kv: -kv[1])) or "-"
        rows.append((name, str(s["docs_in"]), str(s["docs_out"]), f"{s['bytes_in'] / 1e6:.2f}",
                     f"{s['bytes_out'] / 1e6:.2f}", drops))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in range(1, 5)] + [r[5]]
        lines.append("  ".join(cells))
    lines.insert(1, "-" * len(lines[0]))
    for name, why in stats.get("off", {}).items():
        lines.append(f"off: {name} ({why})")
    for note in stats.get("notes", []):
        lines.append(f"note: {note}")
    resumed = stats.get("resumed")
    if resumed and resumed["tasks_skipped"]:
        names = ", ".join(Path(p).name for p in resumed["shards"])
        lines.append(f"resumed: {resumed['tasks_skipped']} of {resumed['tasks']} shard tasks were already done and "
                     f"skipped (their saved counts are included); first-segment shards skipped: {names or '-'}")
    if stats.get("dropped"):  # something was dropped and sampled
        lines.append(f"samples of dropped documents and removed lines: {stats['dropped_samples']}/STAGE/REASON.jsonl")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# shard files: gzip JSONL, byte-identical for identical content (no timestamp or file name in the gzip header)


def write_jsonl_gz(path: Path, docs: Iterable[Doc], compresslevel: int = 9, clean_stale: bool = True) -> int:
    """Write documents to `path` atomically (fsynced at the rename); returns how many. `compresslevel`: gzip's
    (9, the default, for outputs; the pipeline's own intermediate shards use 1). `clean_stale`: see
    `io.atomic_file`."""
    n = 0
    with atomic_file(path, "wb", clean_stale=clean_stale) as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel) as gz:
        text = io.TextIOWrapper(gz, encoding="utf-8", newline="\n")
        for doc in docs:
            text.write(json.dumps(doc, ensure_ascii=False) + "\n")
            n += 1
        text.flush()
        text.detach()  # leave closing the gzip stream to its `with`
    return n


def read_jsonl_gz(path: Path) -> Iterator[Doc]:
    """Read a shard this pipeline wrote (`llamaforge.io.read_jsonl`: a damaged shard is a `FILE:LINE` error)."""
    for _, doc in read_jsonl(path):
        yield doc


def _save_npz(path: Path, arrays: dict[str, np.ndarray], fsync: bool = True) -> None:
    with atomic_file(path, "wb", fsync=fsync, clean_stale=False) as f:  # run() removed stale temporaries once
        np.savez(f, **arrays)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _write_json(path: Path, obj: Any, fsync: bool = True, clean_stale: bool = True) -> None:
    with atomic_file(path, "w", fsync=fsync, clean_stale=clean_stale) as f:
        json.dump(obj, f, indent=1, sort_keys=False)


def _read_marker(path: Path) -> dict | None:
    """The stats a finished task saved in its `.done` marker; None when the task must (re)run: no marker, or one
    that cannot be read (markers are not fsynced: a machine crash can leave one empty, and then the task, whose
    output was fsynced before, is simply done again; an empty marker of an older version is redone likewise)."""
    try:
        return json.loads(path.read_text())["stats"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------------------------------------------------
# the plan: segments of per-document stages separated by group stages


@dataclass
class Plan:
    """Everything a task needs; pickled to worker processes and Ray tasks."""

    source: Source
    out: Path
    segments: list[list[Stage]]  # segments[k] runs after groups[k - 1] is applied
    groups: list[GroupStage]
    keep_dropped: int = 0  # per (stage, reason): how many dropped documents / removed lines to sample
    max_doc_bytes: int = MAX_DOC_BYTES  # larger documents are dropped as "too_large" when read

    @property
    def work(self) -> Path:
        """OUT/_work: intermediate shards, summaries, decisions, markers and per-task stats."""
        return self.out / WORK

    def output_path(self, seg: int, shard: int) -> Path:
        """Where segment `seg` writes shard `shard`: the final OUT/SOURCE-NNNNN.jsonl.gz for the last segment, else a
        gzipped JSONL under the work folder."""
        if seg == len(self.segments) - 1:  # the last segment writes the real output
            return self.out / f"{self.source.name}-{shard:05d}.jsonl.gz"
        return self.work / f"seg{seg}" / f"{shard:05d}.jsonl.gz"

    def task_file(self, seg: int, shard: int, suffix: str) -> Path:
        """A per-task file of segment `seg` and shard `shard` under the work folder (`suffix`: stats.json,
        dropped.jsonl, a marker ...)."""
        return self.work / f"seg{seg}" / f"{shard:05d}.{suffix}"

    def decision_path(self, group: int, shard: int) -> Path:
        """Where group stage `group`'s decision for shard `shard` is stored (.npz)."""
        return self.work / f"group{group}" / f"{shard:05d}.npz"


def make_plan(source: Source, out: Path, keep_dropped: int = 0, max_doc_bytes: int = MAX_DOC_BYTES) -> Plan:
    """Split the source's stages into segments at each group stage: segment k runs the per-document stages after group
    stage k - 1 is applied. Raises ValueError when two stages share a name (stats and dropped samples are keyed by
    it)."""
    segments: list[list[Stage]] = [[]]
    groups: list[GroupStage] = []
    for stage in source.stages:
        if isinstance(stage, GroupStage):
            groups.append(stage)
            segments.append([])
        else:
            segments[-1].append(stage)
    names = ["read"] + [s.name for s in source.stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique, got {names}")
    return Plan(source, Path(out), segments, groups, keep_dropped, max_doc_bytes)


def _stage_names(plan: Plan, seg: int) -> list[str]:
    first = plan.groups[seg - 1].name if seg else "read"  # what feeds the segment: the reader or a group's apply
    return [first] + [s.name for s in plan.segments[seg]]


def run_task(plan: Plan, seg: int, shard: int) -> dict:
    """One segment over one shard. Returns {stage name: stats}; skips (and returns saved stats) when done before.

    Files: the shard's output (fsynced at its rename, like every file that holds documents or a group summary),
    then the dropped-document samples (fsynced when there are any: the marker vouches for them) and last the
    `.done` marker holding the task's stats (not fsynced; see `_read_marker` for why a lost marker is harmless)."""
    done = plan.task_file(seg, shard, "done")
    saved = _read_marker(done)
    if saved is not None:
        return saved

    stats = {name: StageStats() for name in _stage_names(plan, seg)}
    sampler = DropSampler(plan.keep_dropped) if plan.keep_dropped > 0 else None
    if seg == 0:
        docs = _counted(plan.source.read(plan.source.shards[shard], stats["read"].drops), stats["read"],
                        lambda d: d, sampler, "read", plan.max_doc_bytes)
    else:
        group = plan.groups[seg - 1]
        group.setup()
        decision = _load_npz(plan.decision_path(seg - 1, shard))
        docs = _counted(read_jsonl_gz(plan.output_path(seg - 1, shard)), stats[group.name],
                        _GroupApply(group, decision), sampler, group.name)
    for stage in plan.segments[seg]:
        stage.setup()
        docs = _counted(docs, stats[stage.name], stage, sampler, stage.name)

    next_group = plan.groups[seg] if seg < len(plan.groups) else None
    if next_group is not None:
        next_group.setup()
        next_group.summary()  # start clean: drop anything a failed task in this process left behind
        docs = _observed(docs, next_group)
    final = seg == len(plan.segments) - 1
    write_jsonl_gz(plan.output_path(seg, shard), docs, compresslevel=9 if final else 1, clean_stale=False)
    if next_group is not None:
        _save_npz(plan.task_file(seg, shard, "summary.npz"), next_group.summary())

    if seg == 0:  # records the reader skipped (malformed, wrong license, ...) came in too
        stats["read"].docs_in += sum(stats["read"].drops.values())
    if sampler is not None:
        # fsynced when it holds samples: the marker below vouches for it, and a crash must not leave it cut
        with atomic_file(plan.task_file(seg, shard, "dropped.jsonl"), "w", fsync=bool(sampler.records),
                         clean_stale=False) as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in sampler.records)
    result = {name: s.as_dict() for name, s in stats.items()}
    _write_json(done, {"stats": result}, fsync=False, clean_stale=False)  # last: a marked task has all its files
    return result


class _GroupApply:
    """`group.apply` as a one-argument step, numbering documents in the order `observe` saw them."""

    def __init__(self, group: GroupStage, decision: dict[str, np.ndarray]):
        self.group, self.decision, self.index = group, decision, 0

    def __call__(self, doc: Doc) -> Result:
        out = self.group.apply(self.index, doc, self.decision)
        self.index += 1
        return out


def _observed(docs: Iterator[Doc], group: GroupStage) -> Iterator[Doc]:
    for i, doc in enumerate(docs):
        group.observe(i, doc)
        yield doc


def resolve_group(plan: Plan, g: int) -> None:
    """Driver side of group stage g: all summaries of segment g -> one decision file per shard."""
    done = plan.work / f"group{g}" / "resolved.done"
    if done.exists():
        return
    n = len(plan.source.shards)
    summaries = [_load_npz(plan.task_file(g, i, "summary.npz")) for i in range(n)]
    decisions = plan.groups[g].resolve(summaries)
    assert len(decisions) == n, "resolve must return one decision per shard"
    for i, d in enumerate(decisions):
        _save_npz(plan.decision_path(g, i), d, fsync=False)
    os.sync()  # one flush for all decision files before the marker, instead of one fsync per file
    done.touch()


# ---------------------------------------------------------------------------------------------------------------
# executors


def die_with_parent(parent: int) -> None:
    """Worker initializer: the kernel sends SIGKILL to this process when its parent dies (Linux prctl
    PR_SET_PDEATHSIG), so a killed `prepare --workers N` leaves no orphan writing on. Elsewhere: a no-op."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)


def _run_local(plan: Plan, seg: int, shards: list[int], workers: int, progress: bool) -> list[dict]:
    results: dict[int, dict] = {}
    bar = tqdm(total=len(shards), desc=f"{plan.source.name} segment {seg}", unit="shard", disable=not progress)
    if workers <= 1:  # in this process: simplest to debug, and what a killed run looks like in tests
        for i in shards:
            results[i] = run_task(plan, seg, i)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(run_task, plan, seg, i): i for i in shards}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update()
    bar.close()
    return [results[i] for i in shards]


def _run_ray(plan: Plan, seg: int, shards: list[int], workers: int, progress: bool,
             address: str | None) -> list[dict]:
    import ray

    if not ray.is_initialized():  # a cluster at `address`, or a local Ray with `workers` CPUs
        local_cpus = workers if address is None and workers > 1 else None
        ray.init(address=address, num_cpus=local_cpus, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(run_task)
    plan_ref = ray.put(plan)  # shipped once to the object store, not once per task
    pending = {remote.remote(plan_ref, seg, i): i for i in shards}
    results: dict[int, dict] = {}
    bar = tqdm(total=len(shards), desc=f"{plan.source.name} segment {seg} (ray)", unit="shard",
               disable=not progress)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            results[pending.pop(ref)] = ray.get(ref)
            bar.update()
    bar.close()
    return [results[i] for i in shards]


def run(source: Source, out: str | os.PathLike, workers: int = 1, executor: str = "local",
        ray_address: str | None = None, progress: bool = True, keep_work: bool = False,
        keep_dropped: int = 20, max_doc_bytes: int = MAX_DOC_BYTES) -> dict:
    """Run every segment over every shard, resolving group stages between segments; returns the merged stats.

    Resumable: finished tasks (with a `.done` marker) are skipped, so rerunning after a crash finishes the job;
    `stats["resumed"]` says how many tasks (and which first-segment shards) were skipped as already done.
    `keep_dropped` > 0: up to that many dropped documents per stage and reason (and lines removed by a line-level
    stage, reason `removed_lines`) are written to `OUT/dropped/STAGE/REASON.jsonl`, in shard order.
    `max_doc_bytes`: documents above it are dropped as "too_large" when read; a document on which a stage raises
    is dropped as "error: NAME" (see `_counted`). Raises UserError for `workers` < 1, an unknown executor, no
    input shards, or a negative `keep_dropped` / non-positive `max_doc_bytes`.
    """
    if executor not in ("local", "ray"):
        raise UserError(f"--executor: expected 'local' or 'ray', got {executor!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"--workers: expected a count >= 1, got {workers!r}")  # 0 and -3 used to run as 1
    if not source.shards:
        raise UserError(f"{source.name}: no input shards found")
    if keep_dropped < 0:
        raise UserError(f"--keep-dropped: expected a count >= 0, got {keep_dropped}")
    if not isinstance(max_doc_bytes, int) or max_doc_bytes < 1:
        raise UserError(f"--max-doc-bytes: expected a positive number of bytes, got {max_doc_bytes!r}")
    plan = make_plan(source, Path(out), keep_dropped, max_doc_bytes)
    make_dir(plan.out)
    _check_same_inputs(plan)
    _remove_stale_temporaries(plan)

    merged: dict[str, StageStats] = {}
    shards = list(range(len(source.shards)))
    skipped: list[tuple[int, int]] = []
    for seg in range(len(plan.segments)):
        (plan.work / f"seg{seg}").mkdir(parents=True, exist_ok=True)
        if seg > 0:
            resolve_group(plan, seg - 1)
        done = [i for i in shards if _read_marker(plan.task_file(seg, i, "done")) is not None]
        skipped += [(seg, i) for i in done]
        if done and progress:
            print(f"{source.name} segment {seg}: resuming, {len(done)} of {len(shards)} shards already done",
                  file=sys.stderr)
        if executor == "ray":
            results = _run_ray(plan, seg, shards, workers, progress, ray_address)
        else:
            results = _run_local(plan, seg, shards, workers, progress)
        for r in results:
            for name, s in r.items():
                merged.setdefault(name, StageStats()).add(s)

    stats = {"source": source.name, "shards": len(shards), "inputs": source.shards,
             "stages": {name: s.as_dict() for name, s in merged.items()},
             "outputs": [plan.output_path(len(plan.segments) - 1, i).name for i in shards],
             "ran": ["read"] + [s.name for s in source.stages], "off": dict(source.off), "notes": list(source.notes),
             "resumed": {"tasks_skipped": len(skipped), "tasks": len(shards) * len(plan.segments),
                         "shards": [source.shards[i] for seg, i in skipped if seg == 0],
                         "by_segment": {str(k): [i for seg, i in skipped if seg == k]
                                        for k in range(len(plan.segments))}}}
    if keep_dropped > 0:
        stats["dropped_samples"] = str(plan.out / DROPPED)
        stats["dropped"] = _merge_dropped(plan, shards, keep_dropped)
    _write_json(plan.out / "stats.json", stats)
    if not keep_work:  # intermediate documents are no longer needed; markers, stats and decisions stay
        for seg in range(len(plan.segments) - 1):
            for i in shards:
                plan.output_path(seg, i).unlink(missing_ok=True)
    return stats


def _merge_dropped(plan: Plan, shards: list[int], limit: int) -> dict[str, dict[str, int]]:
    """Every task's samples -> `OUT/dropped/STAGE/REASON.jsonl`, at most `limit` records each, in shard order;
    {stage: {reason: records kept}}. The task files are read by the one JSONL reader (`io.read_jsonl`): a damaged
    one raises UserError("PATH:LINE: ...")."""
    groups: dict[tuple[str, str], list[str]] = {}
    for seg in range(len(plan.segments)):
        for i in shards:
            path = plan.task_file(seg, i, "dropped.jsonl")
            if not path.exists():
                continue
            for _, rec in read_jsonl(path):
                bucket = groups.setdefault((rec["stage"], rec["reason"]), [])
                if len(bucket) < limit:
                    bucket.append(json.dumps(rec, ensure_ascii=False) + "\n")  # as the task wrote it
    root = plan.out / DROPPED
    shutil.rmtree(root, ignore_errors=True)  # a rerun with another limit leaves no stale file
    counts: dict[str, dict[str, int]] = {}
    for (stage, reason), lines in sorted(groups.items()):
        (root / stage).mkdir(parents=True, exist_ok=True)
        with atomic_file(root / stage / f"{_safe_name(reason)}.jsonl", "w") as f:
            f.writelines(lines)
        counts.setdefault(stage, {})[reason] = len(lines)
    return counts


def _safe_name(reason: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in reason)


def _settings(stage: Stage | GroupStage) -> dict:
    """A stage's plain settings (thresholds, languages, modes): a changed one must not reuse old results."""
    out = {}
    for k, v in sorted(vars(stage).items()):
        if k.startswith("_") or callable(v):
            continue
        if isinstance(v, (set, frozenset)):
            v = sorted(v)
        if isinstance(v, (str, int, float, bool, type(None), list, tuple)):
            out[k] = v
    return json.loads(json.dumps(out))  # tuples -> lists, as they come back from the manifest


def _check_same_inputs(plan: Plan) -> None:
    """A resumed run must see the same shards in the same order, or markers would point at the wrong files."""
    manifest = plan.work / "inputs.json"
    current = {"source": plan.source.name, "shards": plan.source.shards,
               "stages": [[s.name, _settings(s)] for s in plan.source.stages]}
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved != current:
            raise UserError(f"{plan.out}: holds a run with other inputs or stages; use a new --out "
                            f"or delete {plan.work}")
    else:
        plan.work.mkdir(parents=True, exist_ok=True)
        _write_json(manifest, current)


def _remove_stale_temporaries(plan: Plan) -> None:
    """Half-written files of a killed run (never renamed into place); one run per output folder at a time."""
    for folder in [plan.out, *(p for p in plan.work.rglob("*") if p.is_dir())]:
        for tmp in folder.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)


def clean(out: Path) -> None:
    """Remove a previous run's outputs (used by `prepare --overwrite`)."""
    shutil.rmtree(Path(out) / WORK, ignore_errors=True)
    shutil.rmtree(Path(out) / DROPPED, ignore_errors=True)
    shutil.rmtree(Path(out) / "models", ignore_errors=True)  # models a source built for this output (commoncrawl)
    for p in Path(out).glob("*.jsonl.gz"):
        p.unlink()
    (Path(out) / "stats.json").unlink(missing_ok=True)
