"""Meta's release layout: params.json + consolidated.NN.pth, one file per model-parallel rank.

Meta's model uses fairscale's tensor-parallel layers, so a shard holds a slice of every big matrix:
- column-parallel (output features split, dim 0): wq, wk, wv, w1, w3 and the output projection;
- row-parallel (input features split, dim 1): wo, w2, and the token embedding (ParallelEmbedding splits dim);
- RMSNorm gains are replicated.
Reading concatenates the slices along those dims (any degree: 7B ships MP=1, 65B MP=8); writing splits them
again for any degree that divides the heads and widths, so a checkpoint can be resharded for fewer GPUs.
Weights are in Meta's own layout and names: no renaming, no RoPE permutation.

`torch.load(weights_only=True)` never runs code from the pickle; a file that needs code is refused.

Llama 3.x (meta-llama/llama3, llama-models): params.json adds `use_scaled_rope` (RoPE scaling of type llama3 with
Meta's fixed low/high frequency factors 1 and 4 over an original context of 8,192) and may give
`rope_scaling_factor`; without it the factor is 8 (Llama 3.1) or, for the tied-embedding 3.2 1B/3B, 32. Tied
embeddings are recognised by the checkpoint itself: `output.weight` absent or equal to `tok_embeddings.weight`
(Meta's model code keeps a separate output layer, so the writer stores the copy).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch

from llamaforge.errors import UserError
from llamaforge.formats import copy_tokenizer
from llamaforge.io import atomic_dir, read_json
from llamaforge.formats.weights import args_from_dict, build_model, check_field
from llamaforge.model import ModelArgs

SHARD_RE = re.compile(r"consolidated\.(\d+)\.pth")
COLUMN_PARALLEL = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
                   "feed_forward.w1.weight", "feed_forward.w3.weight", "output.weight")
ROW_PARALLEL = ("attention.wo.weight", "feed_forward.w2.weight", "tok_embeddings.weight")
PARAMS_KEYS = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
               "norm_eps", "rope_theta", "max_seq_len", "max_batch_size", "use_scaled_rope", "rope_scaling_factor"}
# Meta's apply_scaling hard-codes these (llama3/model.py); other values cannot be written to params.json.
META_LOW_FREQ_FACTOR, META_HIGH_FREQ_FACTOR, META_ORIGINAL_CONTEXT = 1.0, 4.0, 8192


def split_dim(name: str) -> int | None:
    """The dim along which fairscale splits this tensor across ranks (None: replicated)."""
    if name.endswith(COLUMN_PARALLEL):
        return 0
    if name.endswith(ROW_PARALLEL):
        return 1
    return None


def shard_files(path: Path) -> list[Path]:
    """The `consolidated.NN.pth` files of a Meta folder, in model-parallel rank order.

    Raises UserError when the numbers have a gap (consolidated.00 .. NN must all be there).
    """
    files = sorted((p for p in path.glob("consolidated.*.pth") if SHARD_RE.fullmatch(p.name)),
                   key=lambda p: int(SHARD_RE.fullmatch(p.name).group(1)))
    numbers = [int(SHARD_RE.fullmatch(p.name).group(1)) for p in files]
    if numbers != list(range(len(files))):
        raise UserError(f"{path}: shard files are {[p.name for p in files]}; expected consolidated.00.pth up to "
                        f"consolidated.{len(files) - 1:02d}.pth with none missing")
    return files


def detect(path: Path) -> bool:
    """Whether `path` is a Meta folder: params.json, or consolidated.NN.pth shards (so `load` can name what is missing).
    """
    # A folder of consolidated shards is Meta's even without params.json, so that load() can say it is missing.
    return path.is_dir() and ((path / "params.json").is_file() or any(path.glob("consolidated.*.pth")))


# ---------------------------------------------------------------------------------------------- params.json


def args_from_params(params: dict, vocab_size: int, source, tied: bool = False) -> ModelArgs:
    """ModelArgs from params.json; LLaMA-1 files say vocab_size -1, so the embedding's rows give it. `tied`: the
    checkpoint's output projection is its embedding (see the module docstring)."""
    unknown = set(params) - PARAMS_KEYS
    if unknown:
        raise UserError(f"{source}: unknown field(s) {sorted(unknown)}")
    scaled = params.get("use_scaled_rope", False)
    if not isinstance(scaled, bool):
        raise UserError(f"{source}: use_scaled_rope: expected true or false, got {scaled!r}")
    if "rope_scaling_factor" in params and not scaled:
        raise UserError(f"{source}: rope_scaling_factor: given without use_scaled_rope: true")
    fields = {k: v for k, v in params.items() if k not in ("max_batch_size", "use_scaled_rope")}
    if fields.get("vocab_size", -1) == -1:  # Meta's "defined by the tokenizer"
        fields["vocab_size"] = vocab_size
    if scaled:
        fields["rope_scaling_factor"] = float(fields.get("rope_scaling_factor", 32.0 if tied else 8.0))
        fields.update(rope_low_freq_factor=META_LOW_FREQ_FACTOR, rope_high_freq_factor=META_HIGH_FREQ_FACTOR,
                      rope_original_max_seq_len=META_ORIGINAL_CONTEXT)
    fields["tie_embeddings"] = tied
    # params.json carries no context length (Meta passes it at build time): LLaMA-1 used 2048, Llama 2
    # (recognizable by eps 1e-5) 4096, Llama 3 (rope_theta 500000) 8192, Llama 3.1/3.2 (scaled RoPE) 131072.
    default_len = 4096 if fields.get("norm_eps") == 1e-5 else 2048
    if isinstance(fields.get("rope_theta"), (int, float)) and fields["rope_theta"] >= 500000.0:
        default_len = 131072 if scaled else 8192
    fields.setdefault("max_seq_len", default_len)
    if not isinstance(params.get("n_heads"), int):  # params.json has no n_kv_heads for MHA: name the real field
        fields["n_heads"] = check_field("n_heads", params.get("n_heads"), source)
    return args_from_dict(fields, source)


