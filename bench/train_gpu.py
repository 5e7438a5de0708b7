"""GPU training throughput and MFU: llamaforge vs compiled Hugging Face LlamaForCausalLM, same run.

A ~1B LLaMA (dim 2048, 16 layers, 16 heads, FFN 5632, vocab 32000), B=8, T=2048, bf16 autocast with fp32 master
weights, AdamW (fused), the same synthetic data and loop for both; both compiled (llamaforge per block, as the
trainer's `training.compile` does; HF as a whole model). Prints tokens/s, MFU (the project's FLOP formula and
device-peak table) and peak memory, and the ratio.

    python bench/train_gpu.py [--steps 20] [--rounds 2] [--no-compile] [--ac none|full|selective]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from peers import hf_llama  # bench/peers.py: the HF model of the same shape

from llamaforge.model import ModelArgs, Transformer
from llamaforge.plan.flops import flops_per_token
from llamaforge.train.metrics import device_peak_flops
from llamaforge.train.synthetic import SyntheticLoader

ARGS = ModelArgs(dim=2048, n_layers=16, n_heads=16, vocab_size=32000, hidden_dim=5632, max_seq_len=2048)
B, T = 8, 2048


def hf_model():
    return hf_llama(ARGS)


def logits_of(hf):
    return lambda x: hf(input_ids=x).logits


def make_step(model, forward):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)

    def step(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = forward(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed(step, batches, n) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(n):
        step(*batches[i % len(batches)])
    torch.cuda.synchronize()
    return n * B * T / (time.perf_counter() - t0)


def run_one(name, build, compile_, ac, batches, steps, rounds):
    torch.manual_seed(0)
    model = build().cuda()
    if name == "llamaforge":
        from llamaforge.train.parallel import apply_activation_checkpointing

        if ac != "none":
            apply_activation_checkpointing(model, ac)
        if compile_:
            for block in model.layers:
                block.compile(fullgraph=True)
        forward = model
    else:
        if ac != "none":
            model.gradient_checkpointing_enable()
        if compile_:
            model.compile()
        forward = logits_of(model)
    step = make_step(model, forward)
    timed(step, batches, 3)  # warmup and compilation
    torch.cuda.reset_peak_memory_stats()
    tps = [timed(step, batches, steps) for _ in range(rounds)]
    mem = torch.cuda.max_memory_allocated() / 2**30
    del model, step
    torch.cuda.empty_cache()
    return statistics.median(tps), mem


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--ac", default="none", choices=("none", "full", "selective"))
    p.add_argument("--only", choices=("llamaforge", "hf"), default=None)
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    loader = SyntheticLoader(ARGS.vocab_size, T, B, seed=0)
    batches = [tuple(t.cuda() for t in loader.next_batch()) for _ in range(4)]
    peak = device_peak_flops(torch.device("cuda"))
    fpt = flops_per_token(ARGS, T)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; B={B} T={T} bf16; "
          f"{flops_per_token(ARGS, T) / 1e9:.2f} GFLOP/token; compile={not a.no_compile}; ac={a.ac}")
    results = {}
    for name, build in (("llamaforge", lambda: Transformer(ARGS)), ("hf", hf_model)):
        if a.only and name != a.only:
            continue
        tps, mem = run_one(name, build, not a.no_compile, a.ac, batches, a.steps, a.rounds)
        mfu = tps * fpt / peak if peak else float("nan")
        results[name] = tps
        print(f"{name:>10}: {tps:9.0f} tok/s, MFU {mfu:6.1%}, peak memory {mem:.1f} GiB")
    if len(results) == 2:
        print(f"ratio llamaforge / hf: {results['llamaforge'] / results['hf']:.2f}x")


if __name__ == "__main__":
    main()
