"""`llamaforge serve` and `llamaforge chat` as a user runs them (subprocesses, stories260K)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from conftest import REPO, assert_one_error_line, shared_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "llamaforge", *args], capture_output=True, text=True, env=env,
                          timeout=120, **kw)


@pytest.mark.slow
def test_serve_subprocess_answers_and_shuts_down():
    model = shared_path("stories260K/stories260K.bin")
    tok = shared_path("stories260K/tok512.bin")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "llamaforge", "serve", str(model), "--tokenizer", str(tok),
                             "--port", str(port), "--max-batch", "2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        models = httpx.get(base + "/v1/models", timeout=10).json()
        assert models["data"][0]["id"] == "stories260K.bin"
        body = {"prompt": "", "max_tokens": 20, "temperature": 0}
        r = httpx.post(base + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["text"].startswith("Once upon a time")
        assert httpx.post(base + "/v1/completions", json={"prompt": 3}, timeout=10).status_code == 400
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # also closes the pipe


def test_serve_bad_arguments_exit_2(tmp_path):
    r = cli("serve", str(tmp_path / "missing.bin"), "--tokenizer", str(tmp_path / "t.bin"))
    assert_one_error_line(r.returncode, r.stderr)
    r = cli("serve", str(tmp_path), "--chat-template", "nonsense")
    assert r.returncode == 2 and "chat template" in r.stderr


@pytest.mark.slow
def test_chat_reads_turns_from_stdin():
    model = shared_path("stories260K/stories260K.bin")
    tok = shared_path("stories260K/tok512.bin")
    r = cli("chat", str(model), "--tokenizer", str(tok), "--temperature", "0", "--max-new-tokens", "12",
            input="Once upon a time\n/reset\nLily\n")
    assert r.returncode == 0, r.stderr
    assert len([line for line in r.stdout.splitlines() if line.strip()]) == 2


def test_generate_command_on_the_engine(capsys):
    from llamaforge.cli import main

    model = shared_path("stories260K/stories260K.bin")
    tok = shared_path("stories260K/tok512.bin")
    base = ["generate", str(model), "--tokenizer", str(tok), "--prompt", "Once upon a time"]
    assert main([*base, "--max-new-tokens", "30"]) == 0
    out = capsys.readouterr()
    full = out.out
    assert full.startswith("Once upon a time, there was a little girl named Lily.")
    assert "30 new tokens, then" in out.err and "tokens/s]" in out.err  # timings on stderr, text alone on stdout
    assert main([*base, "--max-new-tokens", "30", "--stop", "Lily", "--quantize", "int8"]) == 0
    assert capsys.readouterr().out == full[: full.index("Lily")] + "\n"
    args = [*base, "--max-new-tokens", "20", "--temperature", "0.9", "--top-k", "10", "--seed", "5"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0 and capsys.readouterr().out == first  # seeded: reproducible
    assert main([*base, "--top-k", "-1"]) == 2