def params_from_args(args: ModelArgs) -> dict:
    """params.json that Meta's `ModelArgs(**params)` accepts and that gives back the same FFN width."""
    params = {"dim": args.dim, "n_layers": args.n_layers, "n_heads": args.n_heads}
    if args.n_kv_heads != args.n_heads:
        params["n_kv_heads"] = args.n_kv_heads
    params["vocab_size"] = args.vocab_size
    multiple_of, multiplier = args.multiple_of, args.ffn_dim_multiplier
    rule = ModelArgs(dim=args.dim, n_heads=args.n_heads, multiple_of=multiple_of, ffn_dim_multiplier=multiplier)
    if rule.ffn_hidden_dim != args.ffn_hidden_dim:
        # An explicit width (llama2.c, HF): rounding up to a multiple of the width itself gives the width,
        # once the unrounded size int(8 dim / 3), scaled by the multiplier when needed, is at most the width.
        hidden, base = args.ffn_hidden_dim, int(2 * (4 * args.dim) / 3)
        multiple_of, multiplier = hidden, (None if hidden >= base else hidden / base)
    params["multiple_of"] = multiple_of
    if multiplier is not None:
        params["ffn_dim_multiplier"] = multiplier
    params["norm_eps"] = args.norm_eps
    if args.rope_theta != 10000.0:  # Meta's LLaMA-1/2 ModelArgs have no such field: write it only when needed
        params["rope_theta"] = args.rope_theta
    if args.rope_scaling_factor is not None:
        fixed = (META_LOW_FREQ_FACTOR, META_HIGH_FREQ_FACTOR, META_ORIGINAL_CONTEXT)
        if (args.rope_low_freq_factor, args.rope_high_freq_factor, args.rope_original_max_seq_len) != fixed:
            raise UserError("meta: rope scaling with low/high frequency factors "
                            f"{args.rope_low_freq_factor}/{args.rope_high_freq_factor} and original context "
                            f"{args.rope_original_max_seq_len} cannot be written to params.json (Meta's code fixes "
                            "1/4 and 8192); expected those values, or another format")
        params["use_scaled_rope"] = True
        params["rope_scaling_factor"] = args.rope_scaling_factor
    if args.max_seq_len != args_from_params(params, args.vocab_size, "", args.tie_embeddings).max_seq_len:
        params["max_seq_len"] = args.max_seq_len  # only when the family's default would differ
    return params


# ---------------------------------------------------------------------------------------------- load


