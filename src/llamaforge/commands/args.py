"""Shared CLI arguments: the project's one place where text from the command line becomes a number, and the one
declaration of the arguments every model-loading command shares (MODEL, --tokenizer, --device, --dtype, and the
engine's --quantize / --max-seq-len / --compile / --chat-template) with the one engine loader.

Rooms below `commands/` take numbers (floats, ints, bytes) and never parse text; a mistake here is a UserError
that names the flag.
"""

from __future__ import annotations

import re

from llamaforge.errors import UserError, check_range

# count suffixes: K/M/B(G)/T/P as powers of 1000 ("1.4T tokens", "65B parameters", the paper's spelling)
COUNT_SUFFIXES = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12, "P": 1e15}
# byte suffixes: decimal (KB, MB, GB) and binary (KiB, MiB, GiB), as HF's `max_shard_size` spells them
BYTE_SUFFIXES = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_count(text: str, flag: str) -> float:
    """'1.4T', '20B', '5.76e23' -> a float; raises UserError naming `flag` on anything else."""
    m = re.fullmatch(r"\s*([-+]?[0-9.]+(?:e[-+]?[0-9]+)?)\s*([KMBGTP]?)\s*", str(text), re.IGNORECASE)
    if not m:
        raise UserError(f"{flag}: expected a number like 1.4e12 or 1.4T, got {text!r}")
    try:
        return float(m.group(1)) * COUNT_SUFFIXES[m.group(2).upper()]
    except ValueError:  # "1.2.3" passes the pattern
        raise UserError(f"{flag}: expected a number like 1.4e12 or 1.4T, got {text!r}") from None


def parse_counts(text: str, flag: str) -> list[float]:
    """'1e-3,3e-3' or '256,1K' -> positive floats (`parse_count` each); raises UserError naming `flag`."""
    values = [parse_count(v, flag) for v in text.split(",")]
    if any(v <= 0 for v in values):
        raise UserError(f"{flag}: expected positive values, got {text!r}")
    return values


