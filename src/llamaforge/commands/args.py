"""Shared CLI argument parsing: the project's one place where text from the command line becomes a number.

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


def check_sampling(args, min_new_tokens: int = 0) -> None:
    """The sampling flags of `generate` and `chat` (--max-new-tokens, --temperature, --top-k, --top-p) in range:
    a UserError naming the first flag that is not (NaN and infinity are never in range). The ranges are the
    engine's (`infer.Engine.check`); here they are said in the flag's own name before a model is loaded."""
    check_range(args.max_new_tokens, int, min_new_tokens, 2**31 - 1, "--max-new-tokens")
    check_range(args.temperature, float, 0, float("inf"), "--temperature", "[)")
    check_range(args.top_k, int, 0, 2**31 - 1, "--top-k")
    check_range(args.top_p, float, 0, 1, "--top-p", "(]")
