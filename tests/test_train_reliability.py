"""Training faults (issue #18): skipped updates reported everywhere, torn metrics lines, leftovers of killed runs,
untrusted checkpoints, bad data and checkpoints answered in one line."""

from __future__ import annotations

import json
import os

import pytest

from conftest import assert_one_error_line, one_error_line
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


def test_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    from llamaforge.errors import UserError
    from llamaforge.train.metrics import MetricsWriter

    w = MetricsWriter(tmp_path, tensorboard=False)
    for step in range(1, 5):
        w.write({"step": step, "loss": float(step)})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # killed mid-write
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    w = MetricsWriter(tmp_path, tensorboard=False, resume_step=4)
    w.write({"step": 5, "loss": 5.0})
    w.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"ste\n{"step": 3}\n')  # not torn: corrupt
    with pytest.raises(UserError, match=r"metrics.jsonl:2: "):
        read_metrics(tmp_path / "metrics.jsonl")


def test_temporaries_of_a_killed_export_are_cleaned_by_the_next_run(tmp_path):
    import subprocess
    import sys

    from llamaforge.io import atomic_dir, atomic_file

    # a writer killed inside atomic_dir / atomic_file leaves its temporaries
    code = ("import os, sys\nfrom llamaforge.io import atomic_dir, atomic_file\n"
            f"with atomic_file({str(tmp_path / 'x.bin')!r}) as f:\n"
            f"    with atomic_dir({str(tmp_path / 'final')!r}) as d:\n"
            "        (d / 'model.safetensors').write_bytes(b'half')\n        os._exit(9)\n")
    subprocess.run([sys.executable, "-c", code], check=False)
    left = sorted(p.name.split("-")[0] for p in tmp_path.iterdir())
    assert left == [".final.tmp", ".x.bin.tmp"]
    live = tmp_path / f".final.tmp-{os.getpid()}-live"  # a concurrent live writer's folder stays
    live.mkdir()
    with atomic_dir(tmp_path / "final") as d:
        (d / "ok").write_text("1")
    with atomic_file(tmp_path / "x.bin") as f:
        f.write(b"1")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "final", "x.bin"])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-step debug run with its checkpoint at step 2."""
    from llamaforge.train import load_config, train

    out = tmp_path_factory.mktemp("run")
    train(load_config("debug", ["--training.steps=2", "--checkpoint.every=2", "--metrics.val_every=0"]), out)
    return out


def _resume(capsys, out, ckpt, *extra):
    from llamaforge import cli

    capsys.readouterr()
    rc = cli.main(["train", "--recipe", "debug", "--out", str(out), "--resume", str(ckpt),
                   "--training.steps=2", *extra])
    return rc, capsys.readouterr().err


def test_resume_from_a_folder_this_run_did_not_write_is_refused(finished_run, tmp_path, capsys):
    import pickle
    import shutil

    foreign = tmp_path / "downloaded" / "step_00000002"
    shutil.copytree(finished_run / "checkpoints" / "step_00000002", foreign)
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    (foreign / ".metadata").write_bytes(pickle.dumps(Evil()))
    out = tmp_path / "run"
    rc, err = _resume(capsys, out, foreign)
    assert_one_error_line(rc, err, "--trust-checkpoint")
    assert not sentinel.exists()
    assert not out.exists()
    # this run's own checkpoints resume without the flag; a foreign one with it
    rc, err = _resume(capsys, finished_run, finished_run / "checkpoints" / "step_00000002")
    assert rc == 0, err
    good = tmp_path / "copy" / "step_00000002"
    shutil.copytree(finished_run / "checkpoints" / "step_00000002", good)
    assert _resume(capsys, tmp_path / "run2", good, "--trust-checkpoint")[0] == 0


@pytest.mark.parametrize("damage", ["missing_distcp", "truncated_distcp", "missing_metadata", "truncated_rank",
                                    "other_shape"])
def test_damaged_or_foreign_checkpoint_is_one_line(finished_run, tmp_path, capsys, damage):
    import shutil

    out = tmp_path / "run"
    ckpt = out / "checkpoints" / "step_00000002"
    shutil.copytree(finished_run / "checkpoints" / "step_00000002", ckpt)
    extra = []
    distcp = sorted(ckpt.glob("*.distcp"))[0]
    if damage == "missing_distcp":
        distcp.unlink()
    elif damage == "truncated_distcp":
        distcp.write_bytes(distcp.read_bytes()[: distcp.stat().st_size // 2])
    elif damage == "missing_metadata":
        (ckpt / ".metadata").unlink()
    elif damage == "truncated_rank":
        rank = ckpt / "rank_00000.pt"
        rank.write_bytes(rank.read_bytes()[:100])
    else:
        extra = ["--model.dim=32"]
    rc, err = _resume(capsys, out, ckpt, *extra)
    assert_one_error_line(rc, err, str(ckpt.name))


def test_token_shard_with_ids_beyond_the_vocabulary(tmp_path, capsys):
    import numpy as np

    from llamaforge import cli

    shard = tmp_path / "src"
    shard.mkdir()
    header = {"format": "llamaforge.tokens/1", "dtype": "<u2", "vocab_size": 256, "bos_id": 1, "eos_id": 2,
              "n_tokens": 97, "n_docs": 2, "n_bytes": 400}
    (shard / "header.json").write_text(json.dumps(header))
    tokens = np.arange(3, 100, dtype="<u2")
    tokens[60] = 300  # beyond both the header's and the debug model's 256
    tokens.tofile(shard / "tokens.bin")
    np.asarray([0, 50, 97], dtype="<i8").tofile(shard / "offsets.bin")
    out = tmp_path / "run"
    args = ["--data.kind=shards", f"--data.sources={{a = '{shard}'}}", "--data.weights={a = 1.0}"]
    one_error_line(capsys, cli.main(["train", "--recipe", "debug", "--out", str(out), *args]), "tokens.bin", "300")
    assert not out.exists()
    for key, value in (("vocab_size", "x"), ("vocab_size", 0), ("n_docs", -1), ("eos_id", 256)):
        (shard / "header.json").write_text(json.dumps({**header, key: value}))
        one_error_line(capsys, cli.main(["train", "--recipe", "debug", "--out", str(out), *args]), key)
        assert not out.exists()
