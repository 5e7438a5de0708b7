"""What a task is made of, and how each kind of item is scored.

- `ChoiceItem`: pick one of several continuations (HellaSwag, PIQA, ARC, BoolQ, SIQA, WinoGrande, OBQA, MMLU).
  Metrics per item (1.0 right / 0.0 wrong):
  `acc` argmax of log p; `acc_norm` argmax of log p / characters of the choice (lm-evaluation-harness's acc_norm,
  and the paper's rule for most tasks); `acc_uncond` argmax of log p(c | ctx) - log p(c | "Answer:") (the
  paper's rule for OpenBookQA and BoolQ, after GPT-3), computed only when the task asks for it.
- `ContinuationItem`: log p of one continuation (LAMBADA-style): `acc` = the continuation is the greedy decode.
- Generation items (QA, math, code) are scored in their task files with the helpers at the end of this file.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import comb

import numpy as np

UNCONDITIONAL_CONTEXT = "Answer:"  # the paper's (and GPT-3's) calibration context for OBQA and BoolQ


@dataclass
class ChoiceItem:
    """A multiple-choice item: one (context, continuation) pair per choice; the continuation carries the
    delimiter (" "), `choices` the bare texts whose character lengths normalize acc_norm.
    """
    contexts: list[str]  # one per choice (equal for ordinary multiple choice, different under partial scoring)
    continuations: list[str]  # one per choice, with the delimiter (" ") in front
    gold: int
    choices: list[str]  # the choice texts without delimiter: their lengths normalize acc_norm
    groups: list[str] = field(default_factory=list)  # the item's splits (subject, category), for per-split scores

    def __post_init__(self):
        n = len(self.choices)
        if not (len(self.contexts) == len(self.continuations) == n and n >= 2):
            raise ValueError(f"choices: expected at least 2, with one context and continuation each, got {n}")
        if isinstance(self.gold, bool) or not isinstance(self.gold, int) or not 0 <= self.gold < n:
            raise ValueError(f"gold: expected the index of one of the {n} choices (0-{n - 1}), got {self.gold!r}")

    @classmethod
    def shared_context(cls, context: str, choices: Sequence[str], gold: int, delimiter: str = " ") -> ChoiceItem:
        """Ordinary multiple choice: the same `context` for every choice, each continuation `delimiter + choice`."""
        return cls([context] * len(choices), [delimiter + c for c in choices], gold, list(choices))

    @classmethod
    def partial(cls, context_options: Sequence[str], continuation: str, gold: int, delimiter=" ") -> ChoiceItem:
        """Partial scoring (Trinh & Le 2018): score the shared continuation after each option's context."""
        n = len(context_options)
        return cls(list(context_options), [delimiter + continuation] * n, gold, [continuation] * n)


@dataclass
class ContinuationItem:
    """A language-modelling item (LAMBADA-style): log p(continuation | context); acc when it is the greedy decode."""
    context: str
    continuation: str


def score_choice_items(scorer, items: Sequence[ChoiceItem], unconditional: bool = False) -> list[dict]:
    """Per-item metrics for multiple choice, with every (context, continuation) pair scored in one batched call."""
    pairs = [(c, x) for it in items for c, x in zip(it.contexts, it.continuations)]
    if unconditional:  # log p(choice | "Answer:"): one extra request per distinct choice
        pairs += [(UNCONDITIONAL_CONTEXT, x) for it in items for x in it.continuations]
    lls = [lp for lp, _ in scorer.loglikelihood(pairs)]
    n_cond = sum(len(it.choices) for it in items)
    out, at = [], 0
    for it in items:
        k = len(it.choices)
        ll = np.array(lls[at : at + k])
        metrics = {
            "acc": float(np.argmax(ll) == it.gold),
            "acc_norm": float(np.argmax(ll / np.array([max(len(c), 1) for c in it.choices])) == it.gold),
        }
        if unconditional:
            ll_uncond = np.array(lls[n_cond + at : n_cond + at + k])
            metrics["acc_uncond"] = float(np.argmax(ll - ll_uncond) == it.gold)
        metrics["loglikelihoods"] = ll.tolist()  # kept per item for inspection and parity tests
        if it.groups:
            metrics["groups"] = list(it.groups)
        out.append(metrics)
        at += k
    return out


def score_continuation_items(scorer, items: Sequence[ContinuationItem]) -> list[dict]:
    """Per item: {"acc": 1.0 when the continuation is the greedy decode, "loglikelihood": log p in nats}, in one batched
    call.
    """
    results = scorer.loglikelihood([(it.context, it.continuation) for it in items])
    return [{"acc": float(greedy), "loglikelihood": lp} for lp, greedy in results]


# ---------------------------------------------------------------------------------------------------------------
# generation metrics


def normalize_answer(text: str) -> str:
    """The SQuAD / paper normalization: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalized prediction equals any normalized gold alias."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def majority(values: Sequence[str | None]) -> str | None:
    """The most common non-None value (maj@k); ties go to the value seen first."""
    counts = Counter(v for v in values if v is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(v for v in values if v is not None and counts[v] == best)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)
