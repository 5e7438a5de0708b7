"""Evaluation during training (the paper's Figure 2): `[eval] tasks, every, limit` in a debug run."""

from __future__ import annotations

import json

import pytest
from conftest import shared_path

from llamaforge import load_model, load_tokenizer
from llamaforge.cli import main
from llamaforge.eval import evaluate_task
from llamaforge.eval.scoring import Scorer


def test_debug_run_logs_task_scores_at_the_right_steps_and_plots(tmp_path, capsys):
    data, tok = shared_path(""), shared_path("stories260K/tok512.bin")
    out = tmp_path / "run"
    rc = main(["train", "--recipe", "debug", "--out", str(out), "--model.vocab_size=512", "--training.steps=4",
               "--checkpoint.every=0", "--metrics.val_every=0", "--eval.tasks=piqa,winogender", "--eval.every=2",
               "--eval.limit=4", f"--eval.data_dir={data}", f"--eval.tokenizer={tok}"])
    assert rc == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    assert [(r["step"], r["tokens"]) for r in evals] == [(2, 1024), (4, 2048)]  # 512 tokens per step
    for r in evals:
        assert {"eval/piqa/acc", "eval/piqa/acc_norm", "eval/winogender/acc"} <= set(r)
    # The last scores are those of the final model, evaluated on its own.
    model, tokenizer = load_model(out / "final"), load_tokenizer(tok)
    for task in ("piqa", "winogender"):
        result, _ = evaluate_task(Scorer(model, tokenizer), task, data, limit=4)
        for metric, value in result.metrics.items():
            if "[" not in metric:
                assert evals[-1][f"eval/{task}/{metric}"] == pytest.approx(value, abs=1e-12)
    assert (out / "eval.png").stat().st_size > 0


def test_eval_section_errors_are_one_line(tmp_path, capsys):
    rc = main(["train", "--recipe", "debug", "--out", str(tmp_path / "r"), "--eval.tasks=piqa"])
    assert rc == 2 and "eval.data_dir" in capsys.readouterr().err
    rc = main(["train", "--recipe", "debug", "--out", str(tmp_path / "r"), "--eval.every=-1"])
    assert rc == 2 and "eval.every" in capsys.readouterr().err


def test_eval_tokenizer_larger_than_the_model_is_one_line_before_anything_is_written(tmp_path, capsys):
    """The debug model has 256 embedding rows, tok512.bin 512 pieces: the first evaluation used to end in an
    IndexError traceback with config.json and metrics.jsonl already written; now check_vocab refuses it first."""
    data, tok = shared_path(""), shared_path("stories260K/tok512.bin")
    out = tmp_path / "run"
    rc = main(["train", "--recipe", "debug", "--out", str(out), "--training.steps=2", "--eval.tasks=winogender",
               "--eval.every=1", "--eval.limit=2", f"--eval.data_dir={data}", f"--eval.tokenizer={tok}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {tok}: eval.tokenizer: vocab_size: the tokenizer has 512 tokens"), err
    assert not out.exists()
