"""Code generation: HumanEval (0-shot) and MBPP (3-shot, Austin et al.), pass@k with the unbiased estimator.

Each problem is completed n times (greedy when n = 1, else sampled; the paper: pass@1 at temperature 0.1,
pass@100 / pass@80 at 0.8); each completion runs with the problem's tests in `llamaforge.eval.sandbox`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llamaforge.errors import UserError
from llamaforge.eval.items import pass_at_k
from llamaforge.eval.sandbox import Limits, run_programs
from llamaforge.eval.taskfile import read_jsonl
from llamaforge.eval.tasks.multiple_choice import GAUNTLET, field_of, find_data

HUMANEVAL_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
MBPP_STOP = ["[DONE]"]


@dataclass
class CodeItem:
    """A code-generation problem: the prompt the model continues and the program around the completion that the tests
    run.
    """
    task_id: str
    prompt: str  # what the model continues
    program_head: str  # what goes before the completion in the program (HumanEval: the prompt; MBPP: nothing)
    tests: str  # appended after the completion; the program passes when it exits with status 0
    reference: str  # a known-good completion (the canonical solution)


def load_humaneval(data_dir: Path) -> list[CodeItem]:
    """HumanEval's 164 problems (Chen et al. 2021) from HumanEval.jsonl.gz (or the staged gauntlet copy): the
    prompt is the function signature and docstring, the tests call check(entry_point). Raises UserError when the
    data is not under data_dir.
    """
    path = find_data(data_dir, "humaneval", ["humaneval/HumanEval.jsonl.gz", f"{GAUNTLET}/human_eval.jsonl"])
    items = []
    for n, p in read_jsonl(path):  # plain or gzip; truncated or bad lines are FILE:LINE errors
        where = f"{path}:{n}"
        task_id, prompt, test, entry, solution = (
            field_of(p, k, str, where) for k in ("task_id", "prompt", "test", "entry_point", "canonical_solution"))
        if not entry.isidentifier():
            raise UserError(f"{where}: entry_point: expected a Python function name, got {entry!r}")
        items.append(CodeItem(task_id, prompt, prompt, f"\n{test}\ncheck({entry})\n", solution))
    return items


def _mbpp_prompt(problem: dict) -> str:
    tests = "\n".join(problem["test_list"])
    return f"You are an expert Python programmer, and here is your task: {problem['text']} " \
           f"Your code should pass these tests:\n\n{tests}\n"


def load_mbpp(data_dir: Path, shots: int = 3) -> list[CodeItem]:
    """The test split (task ids 11-510) with shots from the prompt split (ids 2-4), in Austin et al.'s format."""
    path = find_data(data_dir, "mbpp", ["mbpp/mbpp.jsonl"])
    problems = {}
    for n, d in read_jsonl(path):
        where = f"{path}:{n}"
        field_of(d, "task_id", int, where)
        for key in ("text", "code"):
            field_of(d, key, str, where)
        tests = field_of(d, "test_list", list, where)
        if not all(isinstance(t, str) for t in tests):
            raise UserError(f"{where}: test_list: expected a list of strings")
        if not isinstance(d.get("test_setup_code", ""), str):
            raise UserError(f"{where}: test_setup_code: expected a string")
        problems[d["task_id"]] = d
    missing = [i for i in (2, 3, 4)[:shots] if i not in problems]
    if missing:
        raise UserError(f"{path}: task_id {missing[0]}: missing; the few-shot examples are MBPP's tasks 2-4")
    demo = "".join(f"{_mbpp_prompt(problems[i])}[BEGIN]\n{problems[i]['code']}\n[DONE]\n" for i in (2, 3, 4)[:shots])
    items = []
    for task_id in range(11, 511):
        p = problems.get(task_id)
        if p is None:
            continue
        tests = "\n" + p.get("test_setup_code", "") + "\n" + "\n".join(p["test_list"]) + "\n"
        items.append(CodeItem(f"MBPP/{task_id}", f"{demo}{_mbpp_prompt(p)}[BEGIN]\n", "", tests, p["code"]))
    return items


def program(item: CodeItem, completion: str) -> str:
    """The program that is run: program head + the completion + the item's tests."""
    return item.program_head + completion + "\n" + item.tests


def score_code_items(
    scorer, items: list[CodeItem], samples: int = 1, temperature: float = 0.0, ks=(1, 10, 100),
    max_new_tokens: int = 384, limits: Limits | None = None, seed: int = 0,
) -> list[dict]:
    """pass@k per item (Chen et al. 2021's unbiased estimator) for every k <= samples, from `samples`
    completions per problem run in the OS sandbox; greedy when samples is 1, as the paper's pass@1.
    """
    stop = MBPP_STOP if items and items[0].task_id.startswith("MBPP") else HUMANEVAL_STOP
    prompts = [scorer.tokenizer.encode(it.prompt, bos=True) for it in items]
    completions = scorer.generate_many(
        prompts, stop, max_new_tokens, temperature=temperature if samples > 1 else 0.0, num_samples=samples, seed=seed
    )
    outcomes = run_programs([program(it, c) for it, cs in zip(items, completions) for c in cs], limits)
    out = []
    for i, it in enumerate(items):
        correct = sum(o.passed for o in outcomes[i * samples : (i + 1) * samples])
        out.append({f"pass@{k}": pass_at_k(samples, correct, k) for k in ks if k <= samples})
    return out