def load_shard(path: Path) -> dict[str, torch.Tensor]:
    """One consolidated.NN.pth, memory-mapped; pickles that need code to load are refused."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # legacy (pre-zip) torch.save files cannot be memory-mapped
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a page long; keep the line that names what the pickle wanted to run.
        lines = [line for line in str(e).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        why = lines[0].strip() if lines else "it needs objects other than tensors"
        raise UserError(f"{path}: refusing to load a pickle that carries code ({why})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({str(e).splitlines()[0] if str(e) else e!r})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a dict of tensor name -> tensor")
    state.pop("rope.freqs", None)  # LLaMA-1 files carry their RoPE frequencies; they are recomputed
    return state


def merge_shards(shards: list[dict[str, torch.Tensor]], source) -> dict[str, torch.Tensor]:
    """One state dict from the model-parallel slices (concatenated along each tensor's fairscale dim)."""
    names = shards[0].keys()
    for i, shard in enumerate(shards[1:], start=1):
        if shard.keys() != names:
            raise UserError(f"{source}: consolidated.{i:02d}.pth holds different tensor names than consolidated.00.pth")
    if len(shards) == 1:
        return dict(shards[0])
    out = {}
    for name in names:
        dim = split_dim(name)
        out[name] = shards[0][name] if dim is None else torch.cat([s[name] for s in shards], dim=dim)
    return out


def load(path: Path, device: torch.device, dtype: torch.dtype):
    """A `Transformer` from Meta's release layout (params.json + consolidated.NN.pth), merging the
    model-parallel shards along the dimension each weight was split on (column-parallel wq/wk/wv/w1/w3/output on
    rows, row-parallel wo/w2 and the embedding on columns, as in Meta's fairscale layers), in `dtype` on `device`.

    The shards are read with `torch.load(weights_only=True)`: no pickled code runs. Raises UserError when
    params.json or the shards are missing, or shapes disagree.
    """
    params_path = path / "params.json"
    if not params_path.is_file():
        raise UserError(f"{params_path}: missing; a Meta checkpoint folder needs params.json beside consolidated.NN.pth")
    params = read_json(params_path)
    files = shard_files(path)
    if not files:
        raise UserError(f"{path}: no consolidated.NN.pth files beside params.json")
    state = merge_shards([load_shard(f) for f in files], path)
    embedding, output = state.get("tok_embeddings.weight"), state.get("output.weight")
    tied = embedding is not None and (output is None or torch.equal(output, embedding))
    args = args_from_params(params, embedding.shape[0] if embedding is not None else -1, params_path, tied=tied)
    return build_model(args, state, path, device, dtype)


# ---------------------------------------------------------------------------------------------- save


def shard_state(state: dict[str, torch.Tensor], rank: int, shards: int) -> dict[str, torch.Tensor]:
    """The slices rank `rank` of `shards` holds (cloned: torch.save of a view would store the whole tensor)."""
    out = {}
    for name, w in state.items():
        dim = split_dim(name)
        out[name] = (w if dim is None else w.chunk(shards, dim=dim)[rank]).contiguous().clone()
    return out


def check_divisible(args: ModelArgs, shards: int) -> None:
    """Raise UserError unless `shards` divides every dimension that model parallelism splits (heads, kv heads, dim, FFN
    width, vocab).
    """
    sizes = {"n_heads": args.n_heads, "n_kv_heads": args.n_kv_heads, "dim": args.dim,
             "ffn hidden size": args.ffn_hidden_dim, "vocab_size": args.vocab_size}
    for what, size in sizes.items():
        if size % shards:
            raise UserError(f"shards: {shards} does not divide {what} = {size}; pick a degree that divides it")


def save(model, path: Path, shards: int = 1, tokenizer_path=None, dtype: torch.dtype | None = None) -> None:
    """Write `model` in Meta's layout under `path`: params.json and `shards` consolidated.NN.pth files, each
    rank's slices as Meta's model-parallel code expects them, plus the tokenizer when given. Written under a
    temporary name, then renamed.

    Raises UserError when `shards` < 1 or does not divide the split dimensions (`check_divisible`).
    """
    if shards < 1:
        raise UserError(f"shards: expected a positive number, got {shards}")
    check_divisible(model.args, shards)
    state = {k: v.detach().to("cpu", dtype or v.dtype) for k, v in model.state_dict().items()}
    with atomic_dir(path) as tmp:
        (tmp / "params.json").write_text(json.dumps(params_from_args(model.args), indent=2) + "\n")
        for rank in range(shards):  # one rank's slices in memory at a time
            torch.save(shard_state(state, rank, shards), tmp / f"consolidated.{rank:02d}.pth")
        if tokenizer_path is not None:
            copy_tokenizer(tokenizer_path, tmp)
