"""CPU training throughput: llamaforge's Transformer vs Hugging Face LlamaForCausalLM, same run.

Same shape (vocab 8192, dim 384, 6 layers, 6 heads, FFN 1024), batch (B=8, T=256), data (the synthetic task),
optimizer (AdamW as in the paper) and loop (forward, next-token cross-entropy, backward, clip 1.0, step), fp32.
The two models are timed in alternating rounds so that load from other processes hits both alike.

    python bench/train_cpu.py [--steps 10] [--rounds 3] [--compile]

--compile runs llamaforge with its per-block torch.compile (the trainer's `training.compile`), HF stays eager.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from peers import hf_llama  # bench/peers.py: the HF model of the same shape

from llamaforge.model import ModelArgs, Transformer
from llamaforge.train.config import OptimConfig
from llamaforge.train.optim import build_optimizer
from llamaforge.train.synthetic import SyntheticLoader

ARGS = ModelArgs(dim=384, n_layers=6, n_heads=6, vocab_size=8192, hidden_dim=1024, max_seq_len=256)
B, T = 8, 256


def hf_model():
    return hf_llama(ARGS)


def make_step(model, forward):
    opt = build_optimizer(model, OptimConfig(lr=3e-4))

    def step(x, y):
        loss = F.cross_entropy(forward(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def timed(step, loader, n) -> float:
    """tokens/s over n steps."""
    t0 = time.perf_counter()
    for _ in range(n):
        step(*loader.next_batch())
    return n * B * T / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    ours = Transformer(ARGS)
    if a.compile:
        for block in ours.layers:
            block.compile(fullgraph=True)
    hf = hf_model()
    ours.train(), hf.train()
    steps = {"llamaforge": make_step(ours, ours), "hf": make_step(hf, lambda x: hf(input_ids=x).logits)}
    loader = SyntheticLoader(ARGS.vocab_size, T, B, seed=0)
    for name, step in steps.items():  # warmup (and compilation)
        timed(step, loader, 2)
    results = {name: [] for name in steps}
    for _ in range(a.rounds):
        for name, step in steps.items():
            results[name].append(timed(step, loader, a.steps))
    med = {name: statistics.median(v) for name, v in results.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; B={B} T={T} fp32; "
          f"{a.rounds} rounds x {a.steps} steps{' (llamaforge compiled)' if a.compile else ''}")
    for name, v in results.items():
        print(f"{name:>10}: median {med[name]:8.0f} tok/s  (rounds: {', '.join(f'{x:.0f}' for x in v)})")
    best = {name: max(v) for name, v in results.items()}  # the least-disturbed round, on a shared machine
    print(f"ratio llamaforge / hf: {med['llamaforge'] / med['hf']:.2f}x (medians), "
          f"{best['llamaforge'] / best['hf']:.2f}x (best rounds)")


if __name__ == "__main__":
    main()
