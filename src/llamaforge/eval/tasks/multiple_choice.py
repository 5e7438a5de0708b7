"""Multiple-choice tasks, read from the files of `--data-dir` (the layout of the staged data, see SOURCES.md).

Prompts follow lm-evaluation-harness's templates where our data allows, so that `acc` / `acc_norm` can be compared
with it item for item; the paper's metric per task is `acc_norm` (likelihood per character), or `acc_uncond`
for OpenBookQA and BoolQ. All are zero-shot in the paper except MMLU (5-shot, answer letters).
"""

from __future__ import annotations

import bz2
import csv
import random
from collections.abc import Sequence
from pathlib import Path

from llamaforge.errors import UserError
from llamaforge.eval.items import ChoiceItem
from llamaforge.eval.taskfile import parse_line, read_jsonl

GAUNTLET = "llm-foundry-gauntlet"


def find_data(data_dir: Path, task: str, candidates: Sequence[str]) -> Path:
    """The first candidate file under data_dir, or a UserError that lists where it was looked for."""
    for rel in candidates:
        if (Path(data_dir) / rel).exists():
            return Path(data_dir) / rel
    raise UserError(f"{data_dir}: no data for task {task}; expected one of: {', '.join(candidates)}")


def _mc_jsonl(path: Path, suffix: str = "") -> list[ChoiceItem]:
    """A `{"query", "choices", "gold"}` file; `suffix` completes the query into the harness's prompt."""
    items = []
    for n, obj in read_jsonl(path):
        item = parse_line(obj, f"{path}:{n}")
        if suffix:
            item.contexts = [c + suffix for c in item.contexts]
        items.append(item)
    return items


def load_hellaswag(data_dir: Path) -> list[ChoiceItem]:
    """HellaSwag validation: 6 lines per item (context, gold, 4 endings), already cleaned like lm-eval's."""
    path = find_data(data_dir, "hellaswag", ["hellaswag/hellaswag_val_full.txt.bz2", f"{GAUNTLET}/hellaswag.jsonl"])
    if path.suffix == ".jsonl":
        return _mc_jsonl(path)
    with bz2.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    items = []
    for i in range(0, len(lines) - 5, 6):
        context, gold, endings = lines[i], lines[i + 1], lines[i + 2 : i + 6]
        if not gold.strip().isdigit():
            raise UserError(f"{path}:{i + 2}: expected the gold ending's index (0-3), got {gold!r}")
        items.append(ChoiceItem.shared_context(context, endings, int(gold)))
    return items


def load_piqa(data_dir: Path) -> list[ChoiceItem]:
    path = find_data(data_dir, "piqa", ["piqa/valid.jsonl"])
    labels = (path.parent / "valid-labels.lst").read_text().split()
    docs = read_jsonl(path)
    if len(labels) != len(docs):
        raise UserError(f"{path.parent / 'valid-labels.lst'}: {len(labels)} labels for {len(docs)} questions")
    return [
        ChoiceItem.shared_context(f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], int(label))
        for (_, d), label in zip(docs, labels)
    ]


def load_arc_easy(data_dir: Path) -> list[ChoiceItem]:
    return _mc_jsonl(find_data(data_dir, "arc_easy", [f"{GAUNTLET}/arc_easy.jsonl"]), suffix="\nAnswer:")


def load_arc_challenge(data_dir: Path) -> list[ChoiceItem]:
    return _mc_jsonl(find_data(data_dir, "arc_challenge", [f"{GAUNTLET}/arc_challenge.jsonl"]), suffix="\nAnswer:")


def load_boolq(data_dir: Path) -> list[ChoiceItem]:
    return _mc_jsonl(find_data(data_dir, "boolq", [f"{GAUNTLET}/boolq.jsonl"]), suffix="\nAnswer:")


def load_siqa(data_dir: Path) -> list[ChoiceItem]:
    """Social IQa as staged: the query lists the lettered answers and ends in "Answer:"; choices are letters."""
    return _mc_jsonl(find_data(data_dir, "siqa", [f"{GAUNTLET}/siqa.jsonl"]))


def load_winogrande(data_dir: Path) -> list[ChoiceItem]:
    """WinoGrande dev in the schema format: partial scoring of the text after the blank."""
    return _mc_jsonl(find_data(data_dir, "winogrande", [f"{GAUNTLET}/winogrande.jsonl"]))


def load_openbookqa(data_dir: Path) -> list[ChoiceItem]:
    """OpenBookQA is not in the staged data: any `{"query", "choices", "gold"}` file at these paths works."""
    candidates = ["openbookqa/test.jsonl", "openbookqa.jsonl", f"{GAUNTLET}/openbookqa.jsonl"]
    return _mc_jsonl(find_data(data_dir, "openbookqa", candidates))


# ---------------------------------------------------------------------------------------------------------------
# MMLU: the original Hendrycks prompt, 5 dev examples per subject, scored on the answer letter

LETTERS = ["A", "B", "C", "D"]


def _read_mmlu_csv(path: Path) -> list[tuple[str, list[str], int]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if rows and rows[0][:1] == ["question"]:  # the staged copy has a header and 0-3 answers
        rows = rows[1:]
    out = []
    for n, row in enumerate(rows, 2):
        if len(row) != 6:
            raise UserError(f"{path}:{n}: expected 6 columns (question, 4 choices, answer), got {len(row)}")
        answer = row[5].strip()
        gold = LETTERS.index(answer) if answer in LETTERS else int(answer)
        out.append((row[0], row[1:5], gold))
    return out


def _mmlu_question(question: str, choices: list[str]) -> str:
    return question + "".join(f"\n{letter}. {c}" for letter, c in zip(LETTERS, choices)) + "\nAnswer:"


def load_mmlu(data_dir: Path, shots: int = 5) -> list[ChoiceItem]:
    root = find_data(data_dir, "mmlu", ["mmlu"])
    items = []
    for test_file in sorted((root / "test").glob("*_test.csv")):
        subject = test_file.name[: -len("_test.csv")]
        dev = _read_mmlu_csv(root / "dev" / f"{subject}_dev.csv")[:shots]
        header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        examples = "".join(f"{_mmlu_question(q, c)} {LETTERS[g]}\n\n" for q, c, g in dev)
        for q, c, g in _read_mmlu_csv(test_file):
            items.append(ChoiceItem.shared_context(header + examples + _mmlu_question(q, c), LETTERS, g))
    if not items:
        raise UserError(f"{root}: no test/*_test.csv files for mmlu")
    return items


# ---------------------------------------------------------------------------------------------------------------


def add_shots(items: list[ChoiceItem], shots: int, seed: int = 1234) -> list[ChoiceItem]:
    """Prefix each item with `shots` other items of the set, answered (for tasks without a separate train split)."""
    if shots <= 0:
        return items
    rng = random.Random(seed)
    out = []
    for i, it in enumerate(items):
        drawn = rng.sample(range(len(items)), min(shots + 1, len(items)))
        others = [j for j in drawn if j != i][:shots]
        demo = "".join(items[j].contexts[items[j].gold] + items[j].continuations[items[j].gold] + "\n\n" for j in others)
        out.append(ChoiceItem([demo + c for c in it.contexts], it.continuations, it.gold, it.choices))
    return out
