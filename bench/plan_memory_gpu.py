"""The memory planner's estimate against the CUDA caching allocator's peak, for real training steps on one GPU.

    .venv/bin/python bench/plan_memory_gpu.py [--preset base-110m] [--seq-len 1024] [--micro-batch 8]

For each precision (pure bf16; fp32 weights with bf16 autocast, the trainer's single-GPU path) and each activation
checkpointing mode (none / selective / full, through the trainer's own wrappers), it runs two AdamW steps of two
accumulated micro-batches and prints torch.cuda.max_memory_allocated next to `plan.memory.estimate`, with the
ratio. The CPU version of this check is tests/test_plan_memory.py.
"""

from __future__ import annotations

import argparse
import platform

import torch
import torch.nn.functional as F

from llamaforge.model import Transformer
from llamaforge.plan.memory import Layout, estimate
from llamaforge.presets import get_preset
from llamaforge.train.parallel import apply_activation_checkpointing


def measured_peak(args, precision: str, ac: str, micro_batch: int, seq_len: int, accum: int = 2) -> int:
    device = torch.device("cuda")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    tokens = torch.randint(0, args.vocab_size, (accum, micro_batch, seq_len + 1), device=device)
    base = torch.cuda.memory_allocated(device)  # the token batch and anything left from before: not the plan's
    model = Transformer(args).to(dtype=dtype).to(device)  # cast on the CPU: no fp32 copy on the GPU
    apply_activation_checkpointing(model, ac)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)  # no multi-tensor temporaries
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "autocast")
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        for x in tokens:
            with autocast:
                logits = model(x[:, :-1])
                loss = F.cross_entropy(logits.view(-1, args.vocab_size), x[:, 1:].reshape(-1))
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # gradients stay allocated, as between accumulated micro-batches
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(device) - base
    del model, opt, logits, loss
    torch.cuda.empty_cache()
    return peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="base-110m")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=8)
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (the CPU check is tests/test_plan_memory.py)")
    args = get_preset(a.preset, max_seq_len=a.seq_len)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, Python {platform.python_version()}; "
          f"{a.preset}, micro-batch {a.micro_batch} x {a.seq_len}")
    print("| weights / compute | checkpointing | measured GiB | estimated GiB | estimate / measured |")
    print("|---|---|---|---|---|")
    for precision, master, compute in [("bf16", "bf16", "bf16"), ("autocast", "fp32", "bf16")]:
        for ac in ("none", "selective", "full"):
            measured = measured_peak(args, precision, ac, a.micro_batch, a.seq_len)
            layout = Layout(ac=ac, seq_len=a.seq_len, micro_batch=a.micro_batch, master_dtype=master,
                            compute_dtype=compute)
            est = estimate(args, layout).total
            print(f"| {master} / {compute}{' autocast' if precision == 'autocast' else ''} | {ac} | "
                  f"{measured / 2**30:.3f} | {est / 2**30:.3f} | {est / measured:.3f} |")


if __name__ == "__main__":
    main()
