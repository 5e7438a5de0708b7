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


def field_of(obj, key: str, kind: type, where: str):
    """obj[key] when obj is a JSON object holding a `kind` there; else a UserError naming `where` and the key."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise UserError(f"{where}: {key}: missing")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise UserError(f"{where}: {key}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


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
    try:
        with bz2.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable bz2 text file ({e})") from None
    while lines and lines[-1] == "":
        lines.pop()
    if not lines or len(lines) % 6:
        raise UserError(f"{path}: {len(lines)} lines: expected 6 per item (context, gold, 4 endings); the file is "
                        "truncated or not HellaSwag's")
    items = []
    for i in range(0, len(lines), 6):
        context, gold, endings = lines[i], lines[i + 1], lines[i + 2 : i + 6]
        if not gold.strip().isdigit() or not 0 <= int(gold) < len(endings):
            raise UserError(f"{path}:{i + 2}: gold: expected the gold ending's index (0-3), got {gold!r}")
        items.append(ChoiceItem.shared_context(context, endings, int(gold)))
    return items


def load_piqa(data_dir: Path) -> list[ChoiceItem]:
    """PIQA validation (Bisk et al. 2020): "Question: goal\nAnswer:" with the two solutions; labels from
    valid-labels.lst.
    """
    path = find_data(data_dir, "piqa", ["piqa/valid.jsonl"])
    label_file = path.parent / "valid-labels.lst"
    try:
        labels = label_file.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{label_file}: cannot read the labels ({e})") from None
    docs = read_jsonl(path)
    if len(labels) != len(docs):
        raise UserError(f"{label_file}: {len(labels)} labels for {len(docs)} questions")
    items = []
    for ((n, d), label), k in zip(zip(docs, labels), range(1, len(labels) + 1)):
        if label not in ("0", "1"):
            raise UserError(f"{label_file}:{k}: label: expected 0 or 1, got {label!r}")
        goal, sol1, sol2 = (field_of(d, key, str, f"{path}:{n}") for key in ("goal", "sol1", "sol2"))
        items.append(ChoiceItem.shared_context(f"Question: {goal}\nAnswer:", [sol1, sol2], int(label)))
    return items


def load_arc_easy(data_dir: Path) -> list[ChoiceItem]:
    """ARC-Easy (Clark et al. 2018) from the staged gauntlet file, each query ending "\nAnswer:"."""
    return _mc_jsonl(find_data(data_dir, "arc_easy", [f"{GAUNTLET}/arc_easy.jsonl"]), suffix="\nAnswer:")


def load_arc_challenge(data_dir: Path) -> list[ChoiceItem]:
    """ARC-Challenge (Clark et al. 2018) from the staged gauntlet file, each query ending "\nAnswer:"."""
    return _mc_jsonl(find_data(data_dir, "arc_challenge", [f"{GAUNTLET}/arc_challenge.jsonl"]), suffix="\nAnswer:")


def load_boolq(data_dir: Path) -> list[ChoiceItem]:
    """BoolQ (Clark et al. 2019) from the staged gauntlet file, each query ending "\nAnswer:"."""
    return _mc_jsonl(find_data(data_dir, "boolq", [f"{GAUNTLET}/boolq.jsonl"]), suffix="\nAnswer:")


def load_siqa(data_dir: Path) -> list[ChoiceItem]:
    """Social IQa as staged: the query lists the lettered answers and ends in "Answer:"; choices are letters."""
    return _mc_jsonl(find_data(data_dir, "siqa", [f"{GAUNTLET}/siqa.jsonl"]))


def load_winogrande(data_dir: Path) -> list[ChoiceItem]:
    """WinoGrande dev in the schema format: partial scoring of the text after the blank."""
    return _mc_jsonl(find_data(data_dir, "winogrande", [f"{GAUNTLET}/winogrande.jsonl"]))


def load_openbookqa(data_dir: Path) -> list[ChoiceItem]:
    """OpenBookQA main test (500 questions) in the released format (`{"id", "question": {"stem", "choices":
    [{"text", "label"}]}, "answerKey"}`, SOURCES.md `openbookqa/`). The prompt is the question stem and each choice
    follows after one space, as lm-evaluation-harness's `openbookqa` task builds it; the paper's metric is
    `acc_uncond` (Brown et al.'s P(choice | stem) / P(choice | "Answer:")). A `{"query", "choices", "gold"}` file
    at the same path is read too."""
    path = find_data(data_dir, "openbookqa", ["openbookqa/test.jsonl", "openbookqa.jsonl", f"{GAUNTLET}/openbookqa.jsonl"])
    items = []
    for n, doc in read_jsonl(path):
        if not isinstance(doc.get("question"), dict):
            items.append(parse_line(doc, f"{path}:{n}"))
            continue
        try:
            choices = doc["question"]["choices"]
            labels = [c["label"] for c in choices]
            items.append(ChoiceItem.shared_context(doc["question"]["stem"], [c["text"] for c in choices],
                                                   labels.index(doc["answerKey"].strip())))
        except (KeyError, ValueError, TypeError):
            raise UserError(f"{path}:{n}: expected OpenBookQA's question.stem, question.choices[{{text, label}}] and "
                            "an answerKey among the labels") from None
    return items


# ---------------------------------------------------------------------------------------------------------------
# MMLU: the original Hendrycks prompt, 5 dev examples per subject, scored on the answer letter

LETTERS = ["A", "B", "C", "D"]


def _read_mmlu_csv(path: Path) -> list[tuple[str, list[str], int]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read the MMLU csv ({e})") from None
    if rows and rows[0][:1] == ["question"]:  # the staged copy has a header and 0-3 answers
        rows = rows[1:]
    out = []
    for n, row in enumerate(rows, 2):
        if len(row) != 6:
            raise UserError(f"{path}:{n}: expected 6 columns (question, 4 choices, answer), got {len(row)}")
        answer = row[5].strip()
        if answer not in LETTERS and answer not in ("0", "1", "2", "3"):
            raise UserError(f"{path}:{n}: answer: expected A-D or 0-3, got {answer!r}")
        gold = LETTERS.index(answer) if answer in LETTERS else int(answer)
        out.append((row[0], row[1:5], gold))
    return out


def _mmlu_question(question: str, choices: list[str]) -> str:
    return question + "".join(f"\n{letter}. {c}" for letter, c in zip(LETTERS, choices)) + "\nAnswer:"


def load_mmlu(data_dir: Path, shots: int = 5) -> list[ChoiceItem]:
    """MMLU test (Hendrycks et al. 2021) in its original prompt: per subject a header and the first `shots`
    dev questions with their answers, then the question with lettered choices; the choices scored are the letters.
    """
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
        out.append(ChoiceItem([demo + c for c in it.contexts], it.continuations, it.gold, it.choices, it.groups))
    return out
