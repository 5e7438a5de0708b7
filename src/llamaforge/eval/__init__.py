"""Evaluation: perplexity, the paper's benchmarks scored the paper's way, user task files, and a backend for
lm-evaluation-harness.

| module        | holds                                                                                   |
|---------------|-----------------------------------------------------------------------------------------|
| scoring       | `Scorer`: batched log-likelihoods (shared context run once per item), greedy/sampled generation with stop strings |
| items         | item kinds (multiple choice, continuation) and metrics (acc, acc_norm, acc_uncond, EM, pass@k) |
| perplexity    | token perplexity, bits per byte, with disjoint or strided sliding windows                 |
| tasks/        | one file per family: multiple_choice, generative_qa, gsm8k, code; the registry in `tasks/__init__` |
| taskfile      | `--task-file FILE.jsonl` generic formats                                                 |
| sandbox       | running generated code with limits                                                       |
| harness       | `llamaforge` model for lm-evaluation-harness                                             |
| results       | JSON and markdown tables with the paper's numbers                                        |

`evaluate(model, tokenizer, tasks, data_dir)` is the programmatic entry point; `llamaforge eval` wraps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from llamaforge.errors import UserError
from llamaforge.eval.results import TaskResult, aggregate


def check_counts(limit: int | None = None, shots: int | None = None, prefix: str = "") -> None:
    """Refuse a `limit` below 1 or `shots` below 0 with a UserError naming the field (`prefix` + name, e.g.
    "--limit"). Both are used as list slices, where 0 would silently mean "all items" and -1 "all but the
    last" (`items[:-1]`): never what was asked. None means the default (all items / the task's shots)."""
    for name, value, least in (("limit", limit, 1), ("shots", shots, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise UserError(f"{prefix}{name}: expected an integer >= {least}, got {value!r}")


def preset_of(model) -> str | None:
    """The paper's preset name whose shape this model has (for putting the paper's number beside ours)."""
    from llamaforge.presets import PRESETS

    # norm_eps and max_seq_len tell LLaMA-1 from Llama 2 at 7B / 13B, whose shapes are equal.
    shape = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "norm_eps", "max_seq_len")
    mine = tuple(getattr(model.args, k) for k in shape)
    for name, args in PRESETS.items():
        if name.startswith("llama-") and tuple(getattr(args, k) for k in shape) == mine:
            return name
    return None


def evaluate_task(scorer, name: str, data_dir, shots: int | None = None, limit: int | None = None,
                  options: dict | None = None, preset: str | None = None) -> tuple[TaskResult, list[dict]]:
    """Run one registered task; returns the aggregate and the per-item metric dicts."""
    from llamaforge.eval.tasks import chance_level, get_task, paper_number, score_items

    check_counts(limit, shots)
    task = get_task(name)
    shots = task.shots if shots is None or task.shots_fixed else shots
    try:
        items = task.load(Path(data_dir), shots)
    except (KeyError, IndexError, TypeError, ValueError, EOFError, OSError) as e:  # a loader's unnamed case
        raise UserError(f"{data_dir}: {name}: the task's data is malformed ({type(e).__name__}: {e})") from None
    items = items[:limit] if limit else items
    per_item = score_items(task, scorer, items, options or {})
    result = aggregate(name, shots, per_item, task.paper_metric)
    chance = chance_level(task, items)
    result.note = task.note
    for metric in result.metrics:
        number = paper_number(task, metric, shots, preset)
        if number is not None:
            result.paper[metric] = number
        base = metric.split("[")[0]  # a split's chance level is the task's
        level = chance.get(base, 0.0 if base.startswith("maj@") else None)
        if level is not None and not base.endswith("likelihood_diff"):
            result.chance[metric] = level
    return result, per_item


def evaluate_task_file(scorer, path, limit: int | None = None) -> tuple[TaskResult, list[dict]]:
    """Score a `--task-file` (see `llamaforge.eval.taskfile`)."""
    from llamaforge.eval.items import (
        ChoiceItem,
        score_choice_items,
        score_continuation_items,
    )
    from llamaforge.eval.taskfile import load_task_file

    check_counts(limit)
    items = load_task_file(path)
    items = items[:limit] if limit else items
    if isinstance(items[0], ChoiceItem):
        per_item = score_choice_items(scorer, items)
    else:
        per_item = score_continuation_items(scorer, items)
    return aggregate(Path(path).stem, 0, per_item, "acc_norm" if isinstance(items[0], ChoiceItem) else "acc"), per_item


def evaluate(model, tokenizer, tasks: Sequence[str], data_dir, shots: int | None = None, limit: int | None = None,
             batch_size: int = 16, options: dict | None = None) -> list[TaskResult]:
    """Run `tasks` (names from `eval.tasks.TASKS`) on `model` with `tokenizer`, reading their data under
    `data_dir`; shots None means each task's paper setting, limit caps the items per task, batch_size is sequences
    per forward pass. Returns one TaskResult per task, with the paper's number beside ours where the model is a
    paper preset. Raises UserError for an unknown task or missing data.
    """
    from llamaforge.eval.scoring import Scorer

    check_counts(limit, shots)
    scorer = Scorer(model, tokenizer, batch_size=batch_size)
    preset = preset_of(model)
    return [evaluate_task(scorer, t, data_dir, shots, limit, options, preset)[0] for t in tasks]


def evaluator_from_section(section, data_tokenizer: str = ""):
    """The `[eval]` section of a training config (`train.config.EvalConfig`: tasks, data_dir, tokenizer, limit,
    batch_size) as the trainer's `on_eval` callback (`training_evaluator`), or None when it lists no tasks.

    train/ does not import eval/ (ARCHITECTURE.md), so `llamaforge train`, `llamaforge finetune` and the flow's
    train stage build the callback here and hand it to `train(..., on_eval=...)`. The tokenizer is the section's,
    else `data_tokenizer` (the config's data.tokenizer). Raises UserError when tasks are listed without a data_dir
    or without any tokenizer, and as `training_evaluator` does for an unknown task or missing data."""
    tasks = [t.strip() for t in section.tasks.split(",") if t.strip()]
    if not tasks:
        return None
    if not section.data_dir:
        raise UserError("config: eval.data_dir: expected the folder with the benchmark files (with eval.tasks)")
    tokenizer = section.tokenizer or data_tokenizer
    if not tokenizer:
        raise UserError("config: eval.tokenizer: expected a tokenizer path (or data.tokenizer) with eval.tasks")
    return training_evaluator(tasks, section.data_dir, tokenizer, section.limit, section.batch_size)


def training_evaluator(tasks: Sequence[str], data_dir, tokenizer, limit: int = 100, batch_size: int = 16):
    """The callback `train(..., on_eval=...)` takes for evaluation during training (the paper's Figure 2).

    Loads each task's first `limit` items once, now (an unknown task or missing data is a UserError before
    training starts). The callback `(model, step) -> {"TASK/METRIC": value}` scores them on the model as it is,
    with the overall metrics only (no per-split ones). `tokenizer` is a tokenizer object or a path. The callback's
    `counts` attribute is {task: number of items scored} (for reports)."""
    from llamaforge.eval.scoring import Scorer
    from llamaforge.eval.tasks import get_task, score_items

    check_counts(limit)
    if isinstance(tokenizer, (str, Path)):
        from llamaforge import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    loaded = []
    for name in tasks:
        task = get_task(name)
        loaded.append((name, task, task.load(Path(data_dir), task.shots)[:limit]))

    def on_eval(model, step: int) -> dict[str, float]:
        scorer = Scorer(getattr(model, "_orig_mod", model), tokenizer, batch_size=batch_size)  # unwrap compile
        scores = {}
        for name, task, items in loaded:
            result = aggregate(name, task.shots, score_items(task, scorer, items, {}), task.paper_metric)
            scores.update({f"{name}/{m}": v for m, v in result.metrics.items() if "[" not in m})
        return scores

    on_eval.counts = {name: len(items) for name, _, items in loaded}
    return on_eval
