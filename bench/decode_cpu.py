"""CPU decode speed at batch 1: llamaforge's engine vs HF transformers `generate` (and llama.cpp when
llama-cpp-python is installed), on the same random-weight model of the `small-17m` shape, in the same run.

    .venv/bin/python bench/decode_cpu.py [--new-tokens 256] [--threads 2] [--compile] [--repeats 3] [--int8]
        [--row-major]

Every runner decodes greedily from the same 16-token prompt for exactly --new-tokens tokens (no early stop);
tokens/s = new tokens / wall time of the whole generate call (prefill included, as HF's is). The best of
--repeats runs is reported (the machine is shared). The greedy tokens of each peer are compared with ours.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from llamaforge.formats import save_model
from llamaforge.infer import Engine, SamplingParams
from llamaforge.infer.quantize import quantize
from llamaforge.model import Transformer
from llamaforge.presets import get_preset


def best_of(repeats: int, fn):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def bench_engine(model, prompt, n, repeats, compile_step=False, label="llamaforge", cpu_layout=None):
    engine = Engine(model, max_batch=1, max_seq_len=len(prompt) + n + 1, compile=compile_step,
                    cpu_layout=cpu_layout)
    params = SamplingParams(max_tokens=n, stop_token_ids=())
    t = time.perf_counter()
    engine.generate([prompt], SamplingParams(max_tokens=8, stop_token_ids=()))  # warm-up (and compile)
    warm = time.perf_counter() - t
    secs, out = best_of(repeats, lambda: engine.generate([prompt], params)[0].tokens)
    model.clear_cache()
    print(f"{label:28s} {n / secs:8.1f} tok/s   (warm-up {warm:.1f} s)", flush=True)
    return n / secs, out


def bench_hf(model, prompt, n, repeats, workdir):
    from transformers import LlamaForCausalLM

    path = save_model(model, Path(workdir) / "hf", format="hf")
    hf = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    kwargs = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        hf.generate(ids, **{**kwargs, "max_new_tokens": 8, "min_new_tokens": 8})
        secs, out = best_of(repeats, lambda: hf.generate(ids, **kwargs)[0, len(prompt):].tolist())
    print(f"{'HF transformers generate':28s} {n / secs:8.1f} tok/s", flush=True)
    return n / secs, out


def bench_llama_cpp(model, prompt, n, repeats, threads, workdir):
    try:
        import llama_cpp
    except ImportError:
        print("llama.cpp: llama-cpp-python not installed, skipped")
        return None, None
    path = save_model(model, Path(workdir) / "m.gguf", format="gguf", dtype="f32")
    llm = llama_cpp.Llama(str(path), n_ctx=len(prompt) + n + 8, n_threads=threads, n_batch=64, verbose=False)

    def run():
        llm.reset()
        out = []
        for tok in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            out.append(tok)
            if len(out) == n:
                return out

    run()
    secs, out = best_of(repeats, run)
    print(f"{'llama.cpp (f32 GGUF)':28s} {n / secs:8.1f} tok/s   (llama-cpp-python {llama_cpp.__version__})",
          flush=True)
    return n / secs, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd decode step")
    p.add_argument("--int8", action="store_true", help="also time int8 weight-only weights")
    p.add_argument("--row-major", action="store_true",
                   help="also time the engine without its CPU decode layout (Engine(cpu_layout=False)): the before")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Transformer(get_preset("small-17m")).eval()
    prompt = torch.randint(3, model.args.vocab_size, (16,)).tolist()
    n = args.new_tokens
    print(f"small-17m ({model.num_params() / 1e6:.1f}M params, fp32), batch 1, {len(prompt)}-token prompt, {n} new "
          f"tokens, {args.threads} threads; torch {torch.__version__}, Python {platform.python_version()}")
    results = {}
    if args.row_major:  # first: the main run below re-lays `model`'s weights in place
        results["llamaforge no cpu_layout"] = bench_engine(copy.deepcopy(model), prompt, n, args.repeats,
                                                       label="llamaforge (no cpu_layout)", cpu_layout=False)
    ours, ours_tokens = bench_engine(model, prompt, n, args.repeats)
    if args.compile:
        results["llamaforge compiled"] = bench_engine(copy.deepcopy(model), prompt, n, args.repeats, True,
                                                      "llamaforge (torch.compile)")
    if args.int8:
        results["llamaforge int8"] = bench_engine(quantize(copy.deepcopy(model), "int8"), prompt, n, args.repeats,
                                                  label="llamaforge int8 weights")
        if args.row_major:
            results["llamaforge int8 no cpu_layout"] = bench_engine(
                quantize(copy.deepcopy(model), "int8"), prompt, n, args.repeats,
                label="llamaforge int8 (no cpu_layout)", cpu_layout=False)
    with tempfile.TemporaryDirectory() as workdir:
        import transformers

        hf_speed, hf_tokens = bench_hf(model, prompt, n, args.repeats, workdir)
        print(f"  (transformers {transformers.__version__}; same greedy tokens: {hf_tokens == ours_tokens})")
        cpp_speed, cpp_tokens = bench_llama_cpp(model, prompt, n, args.repeats, args.threads, workdir)
        if cpp_speed:
            same = sum(a == b for a, b in zip(cpp_tokens, ours_tokens))
            print(f"  (llama.cpp greedy tokens equal to ours: {same}/{n})")
    print(f"ratio llamaforge / HF generate: {ours / hf_speed:.2f}x")
    if cpp_speed:
        print(f"ratio llamaforge / llama.cpp: {ours / cpp_speed:.2f}x")
    for name, (speed, _) in results.items():
        print(f"ratio {name} / HF generate: {speed / hf_speed:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
