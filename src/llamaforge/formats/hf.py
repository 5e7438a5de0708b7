"""Hugging Face `LlamaForCausalLM` folders: config.json + model.safetensors (or shards with an index).

Two things differ from Meta's layout besides the names:
- RoPE: Meta rotates interleaved pairs (2i, 2i+1) of each head, HF's `rotate_half` rotates (i, i + head_dim/2).
  The two agree once the rows of wq and wk are permuted per head (`meta_to_hf_rows` / `hf_to_meta_rows`);
  v is never permuted.
- config.json: transformers 5.x keeps the rope base and scaling under `rope_parameters`, older versions under
  `rope_theta` and `rope_scaling`; both are read, both are written. Scaling of `rope_type` "llama3" (Llama 3.1/3.2:
  factor, low_freq_factor, high_freq_factor, original_max_position_embeddings) maps to ModelArgs' rope_scaling_*
  fields; `tie_word_embeddings` to `tie_embeddings` (a tied folder stores no lm_head.weight, as transformers does).
- The tokenizer goes beside the weights in a form `AutoTokenizer` loads: a `tokenizer.json` (HF tokenizers) built
  offline from a SentencePiece or tiktoken `tokenizer.model` (`llamaforge.formats.hf_tokenizer`), with the original
  file kept too, and a `tokenizer_config.json` naming the special tokens (and the chat template, when given).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from llamaforge.errors import UserError
from llamaforge.formats.hf_tokenizer import write_hf_tokenizer
from llamaforge.io import atomic_dir, read_json
from llamaforge.formats.weights import (
    args_from_dict,
    build_model,
    check_field,
    folder_config,
    read_safetensors,
)
from llamaforge.model import ModelArgs

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
TORCH_INDEX = "pytorch_model.bin.index.json"  # older exports: pickled tensors, read with weights_only=True
TORCH_SINGLE = "pytorch_model.bin"
DEFAULT_MAX_SHARD_SIZE = 5 * 10**9  # bytes, HF save_pretrained's default "5GB"

# Meta name -> HF name for the per-layer tensors ("{}" is the layer number).
LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
TOP_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}


def meta_to_hf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from interleaved pairs (Meta) to two halves (HF rotate_half)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_to_meta_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of `meta_to_hf_rows`."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def detect(path: Path) -> bool:
    """Whether `path` is a folder with a transformers config.json (a JSON object not tagged as our native format)."""
    config = folder_config(path)
    if config is None or config.get("format") == "llamaforge":  # a native folder
        return False
    return config.get("model_type") == "llama" or "LlamaForCausalLM" in (config.get("architectures") or [])


# ---------------------------------------------------------------------------------------------- config


def args_from_config(config: dict, source) -> ModelArgs:
    """ModelArgs from an HF LlamaConfig dict; features this model does not have are refused."""
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise UserError(f"{source}: {flag}: biases are not part of LLaMA; expected false")
    if config.get("hidden_act", "silu") != "silu":
        raise UserError(f"{source}: hidden_act: expected 'silu', got {config['hidden_act']!r}")
    rope = config.get("rope_parameters") or {}
    if not isinstance(rope, dict) or not isinstance(config.get("rope_scaling") or {}, dict):
        raise UserError(f"{source}: rope_parameters / rope_scaling: expected an object, got "
                        f"{config.get('rope_parameters')!r} / {config.get('rope_scaling')!r}")
    if rope.get("rope_type", rope.get("type", "default")) == "default" and config.get("rope_scaling"):
        rope = {**rope, **config["rope_scaling"]}  # transformers 4.x: the scaling lives apart from rope_theta
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise UserError(f"{source}: rope_parameters: rope_type {rope_type!r} is not supported; expected 'default' "
                        "or 'llama3'")
    scaling = {}
    if rope_type == "llama3":
        try:
            scaling = dict(rope_scaling_factor=float(rope["factor"]),
                           rope_low_freq_factor=float(rope["low_freq_factor"]),
                           rope_high_freq_factor=float(rope["high_freq_factor"]),
                           rope_original_max_seq_len=int(rope["original_max_position_embeddings"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{source}: rope_parameters: llama3 scaling needs factor, low_freq_factor, "
                            f"high_freq_factor and original_max_position_embeddings ({e!r})") from None
    try:
        dim, n_heads = config["hidden_size"], config["num_attention_heads"]
        fields = dict(
            dim=dim,
            n_layers=config["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=n_heads if config.get("num_key_value_heads") is None else config["num_key_value_heads"],
            vocab_size=config["vocab_size"],
            norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", config.get("rope_theta", 10000.0)),
            max_seq_len=config.get("max_position_embeddings", 2048),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            **scaling,
        )
        hidden = config["intermediate_size"]
    except KeyError as e:
        raise UserError(f"{source}: missing field {e.args[0]!r}") from None
    hf_names = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
                "n_kv_heads": "num_key_value_heads", "vocab_size": "vocab_size", "norm_eps": "rms_norm_eps",
                "max_seq_len": "max_position_embeddings"}
    for name, value in fields.items():  # range checks under HF's field names
        fields[name] = check_field(name, value, source, hf_names.get(name))
    check_field("hidden_dim", hidden, source, "intermediate_size")
    if config.get("head_dim") not in (None, dim // n_heads):
        raise UserError(f"{source}: head_dim: {config['head_dim']} != hidden_size / num_attention_heads")
    if args_from_dict(fields, source).ffn_hidden_dim != hidden:  # keep configs clean when the rule gives the size
        fields["hidden_dim"] = hidden
    return args_from_dict(fields, source)


def rope_scaling_dict(args: ModelArgs) -> dict | None:
    """HF's llama3 rope scaling entries for `args` (None without scaling)."""
    if args.rope_scaling_factor is None:
        return None
    return {"rope_type": "llama3", "factor": args.rope_scaling_factor, "low_freq_factor": args.rope_low_freq_factor,
            "high_freq_factor": args.rope_high_freq_factor,
            "original_max_position_embeddings": args.rope_original_max_seq_len}


