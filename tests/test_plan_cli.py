"""`llamaforge plan` from the command line: reports, JSON and one-line errors."""

import json

import pytest

from llamaforge.cli import main


def _run(capsys, *argv):
    rc = main(["plan", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_paper_table(capsys):
    rc, out, _ = _run(capsys, "--paper")
    assert rc == 0
    assert "llama-65b" in out and "1,022,362" in out and "49.5%" in out


def test_model_plan_json(capsys):
    rc, out, _ = _run(capsys, "--model", "llama-65b", "--gpus", "2048", "--tokens", "1.4T", "--tp", "8",
                      "--ac", "selective", "--json")
    assert rc == 0
    plan = json.loads(out)
    assert plan["tokens_per_s_per_device"] == pytest.approx(380, rel=0.01)
    assert plan["wall_clock_days"] == pytest.approx(21, rel=0.10)
    assert plan["layout"]["fsdp"] == 256 and plan["largest_micro_batch"] >= 1
    assert plan["memory_bytes"]["total"] <= plan["device_memory_bytes"]


def test_dims_plan_text(capsys):
    rc, out, _ = _run(capsys, "--dims", "dim=512,n_layers=8,n_heads=8,vocab_size=32000", "--tokens", "2B",
                      "--gpu", "h100-80gb", "--mfu", "0.4", "--micro-batch", "4")
    assert rc == 0
    assert "FLOPs/token" in out and "micro-batch=4" in out and "H100-80GB" in out
    assert "predicted loss" in out


def test_old_device_flag_still_names_the_gpu(capsys):
    """`--device` was the planner's GPU flag before `--gpu`; scripts that pass it get the same plan."""
    common = ("--model", "llama-7b", "--gpus", "8", "--json")
    _, new, _ = _run(capsys, *common, "--gpu", "H100-80GB")
    _, old, _ = _run(capsys, *common, "--device", "H100-80GB")
    assert json.loads(old) == json.loads(new) and json.loads(new)["device"] == "H100-80GB"


def test_budget_table(capsys):
    rc, out, _ = _run(capsys, "--budget", "5.76e23", "--inference-tokens", "2T")
    assert rc == 0
    assert "compute-optimal" in out and "inference-aware" in out and "smaller model" in out


def test_budget_with_fitted_constants_file(tmp_path, capsys):
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"constants": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}}))
    rc, out, _ = _run(capsys, "--budget", "1e21", "--constants", str(path), "--json")
    assert rc == 0 and json.loads(out)["law"]["beta"] == 0.28


@pytest.mark.parametrize("argv,needle", [
    (["--budget=-1e20"], "--budget"),
    (["--budget", "-3"], "--budget"),
    (["--budget", "lots"], "--budget"),
    (["--model", "llama-65b", "--gpus", "1"], "does not fit"),
    (["--model", "llama-7b", "--gpus", "8", "--micro-batch", "100000"], "--micro-batch"),
    (["--model", "nope"], "--model"),
    (["--model", "llama-7b", "--gpu", "TPU-v9"], "--gpu"),
    (["--model", "llama-7b", "--tokens=-5"], "--tokens"),
    (["--budget", "1e21", "--constants", "missing.json"], "--constants"),
])
def test_impossible_requests_get_one_line(capsys, argv, needle):
    rc, _out, err = _run(capsys, *argv)
    assert rc == 2
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1
