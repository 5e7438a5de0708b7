"""`llamaforge generate MODEL [--tokenizer PATH] --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-k K]
[--top-p P] [--seed S] [--stop STR ...] [--quantize int8|int4]`: print the completion as it is produced.

Runs on the inference engine (`llamaforge.infer`): static KV cache, sampling on the device, text streamed as
soon as it is whole (`infer/detok.py`: a multi-byte character split over byte tokens waits for its last byte)."""

from __future__ import annotations

import sys
import time

from llamaforge.commands.args import add_model_arguments, add_sampling_arguments, check_sampling, load_engine


def add_arguments(parser) -> None:
    """MODEL and the shared model/engine arguments (`commands.args`), then --prompt, --max-new-tokens (128),
    --temperature (0: greedy), --top-k (0: all), --top-p (1.0), --seed, --stop (repeatable)."""
    add_model_arguments(parser)
    parser.add_argument("--prompt", required=True, help="text to continue ('' starts from BOS)")
    add_sampling_arguments(parser, max_new_tokens=128, temperature=0.0, top_p=1.0)
    parser.add_argument("--stop", action="append", default=[], help="stop before this text (repeatable)")


def run(args) -> int:
    """Print the prompt and its completion as the engine produces it (stdout), then the prefill and decode timings on
    stderr (tokens/s, as llama.cpp reports them). Returns 0. Raises UserError for bad sampling flags or an empty
    --stop (before loading the model), or a prompt that fills the whole context."""
    from llamaforge.errors import UserError
    from llamaforge.infer import Request, SamplingParams

    check_sampling(args)
    if any(not s for s in args.stop):
        raise UserError("--stop: expected non-empty text")
    engine = load_engine(args, max_batch=1)
    prompt = engine.tokenizer.encode(args.prompt, bos=True)
    if len(prompt) >= engine.max_seq_len:
        raise UserError(f"--prompt: {len(prompt)} tokens, but the context holds {engine.max_seq_len}")
    params = SamplingParams(max_new_tokens=min(args.max_new_tokens, engine.max_seq_len - len(prompt)),
                            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                            stop=args.stop)

    def show(_, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    sys.stdout.write(args.prompt)
    request = engine.submit(Request(prompt, params, on_update=show))
    start = time.perf_counter()
    engine.step()  # prefill (and the first token)
    first = time.perf_counter()
    while not request.done.is_set():
        engine.step()
    if request.error is not None:
        raise request.error
    sys.stdout.write("\n")
    # Timings on stderr (stdout holds only the text), as llama.cpp reports them.
    n, decode_s = len(request.tokens), time.perf_counter() - first
    rate = f", then {(n - 1) / decode_s:.1f} tokens/s" if n > 1 and decode_s > 0 else ""
    compiled = ", first step compiled" if engine.compiled else ""
    print(f"[{len(prompt)} prompt tokens and the first new one in {first - start:.2f} s{compiled}; {n} new tokens"
          f"{rate}]", file=sys.stderr)
    return 0
