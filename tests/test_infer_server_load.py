"""Load on loopback (issue #13): 64 concurrent clients, streamed and not, through 8 slots: no errors, every answer
equals the single-client greedy answer, and the server's memory returns to its baseline afterwards."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from conftest import REPO, shared_path

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("one_thread")]
uvicorn = pytest.importorskip("uvicorn")

from llamaforge.infer import Engine, SamplingParams  # noqa: E402
from llamaforge.model import ModelArgs, Transformer  # noqa: E402

CLIENTS = 64
WORDS = "once upon a time there was a little girl named Lily who loved to play in the park with her dog".split()


def rss_bytes(pid) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096


def ask(base: str, prompt: str, n: int, stream: bool) -> str:
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "stream": stream}
    if not stream:
        r = httpx.post(base + "/v1/completions", json=body, timeout=120)
        r.raise_for_status()
        return r.json()["choices"][0]["text"]
    pieces = []
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=120) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[6:])
                assert "error" not in event, event
                pieces.append(event["choices"][0]["text"])
    return "".join(pieces)


@pytest.mark.slow
def test_64_concurrent_clients(tmp_path):
    """The server runs as `llamaforge serve` in its own process (its memory is measured alone, not the 64 client
    threads'); the reference answers come from a one-slot engine over the same saved model in this process."""
    from llamaforge.formats import load_model, save_model
    from llamaforge.tokenizer import load_tokenizer

    tok_path = shared_path("llama2-tokenizer/tokenizer.model")
    tok = load_tokenizer(tok_path)
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=tok.vocab_size, multiple_of=16,
                                  max_seq_len=128))
    with torch.no_grad():  # sharper logits than the init: no near-ties for argmax between batch shapes
        for p in model.parameters():
            p.normal_(0, 0.3)
    save_model(model, tmp_path / "m")
    rng = random.Random(0)
    jobs = [(" ".join(rng.choices(WORDS, k=rng.randint(1, 12))), rng.randint(4, 24)) for _ in range(CLIENTS)]
    reference = Engine(load_model(tmp_path / "m"), tok, max_batch=1, max_seq_len=128)
    expected = [reference.generate([tok.encode(p, bos=True)], SamplingParams(max_new_tokens=n))[0].text
                for p, n in jobs]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llamaforge", "serve", str(tmp_path / "m"), "--tokenizer",
                             str(tok_path), "--port", str(port), "--max-batch", "8"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.time() < deadline and proc.poll() is None, "server did not start"
                time.sleep(0.3)

        def run_all() -> list[str]:
            with ThreadPoolExecutor(CLIENTS) as pool:
                futures = [pool.submit(ask, base, p, n, i % 2 == 1) for i, (p, n) in enumerate(jobs)]
                return [f.result() for f in futures]  # any error raises here

        assert run_all() == expected  # warm-up round: allocator pools and thread pools reach their size
        time.sleep(0.5)
        baseline = rss_bytes(proc.pid)
        for _ in range(2):
            assert run_all() == expected
        time.sleep(0.5)
        grown = rss_bytes(proc.pid) - baseline
        assert grown < 16 * 2**20, f"server RSS grew {grown / 2**20:.1f} MiB over two rounds of {CLIENTS} clients"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
