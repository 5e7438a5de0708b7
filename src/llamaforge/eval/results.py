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


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the standard error of the mean (sample standard deviation / sqrt(n))."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def aggregate(task: str, shots: int, per_item: list[dict], paper_metric: str | None = None) -> TaskResult:
    """Average every numeric per-item metric (lists and strings, e.g. predictions, are left out)."""
    names = [k for k, v in per_item[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    names = [k for k in names if not k.startswith("loglikelihood")]
    metrics, stderr = {}, {}
    for name in names:
        metrics[name], stderr[name] = mean_and_stderr([float(it[name]) for it in per_item])
    return TaskResult(task, shots, len(per_item), metrics, stderr, paper_metric)


def to_json(results: list[TaskResult], config: dict) -> dict:
    """The results file: {"results": task -> metrics and <metric>_stderr, "details": shots, n, paper numbers, "config":
    ...}.
    """
    return {
        "results": {r.task: {**r.metrics, **{f"{k}_stderr": v for k, v in r.stderr.items()}} for r in results},
        "details": {r.task: {"shots": r.shots, "n": r.n, "paper_metric": r.paper_metric, "paper": r.paper}
                    for r in results},
        "config": config,
    }


PERCENT_METRICS = ("acc", "exact_match", "maj@", "pass@")


def _fmt(metric: str, value: float | None, scale: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if scale:
        return f"{100 * value:.1f}"
    return f"{value:.4g}"


def markdown_table(results: list[TaskResult]) -> str:
    """One row per task and metric: task | metric | shots | n | value | stderr | paper (accuracies in %)."""
    lines = ["| task | metric | shots | n | value | stderr | paper |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for metric, value in r.metrics.items():
            scale = metric.startswith(PERCENT_METRICS)
            name = f"{metric} (paper's)" if metric == r.paper_metric else metric
            paper = r.paper.get(metric)
            lines.append(
                f"| {r.task} | {name} | {r.shots} | {r.n} | {_fmt(metric, value, scale)} | "
                f"{_fmt(metric, r.stderr.get(metric), scale)} | {'' if paper is None else f'{paper:.1f}'} |"
            )
    return "\n".join(lines) + "\n"


def write_results(path, results: list[TaskResult], config: dict) -> tuple[Path, Path]:
    """Write FILE (JSON) and FILE with a .md suffix (the table), each atomically."""
    path = Path(path)
    md_path = path.with_suffix(".md")
    with atomic_file(path, "w") as f:
        f.write(json.dumps(to_json(results, config), indent=2) + "\n")
    with atomic_file(md_path, "w") as f:
        f.write(markdown_table(results))
    return path, md_path
