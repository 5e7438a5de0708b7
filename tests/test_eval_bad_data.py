"""Benchmark loaders on missing, truncated and malformed files (issue #18): one line naming the file, never a
traceback, never a silently scored bad item (HellaSwag gold 7 of 4 endings)."""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import pytest

from llamaforge.errors import UserError
from llamaforge.eval.items import ChoiceItem
from llamaforge.eval.tasks.code import load_humaneval, load_mbpp
from llamaforge.eval.tasks.multiple_choice import load_hellaswag, load_mmlu, load_piqa

HS_ITEM = ["A man is sitting on a roof.", "1", "He starts pulling up roofing.", "He is using wrap.",
           "He is ripping level tiles.", "He holds a can of spray."]


def hellaswag(tmp: Path, lines: list[str], raw: bytes | None = None) -> Path:
    path = tmp / "hellaswag" / "hellaswag_val_full.txt.bz2"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw if raw is not None else bz2.compress("\n".join(lines).encode()))
    return tmp


def one_line(call, *names):
    with pytest.raises(UserError) as e:
        call()
    assert "\n" not in str(e.value)
    for name in names:
        assert name in str(e.value), str(e.value)


def test_hellaswag(tmp_path):
    assert len(load_hellaswag(hellaswag(tmp_path, HS_ITEM * 2))) == 2  # the control
    bad_gold = HS_ITEM[:1] + ["7"] + HS_ITEM[2:]
    one_line(lambda: load_hellaswag(hellaswag(tmp_path, HS_ITEM + bad_gold)), "hellaswag_val_full.txt.bz2:8", "gold")
    one_line(lambda: load_hellaswag(hellaswag(tmp_path, HS_ITEM + HS_ITEM[:4])), "truncated")
    data = bz2.compress("\n".join(HS_ITEM * 50).encode())
    one_line(lambda: load_hellaswag(hellaswag(tmp_path, [], data[: len(data) // 2])), "hellaswag_val_full.txt.bz2")
    one_line(lambda: load_hellaswag(hellaswag(tmp_path, [], b"not bz2 at all")), "hellaswag_val_full.txt.bz2")


def test_choice_item_refuses_a_gold_outside_its_choices():
    with pytest.raises(ValueError, match="gold"):
        ChoiceItem.shared_context("ctx", ["a", "b", "c", "d"], 7)
    with pytest.raises(ValueError, match="gold"):
        ChoiceItem.shared_context("ctx", ["a", "b"], -1)


def piqa(tmp: Path, docs: list, labels: str) -> Path:
    folder = tmp / "piqa"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "valid.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "valid-labels.lst").write_text(labels)
    return tmp


def test_piqa(tmp_path):
    doc = {"goal": "open a jar", "sol1": "twist the lid", "sol2": "hit it"}
    assert len(load_piqa(piqa(tmp_path, [doc, doc], "0\n1\n"))) == 2
    one_line(lambda: load_piqa(piqa(tmp_path, [doc, doc], "0\n7\n")), "valid-labels.lst:2", "label")
    one_line(lambda: load_piqa(piqa(tmp_path, [doc, {"goal": "x"}], "0\n1\n")), "valid.jsonl:2", "sol1")
    one_line(lambda: load_piqa(piqa(tmp_path, [doc, doc], "0\n")), "valid-labels.lst")
    (tmp_path / "piqa" / "valid.jsonl").write_text(json.dumps(doc) + '\n{"goal": "cut')
    one_line(lambda: load_piqa(tmp_path), "valid.jsonl:2")
    (tmp_path / "piqa" / "valid-labels.lst").unlink()
    one_line(lambda: load_piqa(tmp_path), "valid-labels.lst")


def mmlu(tmp: Path, test_rows: str, dev_rows: str = "q,a,b,c,d,A\n") -> Path:
    for split, rows in (("test", test_rows), ("dev", dev_rows)):
        (tmp / "mmlu" / split).mkdir(parents=True, exist_ok=True)
        (tmp / "mmlu" / split / f"anatomy_{split}.csv").write_text(rows)
    return tmp


def test_mmlu(tmp_path):
    assert len(load_mmlu(mmlu(tmp_path, "q,a,b,c,d,B\n"), shots=1)) == 1
    one_line(lambda: load_mmlu(mmlu(tmp_path, "q,a,b,c,d,Z\n"), shots=1), "anatomy_test.csv:", "answer")
    one_line(lambda: load_mmlu(mmlu(tmp_path, "q,a,b,c,d,7\n"), shots=1), "anatomy_test.csv:", "answer")
    one_line(lambda: load_mmlu(mmlu(tmp_path, "q,a,b\n"), shots=1), "anatomy_test.csv:", "6 columns")
    (tmp_path / "mmlu" / "test" / "anatomy_test.csv").write_bytes(b"q,\xff\xfe,b,c,d,A\n")
    one_line(lambda: load_mmlu(tmp_path, shots=1), "anatomy_test.csv")
    (tmp_path / "mmlu" / "dev" / "anatomy_dev.csv").unlink()
    (tmp_path / "mmlu" / "test" / "anatomy_test.csv").write_text("q,a,b,c,d,A\n")
    one_line(lambda: load_mmlu(tmp_path, shots=1), "anatomy_dev.csv")


HE = {"task_id": "HumanEval/0", "prompt": "def f():\n", "test": "def check(c):\n    assert c() == 1\n",
      "entry_point": "f", "canonical_solution": "    return 1\n"}


def humaneval(tmp: Path, lines: bytes) -> Path:
    path = tmp / "humaneval" / "HumanEval.jsonl.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(lines))
    return path


def test_humaneval(tmp_path):
    good = (json.dumps(HE) + "\n").encode()
    humaneval(tmp_path, good * 3)
    assert len(load_humaneval(tmp_path)) == 3
    path = humaneval(tmp_path, good * 3)
    path.write_bytes(path.read_bytes()[:-12])  # truncated gzip
    one_line(lambda: load_humaneval(tmp_path), "HumanEval.jsonl.gz")
    humaneval(tmp_path, good + json.dumps({**HE, "entry_point": 3}).encode())
    one_line(lambda: load_humaneval(tmp_path), "HumanEval.jsonl.gz:2", "entry_point")
    humaneval(tmp_path, good + b"[1, 2]\n")
    one_line(lambda: load_humaneval(tmp_path), "HumanEval.jsonl.gz:2")
    humaneval(tmp_path, json.dumps({**HE, "entry_point": "f)\nimport os\n(f"}).encode())
    one_line(lambda: load_humaneval(tmp_path), "entry_point")
    path.unlink()
    one_line(lambda: load_humaneval(tmp_path), "humaneval")


def test_mbpp(tmp_path):
    folder = tmp_path / "mbpp"
    folder.mkdir()
    rows = [{"task_id": i, "text": "t", "code": "def f(): return 1", "test_list": ["assert f() == 1"]}
            for i in (2, 3, 4, 11)]
    (folder / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(load_mbpp(tmp_path)) == 1
    bad = rows[:3] + [{"task_id": 11, "text": "t", "code": "x"}]
    (folder / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    one_line(lambda: load_mbpp(tmp_path), "mbpp.jsonl:4", "test_list")
    (folder / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[1:]))
    one_line(lambda: load_mbpp(tmp_path), "task_id 2")
    (folder / "mbpp.jsonl").write_text(json.dumps(rows[0]) + '\n{"task_id": 3, "te')
    one_line(lambda: load_mbpp(tmp_path), "mbpp.jsonl:2")
