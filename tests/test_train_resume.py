"""Training end to end through the CLI (subprocesses, so deterministic mode stays out of the test process):
the golden losses of the `debug` recipe, exact resume after SIGKILL, a kill during a checkpoint write, and
bad inputs that must fail with one clear line and write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import one_error_line
from safetensors.torch import load_file

GOLDEN = Path(__file__).parent / "golden" / "debug_losses.json"

# Runs the CLI; when LF_KILL_AT is set, SIGKILLs itself at that checkpoint step, before (LF_KILL_WHEN=before)
# or after (after) the checkpoint's commit rename: a crash mid-save, or a crash between checkpoints.
KILLER = r"""
import os, signal, sys
from llamaforge.train import checkpoint
at, when, publish = os.environ.get("LF_KILL_AT"), os.environ.get("LF_KILL_WHEN", "after"), checkpoint.publish
def killing_publish(tmp, final):
    hit = at is not None and final.name == f"step_{int(at):08d}"
    if hit and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    publish(tmp, final)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.publish = killing_publish
from llamaforge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_train(out: Path, *extra: str, kill_at: int | None = None, when: str = "after") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if kill_at is not None:
        env.update(LF_KILL_AT=str(kill_at), LF_KILL_WHEN=when)
    cmd = [sys.executable, "-c", KILLER, "train", "--recipe", "debug", "--out", str(out), *extra]
    return subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)


def train_losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The debug recipe run once without interruption (checkpoints every 5 steps)."""
    out = tmp_path_factory.mktemp("straight")
    r = run_train(out, "--checkpoint.every=5")
    assert r.returncode == 0, r.stderr
    return out


def test_debug_golden_losses(straight):
    """The first 20 losses of the debug recipe (deterministic CPU fp32) match the stored golden file.

    5e-6 relative leaves room for another CPU's fp32 rounding, yet catches small changes of the math (measured:
    Adam eps 1e-8 -> 1e-7 moves a loss by 1.5e-5, weight decay 0.1 -> 0.11 by 3e-5, RMSNorm eps 1e-6 -> 1e-5 by 7e-4)."""
    losses = train_losses(straight)
    golden = json.loads(GOLDEN.read_text())["losses"]
    assert len(losses) == len(golden) == 20
    assert losses[-1] < losses[0] - 0.5  # and the run does learn
    torch.testing.assert_close(torch.tensor(losses, dtype=torch.float64), torch.tensor(golden, dtype=torch.float64),
                               rtol=5e-6, atol=0)


def test_exact_resume_after_sigkill(straight, tmp_path):
    """10 steps, SIGKILL, --resume auto to 20: bit-identical losses and final weights."""
    r = run_train(tmp_path, "--checkpoint.every=5", kill_at=10)
    assert r.returncode == -9, r.stderr
    assert not (tmp_path / "final").exists()
    r = run_train(tmp_path, "--checkpoint.every=5", "--resume", "auto")
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "step 10" in r.stdout
    assert train_losses(tmp_path) == train_losses(straight)
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(tmp_path / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the wall time goes on from the checkpoint (plan --measured reads the last elapsed_s as the run's hours)
    timed = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "elapsed_s" in r]
    before = max(r["elapsed_s"] for r in timed if r["step"] <= 10)  # logged by the killed process
    assert min(r["elapsed_s"] for r in timed if r["step"] > 10) > before
    assert {r["device_type"] for r in timed} == {"cpu"}  # plan --measured prices CPU-hours only with --gpu-watts


def test_kill_during_checkpoint_write_resumes_from_previous(straight, tmp_path):
    """A kill while step 15's checkpoint is being written: it never appears, step 10's is used, same result."""
    r = run_train(tmp_path, "--checkpoint.every=5", kill_at=15, when="before")
    assert r.returncode == -9, r.stderr
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "step_00000015.tmp").is_dir() and not (ckpts / "step_00000015").exists()
    r = run_train(tmp_path, "--checkpoint.every=5", "--resume", "auto")
    assert r.returncode == 0, r.stderr
    assert "step 10" in r.stdout
    assert train_losses(tmp_path) == train_losses(straight)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000015", "step_00000020"]  # keep_last_k = 2


def one_line_error(capsys, out: Path, *extra: str) -> str:
    """Run `llamaforge train` in this process (it fails before training starts); return its one error line."""
    from llamaforge.cli import main

    capsys.readouterr()
    return one_error_line(capsys, main(["train", "--recipe", "debug", "--out", str(out), *extra]))


def test_unknown_config_key_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert "optim.learning_rate" in one_line_error(capsys, out, "--optim.learning_rate=1e-3")
    line = one_line_error(capsys, out, "--training.steps=many")
    assert "training.steps" in line and "int" in line
    assert "unknown recipe" in one_line_error(capsys, out, "--recipe", "no-such-recipe")
    assert not out.exists()


def write_shard(folder: Path, vocab_size: int, tokens: list[int], offsets: list[int]) -> Path:
    import numpy as np

    folder.mkdir(parents=True)
    header = {"format": "llamaforge.tokens/1", "dtype": "<u2", "vocab_size": vocab_size, "bos_id": 1, "eos_id": 2,
              "n_tokens": len(tokens), "n_docs": len(offsets) - 1, "n_bytes": 4 * len(tokens)}
    (folder / "header.json").write_text(json.dumps(header))
    np.asarray(tokens, dtype="<u2").tofile(folder / "tokens.bin")
    np.asarray(offsets, dtype="<i8").tofile(folder / "offsets.bin")
    return folder


def shard_args(path: Path) -> list[str]:
    return ["--data.kind=shards", f"--data.sources={{a = '{path}'}}", "--data.weights={a = 1.0}"]


def test_bad_shards_and_vocab_are_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    empty = write_shard(tmp_path / "empty", 256, [], [0])
    assert "empty shard" in one_line_error(capsys, out, *shard_args(empty))
    corrupt = write_shard(tmp_path / "corrupt", 256, list(range(3, 100)), [0, 50, 97])
    with open(corrupt / "tokens.bin", "r+b") as f:
        f.truncate(10)  # cut short, as by a crashed copy
    assert "tokens.bin" in one_line_error(capsys, out, *shard_args(corrupt))
    wide = write_shard(tmp_path / "wide", 32000, list(range(3, 100)), [0, 50, 97])
    line = one_line_error(capsys, out, *shard_args(wide))
    assert "32000" in line and "vocab_size" in line
    assert not out.exists()  # nothing half-written


def test_tokenizer_larger_than_model_is_one_line(tmp_path, capsys):
    import sentencepiece as spm

    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"line {i} of a small corpus with words like {i * 7} and {i * 13}" for i in range(300)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "tok"), vocab_size=300,
                                   model_type="bpe", byte_fallback=True)
    line = one_line_error(capsys, tmp_path / "run", f"--data.tokenizer={tmp_path / 'tok.model'}")
    assert "300 tokens" in line and "--model.vocab_size=300" in line  # the debug model has 256
    assert not (tmp_path / "run").exists()
