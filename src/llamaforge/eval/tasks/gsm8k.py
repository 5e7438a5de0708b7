"""GSM8K: 8-shot chain of thought, the final number of each sample, majority vote over k samples (maj1@k).

Exemplars are the first 8 problems of the train split, with the calculator annotations `<<...>>` removed and the
final "#### N" turned into "The answer is N." (the paper, like Minerva, samples k = 100 at a temperature; k = 1 is
greedy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llamaforge.eval.items import majority
from llamaforge.eval.taskfile import read_jsonl
from llamaforge.eval.tasks.multiple_choice import GAUNTLET, find_data

STOP = ["\n\nQuestion:", "Question:"]
NUMBER = re.compile(r"-?[\d,]*\.?\d+")


@dataclass
class MathItem:
    """A GSM8K problem: the prompt (exemplars + question) and the final numeric answer as a string."""
    prompt: str
    answer: str


def _solution(answer_field: str) -> tuple[str, str]:
    """("reasoning The answer is N.", "N") from a GSM8K answer "reasoning\\n#### N"."""
    reasoning, _, final = answer_field.partition("####")
    reasoning = re.sub(r"<<[^>]*>>", "", reasoning).strip()
    final = final.strip().replace(",", "")
    return f"{reasoning} The answer is {final}.", final


def extract_number(text: str) -> str | None:
    """The last number in a completion, without thousands separators or a trailing ".0"."""
    found = NUMBER.findall(text)
    if not found:
        return None
    value = found[-1].replace(",", "").rstrip(".")
    return value.removesuffix(".0")


def load_gsm8k(data_dir: Path, shots: int = 8) -> list[MathItem]:
    """GSM8K test (Cobbe et al. 2021) with the first `shots` training problems as exemplars whose reasoning ends
    "The answer is N." (the paper uses 8 shots, maj@1); reads the staged gauntlet layout too.
    """
    path = find_data(data_dir, "gsm8k", ["gsm8k/test.jsonl", f"{GAUNTLET}/gsm8k.jsonl"])
    train = path.parent / "train.jsonl"
    exemplars = ""
    if train.exists():
        for _, d in read_jsonl(train)[:shots]:
            text, _ = _solution(d["answer"])
            exemplars += f"Question: {d['question']}\nAnswer: {text}\n\n"
    items = []
    for _, d in read_jsonl(path):
        if "question" in d:
            question, answer = d["question"], _solution(d["answer"])[1]
        else:  # the gauntlet layout: context / chain_of_thought / answer
            question, answer = d["context"], str(d["answer"]).replace(",", "")
        items.append(MathItem(f"{exemplars}Question: {question}\nAnswer:", answer))
    return items


def score_math_items(
    scorer, items: list[MathItem], samples: int = 1, temperature: float = 0.0, max_new_tokens: int = 256, seed=0
) -> list[dict]:
    """maj@k per item (k = samples): the most frequent last number of the completions equals the answer (the
    paper's maj1@k, Lewkowycz et al. 2022); greedy when samples is 1.
    """
    prompts = [scorer.tokenizer.encode(it.prompt, bos=True) for it in items]
    completions = scorer.generate_many(
        prompts, STOP, max_new_tokens, temperature=temperature if samples > 1 else 0.0, num_samples=samples, seed=seed
    )
    out = []
    for it, texts in zip(items, completions):
        vote = majority([extract_number(t) for t in texts])
        out.append({f"maj@{samples}": float(vote is not None and float(vote) == float(it.answer)), "prediction": vote})
    return out
