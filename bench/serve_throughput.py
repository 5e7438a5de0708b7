"""Serving throughput over loopback: `llamaforge serve` vs llama.cpp's server (`python -m llama_cpp.server`, from
llama-cpp-python), on the same GGUF file, same clients, same run.

    .venv/bin/python bench/serve_throughput.py [--preset small-17m] [--clients 8] [--requests 2] [--new-tokens 64]
        [--threads 2] [--max-batch 8] [--rounds 3]

The model is the preset's shape with random weights and Meta's Llama-2 vocabulary (32000 pieces, embedded in the
GGUF so both servers tokenize the same way); both servers load that one file. Each round starts both servers as
fresh processes (the spread is over processes), waits for /health, sends one warm-up request, then runs
--clients concurrent clients that each send --requests greedy /v1/completions requests of --new-tokens tokens
(distinct prompts). tokens/s = completion tokens reported in `usage` / wall time of the whole load. llama.cpp's
server runs one request at a time (its Python server holds a lock around the model); llamaforge's batches up to
--max-batch sequences per decode step (continuous batching). Needs ../shared/data/llama2-tokenizer.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from llamaforge.formats import save_model
from llamaforge.model import Transformer
from llamaforge.presets import get_preset

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO.parent / "shared" / "data" / "llama2-tokenizer" / "tokenizer.model"
WORDS = "once upon a time there was a little girl named Lily who loved to play in the park".split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server did not start: {' '.join(cmd)}")


def load(port: int, extra: dict, clients: int, requests: int, new_tokens: int) -> tuple[int, float]:
    """(completion tokens, seconds) for clients x requests concurrent greedy completions."""
    url = f"http://127.0.0.1:{port}/v1/completions"

    def client(c: int) -> int:
        n = 0
        with httpx.Client(timeout=600) as http:
            for r in range(requests):
                prompt = " ".join(WORDS[(c * 7 + r * 3 + k) % len(WORDS)] for k in range(8))
                body = {"prompt": prompt, "max_tokens": new_tokens, "temperature": 0.0, **extra}
                out = http.post(url, json=body)
                out.raise_for_status()
                n += out.json()["usage"]["completion_tokens"]
        return n

    httpx.post(url, json={"prompt": "warm up", "max_tokens": 4, "temperature": 0.0, **extra}, timeout=600)
    start_t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(client, range(clients)))
    return tokens, time.perf_counter() - start_t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small-17m")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=2, help="requests per client, one after the other")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    import llama_cpp

    torch.manual_seed(0)
    margs = get_preset(args.preset, vocab_size=32000, max_seq_len=512)
    model = Transformer(margs)
    workdir = Path(tempfile.mkdtemp())
    gguf = save_model(model, workdir / "m.gguf", format="gguf", tokenizer_path=TOKENIZER)
    ours_cmd = [sys.executable, "-m", "llamaforge", "serve", str(gguf), "--max-batch", str(args.max_batch),
                "--max-seq-len", "512"]
    theirs_cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--n_ctx", "512",
                  "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads)]
    # llama.cpp's sampler defaults differ (repeat penalty 1.1, top_k 40): make both plain greedy
    servers = {"llamaforge": (ours_cmd, {}),
               "llama.cpp": (theirs_cmd, {"repeat_penalty": 1.0, "top_k": 1, "min_p": 0.0})}
    rates: dict[str, list[float]] = {name: [] for name in servers}
    for rnd in range(args.rounds):
        for name, (cmd, extra) in servers.items():
            port = free_port()
            proc = start(cmd + ["--port", str(port)], port, args.threads)
            try:
                tokens, secs = load(port, extra, args.clients, args.requests, args.new_tokens)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            rates[name].append(tokens / secs)
            print(f"round {rnd + 1} {name}: {tokens} tokens in {secs:.2f} s = {tokens / secs:.1f} tok/s", flush=True)
    print(f"\n{args.preset} (vocab 32000, random weights), {args.clients} clients x {args.requests} requests x "
          f"{args.new_tokens} tokens, {args.threads} threads, llamaforge --max-batch {args.max_batch}; "
          f"torch {torch.__version__}, llama-cpp-python {llama_cpp.__version__}, Python {platform.python_version()}")
    for name, r in rates.items():
        print(f"{name:>10}: median {statistics.median(r):.1f} tok/s (min {min(r):.1f}, max {max(r):.1f}, "
              f"{len(r)} processes)")
    ratio = [a / b for a, b in zip(rates["llamaforge"], rates["llama.cpp"])]
    print(f"ratio llamaforge / llama.cpp per round: {', '.join(f'{x:.2f}' for x in ratio)}")


if __name__ == "__main__":
    main()
