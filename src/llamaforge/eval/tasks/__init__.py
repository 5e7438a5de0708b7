"""The task registry: each of the paper's benchmarks with its data loader, scorer, default shots, the paper's
metric for it and the paper's numbers (Touvron et al. 2023, Tables 3-9; 7B/13B/33B/65B)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llamaforge.errors import UserError
from llamaforge.eval.items import score_choice_items
from llamaforge.eval.tasks import code, generative_qa, gsm8k, multiple_choice


@dataclass
class Task:
    """A benchmark of the paper: how to load its items, its kind of scoring (choice, qa, math, code), the paper's
    shot count and metric, and the paper's scores per preset (Touvron et al. 2023, Tables 3-9).
    """
    name: str
    kind: str  # "choice", "qa", "math", "code"
    load: Callable  # (data_dir, shots) -> items
    shots: int  # the paper's setting
    paper_metric: str
    paper: dict[str, float] = field(default_factory=dict)  # preset name -> the paper's score (%)
    shots_fixed: bool = False  # the loader ignores --shots (e.g. MMLU's own dev exemplars)
    unconditional: bool = False  # also score P(choice | "Answer:") (OpenBookQA, BoolQ)
    paper_other: dict[str, dict[str, float]] = field(default_factory=dict)  # other metric -> preset -> score


def _choice(loader):
    def load(data_dir: Path, shots: int):
        return multiple_choice.add_shots(loader(data_dir), shots)

    return load


def _paper(*values):
    return dict(zip(("llama-7b", "llama-13b", "llama-33b", "llama-65b"), values))


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("boolq", "choice", _choice(multiple_choice.load_boolq), 0, "acc_uncond", _paper(76.5, 78.1, 83.1, 85.3),
             unconditional=True),
        Task("piqa", "choice", _choice(multiple_choice.load_piqa), 0, "acc_norm", _paper(79.8, 80.1, 82.3, 82.8)),
        Task("siqa", "choice", _choice(multiple_choice.load_siqa), 0, "acc_norm", _paper(48.9, 50.4, 50.4, 52.3)),
        Task("hellaswag", "choice", _choice(multiple_choice.load_hellaswag), 0, "acc_norm",
             _paper(76.1, 79.2, 82.8, 84.2)),
        Task("winogrande", "choice", _choice(multiple_choice.load_winogrande), 0, "acc",
             _paper(70.1, 73.0, 76.0, 77.0)),
        Task("arc_easy", "choice", _choice(multiple_choice.load_arc_easy), 0, "acc_norm",
             _paper(72.8, 74.8, 80.0, 78.9)),
        Task("arc_challenge", "choice", _choice(multiple_choice.load_arc_challenge), 0, "acc_norm",
             _paper(47.6, 52.7, 57.8, 56.0)),
        Task("openbookqa", "choice", _choice(multiple_choice.load_openbookqa), 0, "acc_uncond",
             _paper(57.2, 56.4, 58.6, 60.2), unconditional=True),
        Task("mmlu", "choice", lambda d, k: multiple_choice.load_mmlu(d, k), 5, "acc", _paper(35.1, 46.9, 57.8, 63.4)),
        Task("nq_open", "qa", generative_qa.load_nq_open, 0, "exact_match", _paper(16.8, 20.1, 24.9, 23.8)),
        Task("triviaqa", "qa", generative_qa.load_triviaqa, 0, "exact_match", _paper(50.0, 56.6, 65.1, 68.2)),
        Task("gsm8k", "math", lambda d, k: gsm8k.load_gsm8k(d, k), 8, "maj@1", _paper(11.0, 17.8, 35.6, 50.9),
             paper_other={"maj@100": _paper(18.1, 29.3, 53.1, 69.7)}),
        Task("humaneval", "code", lambda d, k: code.load_humaneval(d), 0, "pass@1", _paper(10.5, 15.8, 21.7, 23.7),
             shots_fixed=True, paper_other={"pass@100": _paper(36.5, 52.5, 70.7, 79.3)}),
        Task("mbpp", "code", lambda d, k: code.load_mbpp(d, k), 3, "pass@1", _paper(17.7, 22.0, 30.2, 37.7),
             paper_other={"pass@80": _paper(56.2, 64.0, 73.4, 76.8)}),
    ]
}

# The paper's few-shot tables for the QA tasks (Tables 4 and 5): shots -> 7B..65B.
QA_PAPER = {
    "nq_open": {0: _paper(16.8, 20.1, 24.9, 23.8), 1: _paper(18.7, 23.4, 28.3, 31.0),
                5: _paper(22.0, 28.1, 32.9, 35.0), 64: _paper(26.1, 31.9, 36.0, 39.9)},
    "triviaqa": {0: _paper(50.0, 56.6, 65.1, 68.2), 1: _paper(53.4, 60.5, 67.9, 71.6),
                 5: _paper(56.3, 63.1, 69.9, 72.6), 64: _paper(57.6, 64.0, 70.4, 73.0)},
}


def get_task(name: str) -> Task:
    """The Task named `name`; raises UserError listing the known tasks."""
    if name not in TASKS:
        raise UserError(f"--tasks: unknown task {name!r}; expected some of: {', '.join(TASKS)}")
    return TASKS[name]


def paper_number(task: Task, metric: str, shots: int, preset: str | None) -> float | None:
    """The paper's score for this task, metric, shot count and preset, when the paper reports it."""
    if preset is None:
        return None
    if task.name in QA_PAPER and metric == task.paper_metric:
        return QA_PAPER[task.name].get(shots, {}).get(preset)
    if shots != task.shots and not task.shots_fixed:
        return None
    if metric == task.paper_metric:
        return task.paper.get(preset)
    return task.paper_other.get(metric, {}).get(preset)


def score_items(task: Task, scorer, items, options: dict) -> list[dict]:
    """Per-item metric dicts for a task's items (options: samples, temperature, max_new_tokens, unsafe_exec)."""
    if task.kind == "choice":
        return score_choice_items(scorer, items, unconditional=task.unconditional)
    if task.kind == "qa":
        return generative_qa.score_qa_items(scorer, items)
    if task.kind == "math":
        return gsm8k.score_math_items(scorer, items, samples=options.get("samples", 1),
                                     temperature=options.get("temperature", 0.6))
    if task.kind == "code":
        from llamaforge.eval.sandbox import Limits

        return code.score_code_items(scorer, items, samples=options.get("samples", 1),
                                     temperature=options.get("temperature", 0.1),
                                     limits=Limits(unsafe_exec=bool(options.get("unsafe_exec", False))))
    raise ValueError(f"unknown task kind {task.kind}")
