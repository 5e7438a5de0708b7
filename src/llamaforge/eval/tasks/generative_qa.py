"""Closed-book question answering, the paper's App. A: NaturalQuestions (open) and TriviaQA.

Prompt: "Answer these questions:\\n" then `shots` answered pairs "Q: ...\\nA: ...\\n" then "Q: <question>\\nA:".
Greedy decoding, cut at the first line break, period or comma; exact match after normalization (lowercase,
no punctuation, no articles, single spaces) against any gold alias. 0, 1, 5 or 64 shots.

Exemplars never come from the evaluated questions: NQ draws them from the EfficientQA dev set when it is present
(else from the end of the NQ file, which is then not evaluated); TriviaQA from the last 64 items of its file.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from llamaforge.eval.items import exact_match
from llamaforge.eval.taskfile import read_jsonl
from llamaforge.eval.tasks.multiple_choice import GAUNTLET, find_data

STOP = ["\n", ".", ","]
HEADER = "Answer these questions:\n"
POOL = 64  # exemplars held out of the evaluated set


@dataclass
class QAItem:
    """An open-domain QA item: the prompt (with exemplars) and the accepted answers."""
    prompt: str
    answers: list[str]


def _prompt(question: str, exemplars: list[tuple[str, list[str]]]) -> str:
    shots = "".join(f"Q: {q}\nA: {a[0]}\n" for q, a in exemplars)
    return f"{HEADER}{shots}Q: {question}\nA:"


def _with_shots(qa: list[tuple[str, list[str]]], pool: list[tuple[str, list[str]]], shots: int, seed: int):
    rng = random.Random(seed)
    return [QAItem(_prompt(q, rng.sample(pool, min(shots, len(pool)))), a) for q, a in qa]


def load_nq_open(data_dir: Path, shots: int = 0, seed: int = 1234) -> list[QAItem]:
    """NaturalQuestions-open dev (Lee et al. 2019), prompted "Q: ...\nA:" with `shots` exemplars drawn with `seed`
    from the EfficientQA dev file (else from the last questions, held out). Raises UserError when the data is absent.
    """
    path = find_data(data_dir, "nq_open", ["nq-open/NQ-open.dev.jsonl"])
    qa = [(d["question"], list(d["answer"])) for _, d in read_jsonl(path)]
    pool_file = path.parent / "NQ-open.efficientqa.dev.1.1.jsonl"
    if pool_file.exists():
        pool = [(d["question"], list(d["answer"])) for _, d in read_jsonl(pool_file)]
    else:
        qa, pool = qa[:-POOL], qa[-POOL:]
    return _with_shots(qa, pool, shots, seed)


def load_triviaqa(data_dir: Path, shots: int = 0, seed: int = 1234) -> list[QAItem]:
    """The staged subset stores "Question: ...?\\nAnswer:"; the question is taken out and re-prompted."""
    path = find_data(data_dir, "triviaqa", [f"{GAUNTLET}/triviaqa_sm_sub.jsonl"])
    qa = []
    for _, d in read_jsonl(path):
        question = d["context"].removeprefix("Question:").removesuffix("Answer:").strip()
        qa.append((question, [d["answer"], *d.get("aliases", [])]))
    return _with_shots(qa[:-POOL], qa[-POOL:], shots, seed)


def score_qa_items(scorer, items: list[QAItem], max_new_tokens: int = 32) -> list[dict]:
    """Greedy answers (at most max_new_tokens) cut at the first newline, period or comma; exact match after SQuAD's
    normalization against any accepted answer.
    """
    prompts = [scorer.tokenizer.encode(it.prompt, bos=True) for it in items]
    out = []
    for it, (answer,) in zip(items, scorer.generate_many(prompts, until=STOP, max_new_tokens=max_new_tokens)):
        answer = answer.strip()
        out.append({"exact_match": exact_match(answer, it.answers), "prediction": answer})
    return out
