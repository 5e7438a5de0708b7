"""`llamaforge sweep` end to end on a CPU: tiny IsoFLOP and lr-batch sweeps through the real trainer, a kill in the
middle, the resume, the fit and the plots."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llamaforge.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # tiny models: one thread each is fastest on a shared CPU
ISO = ["sweep", "--recipe", "debug", "--shapes", "16x1,24x1,32x1", "--budgets", "3e8,1e9", "--bootstrap", "5"]


def _cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "llamaforge", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_isoflop_sweep_resumes_after_kill_and_writes_fit_and_plots(tmp_path):
    out = tmp_path / "iso"
    first = _cli([*ISO, "--out", str(out)])
    deadline = time.time() + 240
    while len(list(out.glob("runs/*/result.json"))) < 2:  # kill once two runs are finished
        assert first.poll() is None, first.stdout.read()
        assert time.time() < deadline, "the sweep made no progress"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (out / "fit.json").exists()
    finished = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}
    grid = json.loads((out / "grid.json").read_text())
    assert len(grid["runs"]) == 6

    second = _cli([*ISO, "--out", str(out)])
    log, _ = second.communicate(timeout=300)
    assert second.returncode == 0, log
    assert log.count("done earlier") == len(finished)
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # finished runs were not retrained
    results = [json.loads(p.read_text()) for p in out.glob("runs/*/result.json")]
    assert len(results) == 6 and all(r["val_loss"] > 0 for r in results)

    fit = json.loads((out / "fit.json").read_text())
    assert set(fit["constants"]) == {"E", "A", "B", "alpha", "beta"}
    assert set(fit["stderr"]) == set(fit["constants"]) and len(fit["bootstrap"]) == 5
    assert fit["n_runs"] == 6
    assert _is_png(out / "isoflop.png") and _is_png(out / "frontier.png")
    assert "fitted over 6 runs" in log


@pytest.mark.slow
def test_lr_batch_sweep_answers_with_a_plot(tmp_path):
    out = tmp_path / "lrb"
    proc = _cli(["sweep", "--mode", "lr-batch", "--recipe", "debug", "--shapes", "16x1", "--lrs", "1e-3,1e-2,1e-1",
                 "--batches", "256,512", "--tokens", "4096", "--out", str(out)])
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    result = json.loads((out / "lr_batch.json").read_text())
    assert set(result["per_batch"]) == {"256", "512"}
    for v in result["per_batch"].values():
        assert min(v["lrs"]) <= v["best_lr"] <= max(v["lrs"])
        assert v["best_loss"] == pytest.approx(min(x for x in v["losses"] if x is not None))
    assert "should the lr scale with the batch?" in log
    assert _is_png(out / "lr_batch.png")


def test_sweep_refuses_a_folder_holding_another_design(tmp_path, capsys):
    out = tmp_path / "iso"
    out.mkdir()
    (out / "grid.json").write_text(json.dumps({"mode": "isoflop", "runs": []}))
    assert main([*ISO, "--out", str(out)]) == 2
    assert "error:" in capsys.readouterr().err


def test_sweep_grid_too_small_for_a_fit(tmp_path, capsys):
    assert main(["sweep", "--out", str(tmp_path / "x"), "--shapes", "16x1", "--budgets", "1e9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --budgets/--shapes") and err.count("\n") == 1


def test_lr_batch_analysis_finds_the_known_exponent(tmp_path):
    from llamaforge.plan.sweep import analyze_lr_batch, plot_lr_batch

    results = []
    for batch in (256, 1024, 4096):
        best = 1e-3 * (batch / 256) ** 0.5  # the truth: square-root scaling
        for lr in np.geomspace(1e-4, 1e-1, 7):
            loss = 3 + 0.1 * math.log(lr / best) ** 2 if lr < 0.05 else math.nan  # the largest lr diverges
            results.append({"batch_tokens": batch, "lr": float(lr), "val_loss": loss})
    analysis = analyze_lr_batch(results)
    assert analysis["exponent"] == pytest.approx(0.5, abs=0.02)
    assert "square root" in analysis["answer"]
    plot_lr_batch(analysis, tmp_path)
    assert _is_png(tmp_path / "lr_batch.png")


def test_isoflop_analysis_recovers_the_law_and_recommends_its_optimum(tmp_path):
    from llamaforge.plan.scaling import ScalingLaw, compute_optimal
    from llamaforge.plan.sweep import analyze_isoflop, plot_isoflop

    law = ScalingLaw(E=2.0, A=300.0, B=1500.0, alpha=0.33, beta=0.37)
    results = [
        {"name": f"{c}-{n}", "budget": c, "n_params": n, "tokens": c / (6 * n), "val_loss": float(law.loss(n, c / (6 * n)))}
        for c in (1e15, 1e16, 1e17)
        for n in np.geomspace(1e5, 1e8, 8)
    ]
    analysis = analyze_isoflop(results, target_budget=1e19, inference_tokens=0.0, n_bootstrap=3)
    expected = compute_optimal(law, 1e19).n_params
    assert analysis["recommended"]["compute-optimal"]["n_params"] == pytest.approx(expected, rel=0.02)
    assert len(analysis["isoflop_minima"]) == 3
    plot_isoflop(results, analysis, tmp_path)
    assert _is_png(tmp_path / "isoflop.png") and _is_png(tmp_path / "frontier.png")


def test_isoflop_grid_spends_each_budget():
    from llamaforge.commands.args import parse_shapes
    from llamaforge.plan.sweep import _base_config, isoflop_grid

    base = _base_config("debug", [])
    runs = isoflop_grid(base, parse_shapes("16x1,32x1,64x2"), [1e9, 3e9], min_steps=4)
    assert len(runs) >= 5 and all(r["steps"] >= 4 for r in runs)
    for run in runs:
        assert run["tokens"] == run["steps"] * base.training.batch_tokens
        step_flops = run["flops"] / run["steps"]
        assert abs(run["flops"] - run["budget"]) <= step_flops / 2 * 1.0001  # the budget, rounded to whole steps
    small = [r["n_params"] for r in runs if r["budget"] == 1e9]
    assert small == sorted(small)  # shapes in order of size
