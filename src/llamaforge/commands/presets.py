"""`llamaforge presets`: every named model shape with its parameter count, computed from the code."""

from __future__ import annotations


def add_arguments(parser) -> None:
    """--name: show only this preset."""
    parser.add_argument("--name", default=None, help="show only this preset")


def human(n: int) -> str:
    """6738415616 -> '6.74B', 15191712 -> '15.19M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def run(args) -> int:
    """Print one row per preset (or --name's): parameters and non-embedding parameters counted from the model code, dim,
    layers, heads, KV heads, FFN width, vocabulary and context. Returns 0; UserError for an unknown --name."""
    from llamaforge.errors import UserError
    from llamaforge.presets import PRESETS, count_params

    names = list(PRESETS)
    if args.name is not None:
        if args.name not in PRESETS:
            raise UserError(f"--name: unknown preset {args.name!r}; expected one of {', '.join(PRESETS)}")
        names = [args.name]
    header = f"{'preset':<12} {'params':>8} {'non-emb':>8} {'dim':>5} {'layers':>6} {'heads':>5} {'kv':>3} " \
             f"{'ffn':>6} {'vocab':>6} {'ctx':>5}"
    print(header)
    for name in names:
        a = PRESETS[name]
        total, non_embedding = count_params(a)
        print(f"{name:<12} {human(total):>8} {human(non_embedding):>8} {a.dim:>5} {a.n_layers:>6} {a.n_heads:>5} "
              f"{a.n_kv_heads:>3} {a.ffn_hidden_dim:>6} {a.vocab_size:>6} {a.max_seq_len:>5}")
    return 0
