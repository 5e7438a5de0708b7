"""The loop's pieces in one process: spike guard, outputs of a short run (metrics fields, TensorBoard, loss
curve, native + HF export that load back to the same logits), metrics truncation on resume."""

from __future__ import annotations

import json
import math

import torch

from llamaforge.train.metrics import MetricsWriter, read_metrics
from llamaforge.train.trainer import SpikeGuard


def test_spike_guard_skips_outliers_only():
    guard = SpikeGuard(window=20, zscore=6.0, min_history=10)
    for i in range(15):
        assert guard.check(3.0 + 0.01 * (i % 3), 1.0 + 0.02 * (i % 2)) is None
    assert "loss" in guard.check(9.0, 1.0)  # a loss spike
    assert "grad-norm" in guard.check(3.0, 50.0)  # a gradient spike
    assert guard.check(float("nan"), 1.0) == "non-finite loss or grad-norm"
    assert guard.check(3.01, 1.02) is None  # back to normal; the spikes did not enter the window
    assert max(guard.losses) < 3.1 and max(guard.norms) < 1.1
    restored = SpikeGuard(window=20, zscore=6.0)
    restored.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert restored.losses == guard.losses and restored.norms == guard.norms


def test_short_run_outputs(tmp_path):
    from llamaforge import load_model
    from llamaforge.train import load_config, train

    cfg = load_config("debug", ["--training.steps=4", "--training.deterministic=false", "--metrics.tensorboard=true",
                                "--checkpoint.export_hf=true", "--checkpoint.every=0", "--metrics.val_every=2"])
    summary = train(cfg, tmp_path)
    records = read_metrics(tmp_path / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for r in steps:
        assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= r.keys() and math.isfinite(r["loss"])
        assert "mfu" not in r  # no MFU on a CPU: no peak to divide by
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4]
    assert summary.step == 4 and math.isfinite(summary.val_loss)
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert any((tmp_path / "tensorboard").iterdir())
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000004"]
    native, hf = load_model(tmp_path / "final"), load_model(tmp_path / "final_hf")
    tokens = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(hf(tokens), native(tokens), rtol=1e-5, atol=1e-5)


def test_metrics_truncated_on_resume(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=False)
    for step in range(1, 7):
        w.write({"step": step, "loss": float(step)})
    w.close()
    w = MetricsWriter(tmp_path, tensorboard=False, resume_step=4)  # resumed from the step-4 checkpoint
    w.write({"step": 5, "loss": 50.0})
    w.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0)]


def test_activation_checkpointing_keeps_the_math(tmp_path):
    """Recomputing activations (full) or all but matmul/attention outputs (selective) gives the same losses."""
    from llamaforge.train import load_config, train

    losses = {}
    for mode in ("none", "full", "selective"):
        cfg = load_config("debug", ["--training.steps=3", "--training.deterministic=false", "--checkpoint.every=0",
                                    f"--training.activation_checkpointing={mode}"])
        train(cfg, tmp_path / mode)
        losses[mode] = torch.tensor([r["loss"] for r in read_metrics(tmp_path / mode / "metrics.jsonl") if "loss" in r])
    torch.testing.assert_close(losses["full"], losses["none"], rtol=1e-6, atol=0)
    torch.testing.assert_close(losses["selective"], losses["none"], rtol=1e-6, atol=0)
