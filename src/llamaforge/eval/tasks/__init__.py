"""The task registry: each of the paper's benchmarks with its data loader, scorer, default shots, the paper's
metric for it, the paper's numbers (Touvron et al. 2023, Tables 3-9 and 12-14; 7B/13B/33B/65B) and the chance
level. Per-split scores (MATH subject and level, CrowS-Pairs category, WinoGender pronouns) are reported as
`metric[split]` beside the overall one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llamaforge.errors import UserError
from llamaforge.eval.items import score_choice_items
from llamaforge.eval.tasks import bias, code, generative_qa, gsm8k, minerva_math, multiple_choice, race, truthfulqa


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
    chance: Callable | None = None  # items -> {metric: the score of guessing uniformly at random}
    note: str = ""  # what a reader of the results must know (e.g. a metric that needs an external judge)


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
        Task("race_middle", "choice", lambda d, k: race.load_race(d, "middle"), 0, "acc_uncond",
             _paper(61.1, 61.6, 64.1, 67.9), shots_fixed=True, unconditional=True),
        Task("race_high", "choice", lambda d, k: race.load_race(d, "high"), 0, "acc_uncond",
             _paper(46.9, 47.2, 48.3, 51.6), shots_fixed=True, unconditional=True),
        Task("math", "minerva", minerva_math.load_math, 4, "maj@1", _paper(2.9, 3.9, 7.1, 10.6),
             paper_other={"maj@256": _paper(6.9, 8.8, 15.2, 20.5)}, chance=lambda items: {"maj@1": 0.0},
             note=f"answers compared by {minerva_math.EQUIVALENCE}"),
        Task("math500", "minerva", minerva_math.load_math500, 4, "maj@1", chance=lambda items: {"maj@1": 0.0},
             note=f"answers compared by {minerva_math.EQUIVALENCE}; the paper reports only the 5,000-problem set"),
        Task("truthfulqa_mc", "truthfulqa_mc", lambda d, k: truthfulqa.load_truthfulqa_mc(d), 0, "mc2",
             shots_fixed=True, note=truthfulqa.JUDGE_NOTE,
             chance=lambda items: {"mc1": sum(1 / len(it.mc1) for it in items) / len(items),
                                   "mc2": sum(sum(it.mc2_true) / len(it.mc2) for it in items) / len(items)}),
        Task("truthfulqa_gen", "truthfulqa_gen", lambda d, k: truthfulqa.load_truthfulqa_gen(d), 0,
             "truthful*informative", {p: 100 * v[1] for p, v in truthfulqa.PAPER_TRUTHFUL.items()}, shots_fixed=True,
             paper_other={"truthful": {p: 100 * v[0] for p, v in truthfulqa.PAPER_TRUTHFUL.items()}},
             note=truthfulqa.JUDGE_NOTE),
        Task("crows_pairs", "crows_pairs", lambda d, k: bias.load_crows_pairs(d), 0, "pct_stereotype",
             {"llama-65b": bias.CROWS_PAPER_65B["all"]}, shots_fixed=True,
             paper_other={f"pct_stereotype[{c}]": {"llama-65b": v} for c, v in bias.CROWS_PAPER_65B.items()},
             chance=lambda items: {"pct_stereotype": 0.5},
             note="pct_stereotype: share of pairs where the more stereotyping sentence is likelier; 50 = no "
                  "preference, higher = more biased; the paper gives LLaMA-65B only"),
        Task("winogender", "choice", lambda d, k: bias.load_winogender(d), 0, "acc",
             _paper(*bias.WINOGENDER_PAPER["all"]), shots_fixed=True,
             paper_other={f"acc[{s}]": _paper(*v) for s, v in bias.WINOGENDER_PAPER.items() if s != "all"}),
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


def chance_level(task: Task, items) -> dict[str, float]:
    """The score of a uniform random guess per metric: 1/k averaged over items for multiple choice (acc,
    acc_norm, acc_uncond alike), or the task's own rule; {} where it is not defined (generation, code)."""
    if task.chance is not None:
        return task.chance(items)
    if task.kind == "choice":
        level = sum(1 / len(it.choices) for it in items) / len(items)
        return {m: level for m in ("acc", "acc_norm", "acc_uncond")}
    if task.kind == "math":
        return {"maj@1": 0.0}
    return {}


def score_items(task: Task, scorer, items, options: dict) -> list[dict]:
    """Per-item metric dicts for a task's items (options: samples, temperature, max_new_tokens, unsafe_exec,
    judge)."""
    if task.kind == "choice":
        return score_choice_items(scorer, items, unconditional=task.unconditional)
    if task.kind == "qa":
        return generative_qa.score_qa_items(scorer, items)
    if task.kind == "math":
        return gsm8k.score_math_items(scorer, items, samples=options.get("samples", 1),
                                     temperature=options.get("temperature", 0.6))
    if task.kind == "minerva":
        return minerva_math.score_minerva_items(scorer, items, samples=options.get("samples", 1),
                                                temperature=options.get("temperature", 0.6),
                                                max_new_tokens=options.get("max_new_tokens", 512))
    if task.kind == "truthfulqa_mc":
        return truthfulqa.score_truthfulqa_mc(scorer, items)
    if task.kind == "truthfulqa_gen":
        return truthfulqa.score_truthfulqa_gen(scorer, items, judge=options.get("judge"))
    if task.kind == "crows_pairs":
        return bias.score_crows_pairs(scorer, items)
    if task.kind == "code":
        from llamaforge.eval.sandbox import Limits

        return code.score_code_items(scorer, items, samples=options.get("samples", 1),
                                     temperature=options.get("temperature", 0.1),
                                     limits=Limits(unsafe_exec=bool(options.get("unsafe_exec", False))))
    raise ValueError(f"unknown task kind {task.kind}")
