"""What every format shares: a model built on the meta device, filled with checked tensors (no second copy)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open

from llamaforge.errors import UserError, check_range
from llamaforge.model import ModelArgs, Transformer


# The range every header field must fall in (a huge value would be a multi-terabyte allocation, 0 a division by
# zero): (type, low, high, brackets). The upper bounds leave ~10x room over the largest released LLaMA-family
# shapes (Llama 3.1 405B: dim 16384, 126 layers, 128 heads, vocab 128256, 131072 positions, FFN 53248).
MODEL_RANGES: dict[str, tuple] = {
    "dim": (int, 1, 1 << 17, "[]"), "n_layers": (int, 1, 1 << 12, "[]"), "n_heads": (int, 1, 1 << 12, "[]"),
    "n_kv_heads": (int, 1, 1 << 12, "[]"), "vocab_size": (int, 1, 1 << 22, "[]"),
    "multiple_of": (int, 1, 1 << 17, "[]"), "ffn_dim_multiplier": (float, 0, 64, "(]"),
    "norm_eps": (float, 0, 1, "(]"), "rope_theta": (float, 0, 1e12, "(]"), "max_seq_len": (int, 1, 1 << 24, "[]"),
    "hidden_dim": (int, 1, 1 << 20, "[]"),
    "rope_scaling_factor": (float, 0, 1e4, "(]"), "rope_low_freq_factor": (float, 0, 1e4, "(]"),
    "rope_high_freq_factor": (float, 0, 1e4, "(]"), "rope_original_max_seq_len": (int, 1, 1 << 24, "[]"),
}


def check_field(name: str, value, source, label: str | None = None):
    """A ModelArgs field's value checked against `MODEL_RANGES` (None and fields without a range pass as is);
    `label` is the field's name in the file's own format (HF's `hidden_size`, GGUF's `llama.embedding_length`).

    Returns the value (an int given for a float field becomes a float); raises UserError naming source and field."""
    if name not in MODEL_RANGES or value is None:
        return value
    kind, low, high, bounds = MODEL_RANGES[name]
    return check_range(value, kind, low, high, f"{source}: {label or name}", bounds)


def args_from_dict(d: Mapping, source) -> ModelArgs:
    """ModelArgs from a dict, rejecting unknown keys and out-of-range values (`MODEL_RANGES`) with the file named.

    The one gate every format's header and the training config pass through."""
    fields = {f.name for f in dataclasses.fields(ModelArgs)}
    unknown = set(d) - fields
    if unknown:
        raise UserError(f"{source}: unknown model field(s) {sorted(unknown)}; expected some of {sorted(fields)}")
    checked = {k: check_field(k, v, source) for k, v in d.items()}
    try:
        return ModelArgs(**checked)
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise UserError(f"{source}: invalid model config: {e}") from None


def build_model(args: ModelArgs, state_dict: Mapping[str, torch.Tensor], source, device, dtype) -> Transformer:
    """Create `Transformer(args)` without allocating, then assign `state_dict` (Meta names) into it.

    Every key and shape is checked first, so a mismatched checkpoint fails with one clear line. With
    `args.tie_embeddings` the output projection is the embedding: `output.weight` may be absent, and is ignored."""
    with torch.device("meta"):
        model = Transformer(args)
    if args.tie_embeddings:  # one tensor: the embedding; a checkpoint's copy of it as output is dropped
        state_dict = {k: v for k, v in state_dict.items() if k != "output.weight"}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if args.tie_embeddings:
        expected.pop("output.weight")
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected tensors {extra[:3]}{' ...' if len(extra) > 3 else ''}")
        raise UserError(f"{source}: {'; '.join(parts)}")
    for k, shape in expected.items():
        if tuple(state_dict[k].shape) != shape:
            raise UserError(f"{source}: tensor {k} has shape {tuple(state_dict[k].shape)}, expected {shape}")
    tensors = {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}
    model.load_state_dict(tensors, assign=True, strict=not args.tie_embeddings)
    model.tie_weights()
    model.init_rope(device)
    return model