def config_from_args(args: ModelArgs, dtype: torch.dtype, bos_id: int = 1, eos_id: int | list[int] = 2) -> dict:
    """The transformers `LlamaConfig` dict (config.json) for `args`, with `torch_dtype` naming `dtype`; transformers
    4.x and 5.x spellings of the RoPE settings both, and the tokenizer's BOS/EOS ids.

    Field names are transformers' (hidden_size, intermediate_size, num_key_value_heads, rms_norm_eps, ...); the
    bench and the parity tests build their `LlamaForCausalLM` peers from this same dict.
    """
    scaling = rope_scaling_dict(args)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": args.ffn_hidden_dim,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "num_hidden_layers": args.n_layers,
        "head_dim": args.head_dim,
        "vocab_size": args.vocab_size,
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,  # transformers < 5
        "rope_scaling": scaling,  # transformers < 5
        "rope_parameters": {"rope_theta": args.rope_theta, **(scaling or {"rope_type": "default"})},  # >= 5
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": args.tie_embeddings,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "dtype": str(dtype).removeprefix("torch."),
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


# ---------------------------------------------------------------------------------------------- load


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """All tensors of the folder (one file, or the shards listed in an index) and the file to blame."""
    from llamaforge.formats.meta import load_shard as read_torch  # weights_only, memory-mapped

    for index_name, single, read in ((INDEX, SINGLE, read_safetensors), (TORCH_INDEX, TORCH_SINGLE, read_torch)):
        index = path / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise UserError(f"{index}: weight_map: expected an object of tensor name -> shard file")
            tensors: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                tensors.update(read(path / shard))
            return tensors, index
        if (path / single).is_file():
            return read(path / single), path / single
    raise UserError(f"{path}: no {SINGLE}, {INDEX}, {TORCH_SINGLE} or {TORCH_INDEX}")


def state_dict_from_hf(hf: dict[str, torch.Tensor], args: ModelArgs, tied: bool) -> dict[str, torch.Tensor]:
    """Rename HF tensors to Meta names and undo the q/k permutation; unknown names are kept for the check."""
    hf = {k: v for k, v in hf.items() if not k.endswith("rotary_emb.inv_freq")}  # old exports carry this buffer
    if tied:  # the output projection is the embedding (build_model shares them); a stored lm_head is a copy
        hf.pop("lm_head.weight", None)
    to_meta = {v: k for k, v in TOP_NAMES.items()}
    for i in range(args.n_layers):
        to_meta.update({f"model.layers.{i}.{h}": f"layers.{i}.{m}" for m, h in LAYER_NAMES.items()})
    out = {}
    for name, w in hf.items():
        meta = to_meta.get(name, name)
        if meta.endswith("attention.wq.weight") and w.dim() == 2 and w.shape[0] == args.n_heads * args.head_dim:
            w = hf_to_meta_rows(w, args.n_heads)
        elif meta.endswith("attention.wk.weight") and w.dim() == 2 and w.shape[0] == args.n_kv_heads * args.head_dim:
            w = hf_to_meta_rows(w, args.n_kv_heads)
        out[meta] = w
    return out


