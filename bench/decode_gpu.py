"""GPU decode speed at batch 1 for a 7B-shape model (random weights): bf16 and int8 weight-only, with the
compiled decode step (CUDA graphs), and the fraction of the memory-bandwidth bound reached.

    python bench/decode_gpu.py [--preset llama-7b] [--new-tokens 200] [--peak-gbs 3350]

Bandwidth bound: every decode step reads all weights once (the embedding row aside) plus the KV cache, so
tokens/s <= peak bandwidth / bytes per token. --peak-gbs defaults to the H100 SXM's 3350 GB/s (use 2039 for an
A100-80GB, 4800 for an H200).
"""

from __future__ import annotations

import argparse
import time

import torch

from llamaforge.infer import Engine, SamplingParams
from llamaforge.infer.quantize import quantize
from llamaforge.model import Transformer
from llamaforge.presets import get_preset


def weight_bytes(model: Transformer) -> int:
    """Bytes one decode step reads: every parameter and buffer except the embedding table (one row is read)."""
    total = sum(t.numel() * t.element_size() for n, t in model.state_dict().items() if "tok_embeddings" not in n)
    return total


def run(model: Transformer, label: str, prompt, n: int, peak_gbs: float) -> None:
    engine = Engine(model, max_batch=1, max_seq_len=len(prompt) + n + 1, compile=True)
    params = SamplingParams(max_new_tokens=n, stop_token_ids=())
    t = time.perf_counter()
    engine.generate([prompt], SamplingParams(max_new_tokens=4, stop_token_ids=()))
    engine.generate([prompt], SamplingParams(max_new_tokens=4, stop_token_ids=()))  # CUDA graphs recorded
    torch.cuda.synchronize()
    warm = time.perf_counter() - t
    best = float("inf")
    for _ in range(3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        engine.generate([prompt], params)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    tps = n / best
    gbs = weight_bytes(model) * tps / 1e9
    print(f"{label:10s} {tps:8.1f} tok/s  {gbs:7.0f} GB/s  {100 * gbs / peak_gbs:5.1f}% of {peak_gbs:.0f} GB/s  "
          f"(warm-up {warm:.0f} s)", flush=True)
    model.clear_cache()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama-7b")
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--peak-gbs", type=float, default=3350.0)
    p.add_argument("--modes", default="bf16,int8")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Transformer(get_preset(args.preset, max_seq_len=1024)).to(torch.bfloat16).eval()
    prompt = torch.randint(3, model.args.vocab_size, (8,)).tolist()
    print(f"{args.preset} ({model.num_params() / 1e9:.2f}B params), batch 1, {args.new_tokens} new tokens, "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    for mode in args.modes.split(","):
        if mode == "bf16":
            run(model, "bf16", prompt, args.new_tokens, args.peak_gbs)
        else:
            run(quantize(model, mode), mode, prompt, args.new_tokens, args.peak_gbs)


if __name__ == "__main__":
    main()