def folder_config(path: Path) -> dict | None:
    """The JSON object in `path`/config.json when `path` is a folder holding a readable one, else None: what the
    native and HF `detect` functions look at (no error: detection only asks)."""
    cfg = Path(path) / "config.json"
    if not (Path(path).is_dir() and cfg.is_file()):
        return None
    try:
        config = json.loads(cfg.read_text())
    except (ValueError, UnicodeDecodeError):
        return None
    return config if isinstance(config, dict) else None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, memory-mapped by safetensors; a truncated or corrupt file is a UserError."""
    try:
        out = {}
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
        return out
    except FileNotFoundError:
        raise UserError(f"{path}: missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: not a valid safetensors file ({e})") from None


# Largest magnitude each narrow storage type holds. q8_0 (llama.cpp) stores blocks of 32 int8 with one fp16 scale
# d = max|x| / 127, so its quantized tensors overflow when max|x| > 65504 * 127; its other tensors are fp16.
FP16_MAX = 65504.0
NARROW = {"float16": FP16_MAX, "bfloat16": float(torch.finfo(torch.bfloat16).max), "q8_0": FP16_MAX}
FP16_TINY = 2.0**-24  # fp16's smallest subnormal: smaller magnitudes round to 0


def _narrow_name(dtype) -> str | None:
    name = str(dtype).removeprefix("torch.").lower()
    return {"f16": "float16", "half": "float16", "bf16": "bfloat16"}.get(name, name) if name in (
        *NARROW, "f16", "half", "bf16") else None


def check_narrowing(model, dtype, saturate: bool = False, vectors_stay_f32: bool = False) -> list[str]:
    """Refuse (or, with `saturate`, clamp) a conversion to `dtype` that would overflow: any tensor whose max |value|
    exceeds what the type holds would become inf (fp16, bf16) or a broken q8_0 scale.

    dtype: a torch dtype or a name ("float16", "bfloat16", "q8_0", "f16", "bf16"); others (fp32) are not checked.
    vectors_stay_f32: the format keeps 1-D tensors (norm gains) in fp32 whatever the dtype (GGUF, as llama.cpp).
    Returns one note line per clamped tensor and one for values that underflow to 0 in fp16 (not refused: they are
    below 6e-8 and were noise). Raises UserError naming the first tensor that overflows and its max |value|.
    The rule follows llama.cpp's converters, which check f16 overflow the same way (`--outtype f16`)."""
    kind = _narrow_name(dtype)
    if kind is None:
        return []
    notes, underflow = [], 0
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point() or (vectors_stay_f32 and t.dim() == 1):
                continue
            limit = NARROW[kind]
            if kind == "q8_0" and t.dim() == 2 and t.shape[-1] % 32 == 0:
                limit = FP16_MAX * 127  # quantized in blocks (see formats.gguf): the fp16 scale is max / 127
            peak = float(t.abs().max()) if t.numel() else 0.0
            if not math.isfinite(peak) or peak > limit:
                if not saturate:
                    raise UserError(f"{name}: max |value| {peak:.6g} does not fit {kind} (largest {limit:.6g}); "
                                    "converting would write inf. Keep float32/bfloat16, or pass --saturate to "
                                    "clamp to the largest value")
                t.copy_(torch.nan_to_num(t, posinf=limit, neginf=-limit).clamp_(-limit, limit))
                notes.append(f"saturated {name}: max |value| {peak:.6g} clamped to {limit:.6g} ({kind})")
            if kind in ("float16", "q8_0"):
                underflow += int(((t != 0) & (t.abs() < FP16_TINY / 2)).sum())
    if underflow:
        notes.append(f"note: {underflow} values below fp16's smallest subnormal ({FP16_TINY:.3g}) become 0")
    return notes