def load(path: Path, device: torch.device, dtype: torch.dtype):
    """A `Transformer` from a transformers `LlamaForCausalLM` folder (config.json + model.safetensors, sharded
    with an index, or pytorch_model*.bin read without pickle code), in `dtype` on `device`.

    wq/wk rows are permuted from HF's half-rotation RoPE layout back to Meta's interleaved one; tied embeddings
    (tie_word_embeddings) fill the output projection. Raises UserError for a config field we cannot honour (biases,
    another activation or RoPE type), a missing tensor, or a shape that disagrees with the config.
    """
    config = read_json(path / "config.json")
    args = args_from_config(config, path / "config.json")
    tensors, source = _read_tensors(path)
    state = state_dict_from_hf(tensors, args, tied=bool(config.get("tie_word_embeddings", False)))
    return build_model(args, state, source, device, dtype)


# ---------------------------------------------------------------------------------------------- save


def hf_state_dict(model, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The model's tensors under HF names, q/k permuted for rotate_half, contiguous on the CPU."""
    args = model.args
    out = {}
    for name, w in model.state_dict().items():
        if name == "output.weight" and args.tie_embeddings:
            continue  # tied: transformers takes lm_head from embed_tokens
        w = w.detach().to("cpu", dtype or w.dtype)
        if name in TOP_NAMES:
            out[TOP_NAMES[name]] = w.contiguous()
            continue
        _, i, rest = name.split(".", 2)
        if rest == "attention.wq.weight":
            w = meta_to_hf_rows(w, args.n_heads)
        elif rest == "attention.wk.weight":
            w = meta_to_hf_rows(w, args.n_kv_heads)
        out[f"model.layers.{i}.{LAYER_NAMES[rest]}"] = w.contiguous()
    return out


def split_shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Greedy split in order: a new shard starts when the next tensor would pass max_bytes."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def save(model, path: Path, tokenizer_path=None, dtype: torch.dtype | None = None,
         max_shard_size: int = DEFAULT_MAX_SHARD_SIZE) -> None:
    """Write `model` as a transformers `LlamaForCausalLM` folder: config.json, generation_config.json and
    safetensors split into files of at most `max_shard_size` bytes (with model.safetensors.index.json when more
    than one), plus the tokenizer when given: as `formats.hf_tokenizer` writes it, with the BOS/EOS ids (EOS and
    `<|eot_id|>` for generation, when the vocabulary has it) taken from it. Written under a temporary name, then
    renamed.

    Raises UserError when `max_shard_size` is not a positive int (the CLI parses "5GB" in commands/args.py).
    """
    tensors = hf_state_dict(model, dtype)
    out_dtype = next(iter(tensors.values())).dtype
    if isinstance(max_shard_size, bool) or not isinstance(max_shard_size, int) or max_shard_size < 1:
        raise UserError(f"max_shard_size: expected a positive number of bytes, got {max_shard_size!r}")
    shards = split_shards(tensors, max_shard_size)
    bos, eos, stops = 1, 2, [2]
    if tokenizer_path is not None:
        from llamaforge.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer_path)
        bos, eos = tok.bos_id, tok.eos_id
        eot = tok.special_token_id("<|eot_id|>")
        stops = [eos] + ([eot] if eot is not None else [])
    with atomic_dir(path) as tmp:
        config = config_from_args(model.args, out_dtype, bos_id=bos, eos_id=eos)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        generation = {"bos_token_id": bos, "eos_token_id": stops if len(stops) > 1 else eos}
        (tmp / "generation_config.json").write_text(json.dumps(generation) + "\n")
        if len(shards) == 1:
            save_file(shards[0], str(tmp / SINGLE), metadata={"format": "pt"})
        else:
            weight_map = {}
            for n, shard in enumerate(shards, start=1):
                fname = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / fname), metadata={"format": "pt"})
                weight_map.update({k: fname for k in shard})
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        if tokenizer_path is not None:
            write_hf_tokenizer(tokenizer_path, tmp)
