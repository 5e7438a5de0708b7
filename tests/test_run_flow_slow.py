"""`llamaforge run` end to end (slow): the seven-source flow over ../shared/data with a tiny model and a few steps,
and SIGKILL in the middle of prepare and of training, then the same command again: same documents, exact resume."""

from __future__ import annotations

import bz2
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import shared_path

pytestmark = pytest.mark.slow

SEVEN = ("commoncrawl", "c4", "github", "wikipedia", "books", "arxiv", "stackexchange")
# installed packages whose license file (MIT / BSD / Apache) sits in their dist-info: real repositories' code
REPO_PACKAGES = {"idna": "BSD", "h11": "MIT", "annotated_types": "MIT"}


def build_repositories(dest: Path) -> Path:
    """A folder of repository folders (package code + its own LICENSE at the root), as a user has them: the
    staged data holds no code repositories, so they come from packages installed in this environment."""
    import importlib
    import importlib.metadata as md

    for name in REPO_PACKAGES:
        pkg = Path(importlib.import_module(name).__file__).parent
        dist = md.distribution(name)
        lic = next((f for f in dist.files or [] if Path(str(f)).name.upper().startswith(("LICENSE", "COPYING"))), None)
        if lic is None:
            pytest.skip(f"{name}: no license file in its installed metadata")
        repo = dest / name
        shutil.copytree(pkg, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
        shutil.copy(dist.locate_file(lic), repo / "LICENSE")
    return dest


def wikipedia_slice(dest: Path, pages: int = 30) -> Path:
    """The staged enwiki dump's first pages, under a real split-dump name (found by the folder search)."""
    dump = shared_path("wikipedia-xml/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    out, n = [], 0
    with bz2.open(dump, "rt", encoding="utf-8") as f:
        for line in f:
            out.append(line)
            n += line.strip() == "</page>"
            if n == pages:
                break
    dest.mkdir(parents=True)
    (dest / "enwiki-20240101-pages-articles1.xml-p1p41242.bz2").write_bytes(
        bz2.compress(("".join(out) + "</mediawiki>\n").encode()))
    return dest


def llamaforge(*args, check=True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "llamaforge", *map(str, args)], capture_output=True, text=True,
                       timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"}, **kw)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_seven_source_flow_end_to_end(tmp_path):
    out = tmp_path / "run"
    data = shared_path("")
    repos = build_repositories(tmp_path / "repos")
    wiki = wikipedia_slice(tmp_path / "wiki")
    books = [str(data / "gutenberg" / b) for b in ("pg1080_modest_proposal.txt", "pg11_alice_in_wonderland.txt")]
    r = llamaforge("run", "seven-sources", f"--run.out={out}", "--no-progress",
                   f"--sources.github.inputs={json.dumps([str(repos)])}",
                   f"--sources.wikipedia.inputs={json.dumps([str(wiki)])}",
                   f"--sources.books.inputs={json.dumps(books)}",
                   "--tokenizer.vocab_size=700", "--tokenizer.sample_mb=0.5",
                   "--train.set.training.steps=3", "--train.set.checkpoint.every=3", "--train.set.model.dim=32",
                   "--train.set.model.n_layers=1", "--train.set.metrics.val_batches=1",
                   "--train.set.training.micro_batch_size=8", "--train.set.training.batch_tokens=2048",
                   "--eval.tasks=['piqa']", "--eval.limit=4", "--eval.val_batches=1", cwd=Path(__file__).parents[1])
    assert "paper epochs" in r.stdout  # the plan table came before training
    cc = json.loads((out / "prepare" / "commoncrawl" / "stats.json").read_text())
    assert cc["off"] == {} and {"lm_perplexity", "reference_classifier"} <= set(cc["ran"])  # every paper step ran
    for name in SEVEN:
        assert list((out / "prepare" / name).glob("*.jsonl.gz")), name
        assert (out / "tokens" / name / "header.json").is_file(), name
    assert (out / "tokenizer" / "tokenizer.model").is_file() and (out / "train" / "final" / "tokenizer.model").is_file()
    report = json.loads((out / "report" / "report.json").read_text())
    assert set(report["sources"]) == set(SEVEN)
    assert all(report["sources"][n]["tokens"] > 0 for n in SEVEN)
    assert all(report["tokenizer"]["sample"][n]["bytes_sampled"] > 0 for n in SEVEN)
    assert set(report["val_loss"]) == set(SEVEN) and "piqa" in report["eval"]["results"]
    parity = report["export"]["parity"]
    assert parity["hf"]["status"] == "passed" and parity["hf"]["max_abs_logit_diff"] <= 1e-4
    try:
        import llama_cpp  # noqa: F401

        assert parity["gguf"]["status"] == "passed", parity["gguf"]
    except ImportError:
        assert parity["gguf"]["status"] == "skipped"
    assert any(report["sources"][n]["samples"] for n in SEVEN)  # short samples of dropped documents, by reason
    md = (out / "report" / "report.md").read_text()
    assert "- dropped by " in md
    for section in ("## Data", "## Tokenizer", "## Mixture", "## Training", "## Evaluation", "## Exports"):
        assert section in md
    for png in ("loss.png", "mixture.png", "data.png"):
        assert (out / "report" / png).stat().st_size > 1000
    from transformers import AutoTokenizer, LlamaForCausalLM

    hf = out / "export" / "hf"
    assert LlamaForCausalLM.from_pretrained(hf) is not None and AutoTokenizer.from_pretrained(hf)("x") is not None


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 600) -> bool:
    """SIGKILL `proc` as soon as `ready()`; False when it ended first."""
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            return False
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out waiting for the point to kill at")


def _docs(folder: Path) -> list[str]:
    return [line for p in sorted(folder.glob("*.jsonl.gz")) for line in gzip.open(p, "rt", encoding="utf-8")]


FLOW = """
[run]
out = "{out}"
[sources.books]
kind = "books"
inputs = {books}
[sources.code]
kind = "builtin"
options = {{ part = "code", max_mb = 0.3 }}
[tokenizer]
vocab_size = 600
sample_mb = 0.3
[train]
recipe = "demo"
[train.set]
"training.steps" = 8
"checkpoint.every" = 2
"checkpoint.keep_last_k" = 4
"model.dim" = 32
"model.n_layers" = 1
"training.deterministic" = true
"metrics.progress" = false
"metrics.val_batches" = 1
"training.micro_batch_size" = 8
"training.batch_tokens" = 2048
[eval]
[export]
formats = []
"""


def test_kill_mid_prepare_and_mid_training_then_rerun(tmp_path):
    books = sorted(str(p) for p in shared_path("gutenberg").glob("pg1*.txt"))[:8]
    cmd = lambda out: [sys.executable, "-m", "llamaforge", "run", str(out / "flow.toml"), "--no-progress"]  # noqa: E731
    runs = {}
    for name in ("killed", "reference"):
        out = tmp_path / name
        out.mkdir()
        (out / "flow.toml").write_text(FLOW.format(out=out / "run", books=json.dumps(books)))
        runs[name] = out

    # 1. prepare: killed once its first book shard is done, then the same command again
    killed = runs["killed"]
    work = killed / "run" / "prepare" / "books" / "_work" / "seg0"
    proc = subprocess.Popen(cmd(killed) + ["--until", "prepare"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert _kill_when(proc, lambda: len(list(work.glob("*.done"))) >= 1), "prepare ended before the kill"
    assert not (killed / "run" / ".done" / "prepare.books.json").exists()
    assert subprocess.run(cmd(killed) + ["--until", "tokenize"], capture_output=True).returncode == 0
    ref = runs["reference"]
    assert subprocess.run(cmd(ref) + ["--until", "tokenize"], capture_output=True).returncode == 0
    a, b = _docs(killed / "run" / "prepare" / "books"), _docs(ref / "run" / "prepare" / "books")
    assert a == b and len(a) == len(set(a)) > 0  # the same documents: none lost, none twice

    # 2. training: the reference trains from a copy of the same tokens uninterrupted; the other is killed after
    # its step-4 checkpoint and resumed by the same command
    shutil.rmtree(ref / "run")
    shutil.copytree(killed / "run", ref / "run")
    ckpt = killed / "run" / "train" / "checkpoints" / "step_00000004"
    proc = subprocess.Popen(cmd(killed) + ["--until", "train"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert _kill_when(proc, ckpt.is_dir), "training ended before the kill"
    assert not (killed / "run" / "train" / "final").exists()
    r = subprocess.run(cmd(killed) + ["--until", "train"], capture_output=True, text=True)
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-2000:]
    assert subprocess.run(cmd(ref) + ["--until", "train"], capture_output=True).returncode == 0
    from safetensors.torch import load_file

    wa = load_file(killed / "run" / "train" / "final" / "model.safetensors")
    wb = load_file(ref / "run" / "train" / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)  # bit for bit
    la = [json.loads(x)["loss"] for x in open(killed / "run" / "train" / "metrics.jsonl") if '"loss"' in x]
    lb = [json.loads(x)["loss"] for x in open(ref / "run" / "train" / "metrics.jsonl") if '"loss"' in x]
    assert la == lb and len(la) == 8