def parse_bytes(text: str, flag: str) -> int:
    """'5GB', '500MB', '2GiB', '1000000' -> bytes; raises UserError naming `flag` on anything else."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(text), flags=re.IGNORECASE)
    if not m:
        raise UserError(f"{flag}: expected a size like 5GB or 500MB, got {text!r}")
    return int(float(m.group(1)) * BYTE_SUFFIXES[(m.group(2) or "B").upper()])


def parse_shapes(text: str, flag: str = "--shapes") -> list:
    """'32x2,64x2,96x3' -> `plan.sweep.Shape`s (dim x layers, head_dim min(16, dim)); raises UserError."""
    from llamaforge.plan.sweep import Shape

    shapes = []
    for item in text.split(","):
        try:
            dim, layers = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise UserError(f"{flag}: expected DIMxLAYERS items like 64x2, got {item!r}") from None
        if dim < 2 or layers < 1:
            raise UserError(f"{flag}: expected positive sizes, got {item!r}")
        shapes.append(Shape(dim, layers, head_dim=min(16, dim)))
    return shapes


def add_resume_arguments(parser) -> None:
    """--resume auto|PATH and --trust-checkpoint of `train` and `finetune` (`train.train(resume=...,
    trust_checkpoint=...)`): resuming unpickles DCP's .metadata, so a checkpoint from outside OUT/checkpoints is read
    only when the user says they trust it."""
    parser.add_argument("--resume", default=None, help="'auto': the newest complete checkpoint in OUT; or a path")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow --resume PATH outside OUT/checkpoints (resuming unpickles DCP's .metadata)")


# What `train` / `finetune` write into OUT (train.trainer.train and commands.finetune): any of these means the folder
# holds a run that a fresh start would overwrite (metrics.jsonl truncated, checkpoints and final/ replaced).
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints", "final", "adapter", "finetune_report.md")


def check_out_free(out, resume) -> None:
    """Refuse to start a new `train` / `finetune` run (no --resume) in an OUT folder that holds a previous run: it
    would silently truncate that run's metrics.jsonl and replace its checkpoints and final model. Call before anything
    is loaded or written. A missing or empty folder, or one without run files (`RUN_FILES`), is fine; so is any OUT
    with --resume. Raises UserError naming the folder, what it holds, and the two ways on (as torchtitan and litgpt
    users expect: continue explicitly with --resume, or start in a new folder)."""
    from pathlib import Path

    from llamaforge.errors import UserError

    if resume is not None or not Path(out).is_dir():
        return
    found = [name + ("/" if (Path(out) / name).is_dir() else "") for name in RUN_FILES if (Path(out) / name).exists()]
    if found:
        raise UserError(f"{out}: --out: holds a previous run ({', '.join(found)}); expected a new or empty folder, "
                        "or --resume auto to continue that run")


def add_sampling_arguments(parser, max_new_tokens: int, temperature: float, top_p: float) -> None:
    """The sampling flags of `generate` and `chat`, with each command's defaults: --max-new-tokens, --temperature
    (0: greedy), --top-k (0: off, all tokens), --top-p (nucleus threshold, 1: off), --seed. `check_sampling` checks
    them; the sampler is `infer.sampling.sample_next` (top-k and nucleus top-p, Holtzman et al. 2020)."""
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=temperature, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: off, all)")
    parser.add_argument("--top-p", type=float, default=top_p, help="nucleus sampling threshold (1: off)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the request's sampler (default: the engine's stream)")


def check_sampling(args, min_new_tokens: int = 0) -> None:
    """The sampling flags of `generate` and `chat` (--max-new-tokens, --temperature, --top-k, --top-p) in range:
    a UserError naming the first flag that is not (NaN and infinity are never in range). The ranges are the
    engine's (`infer.Engine.check`); here they are said in the flag's own name before a model is loaded."""
    check_range(args.max_new_tokens, int, min_new_tokens, 2**31 - 1, "--max-new-tokens")
    check_range(args.temperature, float, 0, float("inf"), "--temperature", "[)")
    check_range(args.top_k, int, 0, 2**31 - 1, "--top-k")
    check_range(args.top_p, float, 0, 1, "--top-p", "(]")


# --device's default for every command that loads a model: CUDA when this torch sees a GPU, else the CPU
DEVICE_AUTO = "auto"
DTYPES = ("float32", "bfloat16", "float16")


def add_model_argument(parser, optional: bool = False) -> None:
    """The positional MODEL (any checkpoint format `formats.load_model` detects); `optional` for commands with
    modes that need none (`eval --list-tasks`)."""
    parser.add_argument("model", nargs="?" if optional else None,
                        help="a checkpoint in any format (native / HF folder, Meta folder, .bin, .gguf)")


def add_tokenizer_argument(parser) -> None:
    """--tokenizer FILE: the tokenizer to load with MODEL (default: the one in the model folder, or in a .gguf)."""
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer file (default: the one in the model folder, or inside a .gguf)")


def add_device_arguments(parser) -> None:
    """--device (default auto: cuda when available, else cpu; `resolve_device`) and --dtype (the weights' and
    activations' dtype). A device this machine lacks is one UserError line when the model loads
    (`formats.check_device`)."""
    parser.add_argument("--device", default=DEVICE_AUTO,
                        help="torch device: auto | cpu | cuda | cuda:N (default auto: cuda when available, else cpu)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="weights' dtype (default float32)")


def resolve_device(device: str) -> str:
    """--device's value as a torch device string: "auto" is "cuda" when `torch.cuda.is_available()`, else "cpu";
    anything else is returned as given (checked when the model loads, `formats.check_device`)."""
    if device != DEVICE_AUTO:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_model_arguments(parser) -> None:
    """Arguments shared by `generate`, `serve` and `chat`: which model, on what device, how the engine runs."""
    add_model_argument(parser)
    add_tokenizer_argument(parser)
    add_device_arguments(parser)
    parser.add_argument("--quantize", default=None, choices=["int8", "int4"], help="weight-only quantization")
    parser.add_argument("--max-seq-len", type=int, default=None, help="KV cache length (default: the model's)")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="compile the decode step (default: on for CUDA; on a CPU ~3x faster per token after "
                             "15-45 s of compiling)")


def add_chat_template_argument(parser) -> None:
    """--chat-template for `chat` and `serve` (names and files as `infer.templates.load_chat_format` reads them)."""
    from llamaforge.infer.templates import template_choices

    parser.add_argument("--chat-template", default="auto",
                        help=f"{template_choices(' | ')} (default auto: the tokenizer folder's tokenizer_config.json "
                             "template, llama3 for a Llama 3 tokenizer, else plain)")


def load_model_args(args):
    """(model, tokenizer) from MODEL, --tokenizer, --device, --dtype (`formats.load_model_and_tokenizer`);
    `args.device` is resolved in place (auto -> cuda or cpu) so what a command records is the real device.
    User mistakes (bad path, a device this machine lacks) raise UserError."""
    import torch

    from llamaforge.formats import load_model_and_tokenizer

    args.device = resolve_device(args.device)
    return load_model_and_tokenizer(args.model, args.tokenizer, device=args.device, dtype=getattr(torch, args.dtype))


def load_engine(args, max_batch: int):
    """Model + tokenizer (`load_model_args`) + `infer.Engine` from `add_model_arguments`' arguments (user mistakes
    raise UserError). A model with more embedding rows than the tokenizer has tokens is said in one line on
    stderr (those ids are never sampled)."""
    import sys

    from llamaforge.infer import Engine
    from llamaforge.infer.quantize import quantize

    if args.max_seq_len is not None and args.max_seq_len < 2:
        raise UserError("--max-seq-len: expected at least 2")
    model, tokenizer = load_model_args(args)
    if args.quantize:
        quantize(model, args.quantize)
    engine = Engine(model, tokenizer, max_batch=max_batch, max_seq_len=args.max_seq_len, compile=args.compile)
    if engine.extra_rows:
        print(f"note: {args.model}: the model has {engine.extra_rows} embedding rows more than the tokenizer has "
              f"tokens ({model.args.vocab_size} vs {engine.n_tokens}); those ids are never sampled",
              file=sys.stderr, flush=True)
    return engine
