"""Evaluation results: JSON `{"results": {task: {metric: value}}, "config": {...}}` and a markdown table with the
paper's number beside ours where the model is one of the paper's presets (the score of another harness or prompt
is not the paper's; every row says its metric and shots, see SPEC §6)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llamaforge.io import atomic_file


@dataclass
class TaskResult:
    """One task's result: mean metrics over n items with their standard errors, and the paper's score
    (percent) for `paper_metric` when the model is a paper preset.
    """
    task: str
    shots: int
    n: int
    metrics: dict[str, float]  # metric -> value in [0, 1] for accuracies, raw for perplexities
    stderr: dict[str, float] = field(default_factory=dict)
    paper_metric: str | None = None
    paper: dict[str, float] = field(default_factory=dict)  # metric -> the paper's score (%)
    chance: dict[str, float] = field(default_factory=dict)  # metric -> the score of a uniform random guess
    note: str = ""  # what the numbers are (or are not), e.g. "needs an external judge"
    sizes: dict[str, int] = field(default_factory=dict)  # metric[split] -> items in that split


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the standard error of the mean (sample standard deviation / sqrt(n))."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def aggregate(task: str, shots: int, per_item: list[dict], paper_metric: str | None = None) -> TaskResult:
    """Average every numeric per-item metric (lists and strings, e.g. predictions, are left out). Items that carry
    `groups` (split names) also give `metric[split]`, the mean over that split's items, after the overall ones."""
    names = [k for k, v in per_item[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    names = [k for k in names if not k.startswith("loglikelihood")]
    metrics, stderr = {}, {}
    for name in names:
        metrics[name], stderr[name] = mean_and_stderr([float(it[name]) for it in per_item])
    splits: dict[str, list[dict]] = {}
    for it in per_item:
        for group in it.get("groups", ()):
            splits.setdefault(group, []).append(it)
    for group in sorted(splits):
        for name in names:
            key = f"{name}[{group}]"
            metrics[key], stderr[key] = mean_and_stderr([float(it[name]) for it in splits[group]])
    sizes = {f"{name}[{group}]": len(its) for group, its in splits.items() for name in names}
    return TaskResult(task, shots, len(per_item), metrics, stderr, paper_metric, sizes=sizes)


def to_json(results: list[TaskResult], config: dict) -> dict:
    """The results file: {"results": task -> metrics and <metric>_stderr, "details": shots, n, paper numbers, "config":
    ...}. A value that is not a finite number (the stderr of a one-item split) is null: NaN is not JSON (RFC 8259),
    and jq, JavaScript and strict readers refuse a file holding it.
    """
    return _finite({
        "results": {r.task: {**r.metrics, **{f"{k}_stderr": v for k, v in r.stderr.items()}} for r in results},
        "details": {r.task: {"shots": r.shots, "n": r.n, "paper_metric": r.paper_metric, "paper": r.paper,
                             "chance": r.chance, "split_sizes": r.sizes, **({"note": r.note} if r.note else {})}
                    for r in results},
        "config": config,
    })


def _finite(value):
    """`value` with every float that is not finite (NaN, inf) at any depth replaced by None (JSON null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


PERCENT_METRICS = ("acc", "exact_match", "maj@", "pass@", "pct_stereotype", "mc1", "mc2", "truthful", "informative")


def _fmt(metric: str, value: float | None, scale: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if scale:
        return f"{100 * value:.1f}"
    return f"{value:.4g}"


def markdown_table(results: list[TaskResult]) -> str:
    """One row per task and metric: task | metric | shots | n | value | stderr | paper | chance (accuracies in %),
    then one line per task note."""
    lines = ["| task | metric | shots | n | value | stderr | paper | chance |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for metric, value in r.metrics.items():
            scale = metric.startswith(PERCENT_METRICS)
            name = f"{metric} (paper's)" if metric == r.paper_metric else metric
            paper = r.paper.get(metric)
            lines.append(
                f"| {r.task} | {name} | {r.shots} | {r.sizes.get(metric, r.n)} | {_fmt(metric, value, scale)} | "
                f"{_fmt(metric, r.stderr.get(metric), scale)} | {'' if paper is None else f'{paper:.1f}'} | "
                f"{_fmt(metric, r.chance.get(metric), scale)} |"
            )
        if not r.metrics:
            lines.append(f"| {r.task} | (none) | {r.shots} | {r.n} |  |  |  |  |")
    notes = [f"- {r.task}: {r.note}" for r in results if r.note]
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def write_results(path, results: list[TaskResult], config: dict) -> tuple[Path, Path]:
    """Write FILE (JSON) and FILE with a .md suffix (the table), each atomically."""
    path = Path(path)
    md_path = path.with_suffix(".md")
    with atomic_file(path, "w") as f:
        f.write(json.dumps(to_json(results, config), indent=2, allow_nan=False) + "\n")
    with atomic_file(md_path, "w") as f:
        f.write(markdown_table(results))
    return path, md_path
