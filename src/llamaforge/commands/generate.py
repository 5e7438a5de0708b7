"""`llamaforge generate MODEL [--tokenizer PATH] --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-p P]
[--seed S]`: print the completion as it is produced."""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a checkpoint in any format (native / HF folder, Meta folder, .bin, .gguf)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer file (default: the one in the model folder)")
    parser.add_argument("--prompt", required=True, help="text to continue ('' starts from BOS)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def run(args) -> int:
    from pathlib import Path

    import torch

    from llamaforge.errors import UserError
    from llamaforge.formats import load_model
    from llamaforge.generate import generate
    from llamaforge.tokenizer import load_tokenizer

    if args.max_new_tokens < 0 or args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UserError("--max-new-tokens >= 0, --temperature >= 0 and 0 < --top-p <= 1 expected")
    model_path = Path(args.model)
    if args.tokenizer is None and not model_path.is_dir():
        raise UserError(f"{model_path}: --tokenizer: required when MODEL is a file (no folder to find it in)")
    tokenizer = load_tokenizer(args.tokenizer or model_path)
    model = load_model(model_path, device=args.device, dtype=getattr(torch, args.dtype))
    too_big = [i for i in tokenizer.encode(args.prompt, bos=True) if i >= model.args.vocab_size]
    if too_big:
        raise UserError(f"{tokenizer.path}: token id {too_big[0]} is outside the model's vocabulary of "
                        f"{model.args.vocab_size}; expected the model's own tokenizer")

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    sys.stdout.write(args.prompt)
    try:
        generate(model, tokenizer, args.prompt, args.max_new_tokens, temperature=args.temperature,
                 top_p=args.top_p, seed=args.seed, on_text=show)
    except ValueError as e:  # e.g. a prompt longer than the model's context
        raise UserError(f"--prompt: {e}") from None
    sys.stdout.write("\n")
    return 0
