"""Mistakes a second new user made on real input (notes/user2.md, helper "fix3"): each is refused with one `error:`
line naming the flag or file, exit 2, nothing touched, where it used to lose data or say the wrong thing."""

from __future__ import annotations

import json

import pytest

from conftest import shared_path
from llamaforge import cli


def _tree(folder):
    """Every file under `folder` with its bytes: what "nothing touched" compares."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error(capsys, rc) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_train_and_finetune_refuse_to_start_over_a_previous_run(tmp_path, capsys):
    """`finetune M --out EXISTING` (and `train`) without --resume silently started over: metrics.jsonl truncated,
    checkpoints replaced. Now one line naming the folder and both ways on; the old run is left byte for byte."""
    out = tmp_path / "run"
    base = ["train", "--recipe", "debug", "--out", str(out), "--training.steps=2", "--checkpoint.every=2",
            "--metrics.val_every=0", "--metrics.progress=false"]
    assert cli.main(base) == 0
    before = _tree(out)
    assert "metrics.jsonl" in before and any(k.startswith("checkpoints/") for k in before)
    capsys.readouterr()
    line = _error(capsys, cli.main([*base, "--training.steps=3"]))
    assert line.startswith(f"error: {out}: --out: holds a previous run (") and "--resume auto" in line, line
    assert "metrics.jsonl" in line and "checkpoints/" in line
    assert _tree(out) == before
    # finetune into a run folder (here the train run's): refused before the model or data are read
    tok = shared_path("llama2-tokenizer/tokenizer.model")
    data = tmp_path / "a.json"
    data.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "hi"}] * 4))
    line = _error(capsys, cli.main(["finetune", str(out / "final"), "--tokenizer", str(tok), "--data", str(data),
                                    "--out", str(out)]))
    assert line.startswith(f"error: {out}: --out: holds a previous run (") and "--resume auto" in line, line
    assert _tree(out) == before
    # --resume auto continues it; an existing empty folder is a fresh start
    assert cli.main([*base, "--training.steps=3", "--resume", "auto"]) == 0
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(x)] == [1, 2, 3]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["train", "--recipe", "debug", "--out", str(empty), "--training.steps=1",
                     "--metrics.val_every=0", "--metrics.progress=false", "--checkpoint.every=0"]) == 0
