"""The paper's carbon table (Table 15): energy and emissions from GPU-hours, in `plan` and from a run's metrics."""

from __future__ import annotations

import json

import pytest

from llamaforge.cli import main
from llamaforge.plan.carbon import PAPER_CARBON, carbon, measured_gpu_hours, paper_carbon_table


def test_paper_rows_within_two_percent():
    """MWh = GPU-hours x 400 W x 1.1 / 1e6 and tCO2eq = MWh x 0.385 give Table 15's four LLaMA rows."""
    rows = paper_carbon_table()
    assert [r["preset"] for r in rows] == ["llama-7b", "llama-13b", "llama-33b", "llama-65b"]
    for r in rows:
        assert r["mwh"] == pytest.approx(r["paper_mwh"], rel=0.02)
        assert r["tco2eq"] == pytest.approx(r["paper_tco2eq"], rel=0.02)
    assert carbon(1_000_000).mwh == pytest.approx(440.0) and carbon(1_000_000).tco2eq == pytest.approx(169.4)
    assert PAPER_CARBON["llama-65b"][0] == 1_022_362


def test_plan_prints_energy_and_emissions(capsys):
    assert main(["plan", "--paper"]) == 0
    out = capsys.readouterr().out
    assert "llama-65b     1,022,362   449.8     449    173.2     173" in out
    assert main(["plan", "--model", "llama-7b", "--tokens", "1T", "--gpus", "2048", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["carbon"]["gpu_hours"] == pytest.approx(plan["device_hours"])
    assert plan["carbon"]["mwh"] == pytest.approx(plan["device_hours"] * 400 * 1.1 / 1e6)
    assert plan["carbon"]["tco2eq"] == pytest.approx(plan["carbon"]["mwh"] * 0.385)


def test_measured_run(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": 10, "loss": 3.0, "elapsed_s": 1800.0, "devices": 8}, {"step": 10, "val_loss": 3.1},
               {"step": 20, "loss": 2.0, "elapsed_s": 3600.0, "devices": 8}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert measured_gpu_hours(run) == pytest.approx(8.0)
    assert main(["plan", "--measured", str(run / "metrics.jsonl"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gpu_hours"] == pytest.approx(8.0) and out["mwh"] == pytest.approx(8 * 400 * 1.1 / 1e6)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    assert main(["plan", "--measured", str(run)]) == 2
    assert "elapsed_s" in capsys.readouterr().err


def test_measured_run_killed_mid_line(tmp_path):
    """A run killed while writing metrics.jsonl leaves a torn last line: the hours up to the record before count."""
    lines = [json.dumps({"step": 10, "loss": 3.0, "elapsed_s": 1800.0, "devices": 2}), '{"step": 20, "loss": 2.']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    assert measured_gpu_hours(tmp_path) == pytest.approx(1.0)


@pytest.mark.parametrize("argv", [["--paper", "--gpu-watts", "-5"], ["--paper", "--mfu", "5"],
                                  ["--model", "llama-7b", "--tokens", "1T", "--pue", "0"],
                                  ["--model", "llama-7b", "--tokens", "1T", "--carbon-intensity", "-1"]])
def test_bad_constant_prints_one_error_line_and_no_half_table(argv, capsys):
    """`plan --paper --gpu-watts -5` used to print the GPU-hours table and the carbon table's header before its
    error line (and `--model ... --pue 0` the FLOPs and memory lines): a mistake is one line, nothing else."""
    assert main(["plan", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "", captured.out
    assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("error: --"), captured.err


def test_measured_cpu_run_is_not_priced_as_a100_gpu_hours(tmp_path, capsys):
    """A CPU run's metrics (device_type "cpu", or only the CPU memory field of older runs) give CPU-hours: no
    GPU-hours label and no 400 W A100 energy unless --gpu-watts gives the power per process."""
    for record in ({"step": 5, "loss": 3.0, "elapsed_s": 7200.0, "devices": 2, "device_type": "cpu"},
                   {"step": 5, "loss": 3.0, "elapsed_s": 7200.0, "devices": 2, "mem_peak_rss_gib": 1.2}):
        (tmp_path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        assert main(["plan", "--measured", str(tmp_path), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["device_type"] == "cpu" and out["device_hours"] == pytest.approx(4.0)
        assert out["gpu_hours"] is None and out["mwh"] is None and out["tco2eq"] is None
        assert main(["plan", "--measured", str(tmp_path)]) == 0
        text = capsys.readouterr().out
        assert "4 CPU-hours" in text and "GPU-hours measured" not in text and "not estimated" in text
        assert main(["plan", "--measured", str(tmp_path), "--gpu-watts", "150", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["mwh"] == pytest.approx(4 * 150 * 1.1 / 1e6) and out["tco2eq"] == pytest.approx(out["mwh"] * 0.385)
    # a GPU run keeps the paper's formula at 400 W by default
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 5, "elapsed_s": 3600.0, "devices": 8,
                                                        "device_type": "cuda"}) + "\n")
    assert main(["plan", "--measured", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gpu_hours"] == pytest.approx(8.0) and out["mwh"] == pytest.approx(8 * 400 * 1.1 / 1e6)
