"""RACE-middle and RACE-high (Lai et al. 2017), zero-shot, as in the paper's Table 6.

The paper says it follows "the evaluation setup from Brown et al. (2020)" for RACE. That setup (GPT-3, Appendix G):
- one document per passage: `Article: <passage>\\n\\n`, then the passage's earlier questions answered, then the
  question to answer. A fill-in question ("... _ .") is completed in place; any other question is written as
  `Question: ...\\nAnswer: ...`. The question being scored is appended as it is, and each option follows it after
  one space. This is exactly lm-evaluation-harness's `race` prompt (`preprocess_race.doc_to_text`).
- GPT-3 normalises RACE by the unconditional probability of each option, P(option | context) / P(option |
  "Answer:"), which is `acc_uncond` here and the metric put beside the paper's number. `acc` (lm-eval's race
  metric) and `acc_norm` are reported too.

Every question of the test set is scored (RACE-high 3,498, RACE-middle 1,436, the counts GPT-3 reports), each with
its passage's earlier questions as context. lm-eval's `race` scores only the last question of each passage; those
items of ours are its documents, prompt for prompt (tests/test_eval_new_tasks.py checks that).
"""

from __future__ import annotations

from pathlib import Path

from llamaforge.errors import UserError
from llamaforge.eval.items import ChoiceItem
from llamaforge.eval.taskfile import read_jsonl
from llamaforge.eval.tasks.multiple_choice import find_data

LETTERS = "ABCD"


def _answered(question: str, answer: str) -> str:
    """An earlier question of the passage with its answer, in GPT-3's / lm-eval's form."""
    if question.endswith("  _  ."):  # a fill-in-the-blank question: complete the sentence
        return question[:-5] + answer + "\n"
    return f"Question: {question}\nAnswer: {answer}\n"


def load_race(data_dir: Path, level: str) -> list[ChoiceItem]:
    """Every question of RACE-`level` ("middle" or "high") test as a 4-way ChoiceItem (see the module docstring).

    Reads `race/test_{level}.jsonl` (one passage per line, the original RACE files). Raises UserError on a
    malformed passage (answer not in A-D, options not 4)."""
    path = find_data(data_dir, f"race_{level}", [f"race/test_{level}.jsonl"])
    items = []
    for n, doc in read_jsonl(path):
        try:
            article, questions, options, answers = doc["article"], doc["questions"], doc["options"], doc["answers"]
        except KeyError as e:
            raise UserError(f"{path}:{n}: {e.args[0]}: expected a RACE passage with article, questions, options, "
                            "answers") from None
        context = "Article: " + article + "\n\n"
        for q, (question, opts, answer) in enumerate(zip(questions, options, answers)):
            if answer not in LETTERS or len(opts) != 4:
                raise UserError(f"{path}:{n}: question {q}: expected 4 options and an answer in A-D")
            gold = LETTERS.index(answer)
            items.append(ChoiceItem.shared_context(context + question, opts, gold))
            context += _answered(question, opts[gold])
    return items
