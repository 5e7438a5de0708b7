"""Training faults (issue #18): skipped updates reported everywhere, torn metrics lines, leftovers of killed runs,
untrusted checkpoints, bad data and checkpoints answered in one line."""

from __future__ import annotations

import json

import pytest

from llamaforge.train.metrics import read_metrics


def test_every_skipped_update_is_reported(tmp_path, monkeypatch):
    from llamaforge.train import load_config, train, trainer

    calls = {"n": 0}
    real = trainer.SpikeGuard._reason

    def forced(self, loss, grad_norm):
        calls["n"] += 1
        return "forced for the test" if calls["n"] == 2 else real(self, loss, grad_norm)

    monkeypatch.setattr(trainer.SpikeGuard, "_reason", forced)
    cfg = load_config("debug", ["--training.steps=4", "--metrics.log_every=100", "--checkpoint.every=0",
                                "--metrics.val_every=0"])
    summary = train(cfg, tmp_path)
    skipped = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "skipped" in r]
    assert [(r["step"], r["skipped"]) for r in skipped] == [(2, "forced for the test")]  # not a log step: logged
    assert summary.skipped_updates == 1
