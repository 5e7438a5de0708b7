"""CPU decode speed at batch 1: llamaforge's engine vs HF transformers `generate` and llama.cpp (when
llama-cpp-python is installed), on the same random-weight model (default: the `small-17m` shape), in the same run.

    .venv/bin/python bench/decode_cpu.py [--preset small-17m] [--new-tokens 256] [--threads 2] [--rounds 5]
        [--no-compile] [--int8] [--row-major]

Every runner decodes greedily from the same 16-token prompt for exactly --new-tokens tokens (no early stop);
tokens/s = new tokens / wall time of the whole generate call (prefill included, as HF's is). All runners are built
and warmed up first (the compiled engine compiles then); then each round times every runner once, in turn, so a
slower or faster spell of this shared machine falls on all of them alike. Best and median over the rounds are
printed; the ratios use the best. The greedy tokens of each runner are compared with the eager fp32 engine's.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from llamaforge.formats import save_model
from llamaforge.infer import Engine, SamplingParams
from llamaforge.infer.quantize import quantize
from llamaforge.model import Transformer
from llamaforge.presets import get_preset


def engine_runner(model, prompt, n, compile_step=False, cpu_layout=None) -> Callable[[], list[int]]:
    engine = Engine(model, max_batch=1, max_seq_len=len(prompt) + n + 1, compile=compile_step, cpu_layout=cpu_layout)
    params = SamplingParams(max_new_tokens=n, stop_token_ids=())
    return lambda: engine.generate([prompt], params)[0].tokens


def hf_runner(model, prompt, n, workdir) -> Callable[[], list[int]]:
    from transformers import LlamaForCausalLM

    path = save_model(model, Path(workdir) / "hf", format="hf")
    hf = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    kwargs = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False, "pad_token_id": 0}

    @torch.inference_mode()
    def run():
        return hf.generate(ids, **kwargs)[0, len(prompt):].tolist()

    return run


def llama_cpp_runner(model, prompt, n, threads, workdir, dtype) -> Callable[[], list[int]]:
    import llama_cpp

    path = save_model(model, Path(workdir) / f"m-{dtype}.gguf", format="gguf", dtype=dtype)
    llm = llama_cpp.Llama(str(path), n_ctx=len(prompt) + n + 8, n_threads=threads, n_batch=64, verbose=False)

    def run():
        llm.reset()
        out = []
        for tok in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            out.append(tok)
            if len(out) == n:
                return out

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small-17m", help="model shape (random weights): small-17m, small-42m, ...")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-compile", action="store_true", help="skip the compiled engines (each compiles ~15-30 s)")
    p.add_argument("--int8", action="store_true",
                   help="also int8 weight-only weights, against llama.cpp's q8_0 of the same model")
    p.add_argument("--row-major", action="store_true",
                   help="also the eager engine without its CPU decode layout (Engine(cpu_layout=False))")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Transformer(get_preset(args.preset)).eval()
    prompt = torch.randint(3, model.args.vocab_size, (16,)).tolist()
    n = args.new_tokens
    print(f"{args.preset} ({model.num_params() / 1e6:.1f}M params, fp32), batch 1, {len(prompt)}-token prompt, {n} new "
          f"tokens, {args.threads} threads, {args.rounds} rounds; torch {torch.__version__}, "
          f"Python {platform.python_version()}")

    # Every engine gets its own copy: the eager CPU layout re-lays weights in place, compiling freezes them.
    fresh = lambda: copy.deepcopy(model)
    int8 = lambda: quantize(copy.deepcopy(model), "int8")
    builders: dict[str, Callable[[], Callable[[], list[int]]]] = {
        "llamaforge eager": lambda: engine_runner(fresh(), prompt, n)}
    if args.row_major:
        builders["llamaforge eager row-major"] = lambda: engine_runner(fresh(), prompt, n, cpu_layout=False)
    if not args.no_compile:
        builders["llamaforge compiled"] = lambda: engine_runner(fresh(), prompt, n, compile_step=True)
    if args.int8:
        builders["llamaforge int8 eager"] = lambda: engine_runner(int8(), prompt, n)
        if not args.no_compile:
            builders["llamaforge int8 compiled"] = lambda: engine_runner(int8(), prompt, n, compile_step=True)
    workdir = tempfile.TemporaryDirectory()
    builders["HF generate"] = lambda: hf_runner(model, prompt, n, workdir.name)
    try:
        import llama_cpp
    except ImportError:
        print("llama.cpp: llama-cpp-python is not installed, skipped")
    else:
        print(f"transformers {__import__('transformers').__version__}, llama-cpp-python {llama_cpp.__version__}")
        for dtype in ("f32", "q8_0") if args.int8 else ("f32",):
            builders[f"llama.cpp {dtype}"] = lambda dtype=dtype: llama_cpp_runner(model, prompt, n, args.threads,
                                                                                   workdir.name, dtype)

    runners, tokens = {}, {}
    for name, build in builders.items():
        t = time.perf_counter()
        runners[name] = build()
        tokens[name] = runners[name]()  # warm-up (the compiled engines compile here)
        print(f"  built and warmed up {name} in {time.perf_counter() - t:.1f} s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    workdir.cleanup()

    ref = tokens["llamaforge eager"]
    best = {name: n / min(ts) for name, ts in times.items()}
    print("\n| runner | tok/s best | tok/s median | greedy tokens equal to llamaforge eager fp32 |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        same = sum(a == b for a, b in zip(tokens[name], ref))
        print(f"| {name} | {best[name]:.1f} | {n / statistics.median(ts):.1f} | {same}/{n} |")
    # fp32 engines against the fp32 peers; int8 engines against llama.cpp's q8_0 (8-bit weights too)
    for name in runners:
        if not name.startswith("llamaforge"):
            continue
        for peer in (["llama.cpp q8_0"] if "int8" in name else ["HF generate", "llama.cpp f32"]):
            if peer in best:
                print(f"ratio {name} / {peer}: {best[name] / best[peer]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
