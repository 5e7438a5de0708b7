"""`llamaforge demo` (the `demo` flow) end to end on a cut-down corpus and a few steps: every stage runs and reports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "llamaforge", "demo", "--out", str(out), "--corpus-mb=0.3", "--vocab-size=512",
           "--training.steps=4", "--checkpoint.every=2", "--metrics.val_every=2", "--metrics.progress=false",
           "--model.n_layers=2", "--model.dim=64", "--training.micro_batch_size=8", "--eval.limit=5",
           "--eval.tasks=['piqa']", "--no-progress"]
    r = subprocess.run(cmd, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "bits/byte" in r.stdout and "sample, prompt 'def '" in r.stdout
    for name in ("code", "docs"):
        assert f"{name}: weight" in r.stdout and (out / "tokens" / name / "header.json").is_file()
    assert (out / "tokenizer" / "tokenizer.model").is_file() and (out / "train" / "loss.png").is_file()
    assert (out / "report" / "report.md").is_file() and (out / "export" / "hf" / "tokenizer.model").is_file()
    assert (out / "train" / "final" / "tokenizer.model").is_file()
