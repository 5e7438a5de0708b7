"""LoRA (Hu et al. 2021): low-rank adapters on chosen projections of an unchanged `Transformer`, applied from
outside the model as parallelism is, plus merging and PEFT's on-disk format.

An adapted projection computes  W x + (alpha / r) * B A dropout(x)  with A [r, in] and B [out, r]. A starts as
nn.Linear's default (Kaiming-uniform, a = sqrt(5), as PEFT does) and B at zero, so step 0 equals the base model.
Every base parameter is frozen (requires_grad False), so the optimizer (which takes trainable parameters only)
holds adapter state only.

Order relative to parallelism (asserted): `apply_lora` runs on the plain model, *before* `parallelize`; FSDP2 then
shards each block's adapters together with its frozen weights and reduces only the adapters' gradients. The
adapted layer keeps the base weight as its own `weight` parameter, so parameter names, checkpoints and the
activation-checkpointing / compile wrappers are unchanged; the adapters add `...wq.lora_A.weight` and
`...wq.lora_B.weight`. Tensor parallelism with adapters is refused (its plans shard `weight` only).

PEFT format (what `peft.PeftModel.from_pretrained` reads for a `LlamaForCausalLM`): a folder with
`adapter_config.json` and `adapter_model.safetensors`, tensors named
`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` etc. HF's export permutes the rows of wq and wk
per head (`formats.hf.meta_to_hf_rows`, for rotate_half RoPE); since W_hf = P W, the adapter's delta must be
P B A, so lora_B of q and k is row-permuted the same way (lora_A never is).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llamaforge.errors import UserError
from llamaforge.io import read_json
from llamaforge.model import Transformer
from llamaforge.train.config import LoRAConfig

# Meta projection name -> (module path inside a block, HF/PEFT module path inside a decoder layer)
PROJECTIONS = {
    "wq": ("attention.wq", "self_attn.q_proj"),
    "wk": ("attention.wk", "self_attn.k_proj"),
    "wv": ("attention.wv", "self_attn.v_proj"),
    "wo": ("attention.wo", "self_attn.o_proj"),
    "w1": ("feed_forward.w1", "mlp.gate_proj"),
    "w2": ("feed_forward.w2", "mlp.down_proj"),
    "w3": ("feed_forward.w3", "mlp.up_proj"),
}
HF_TO_META = {hf.rsplit(".", 1)[1]: meta for meta, (_, hf) in PROJECTIONS.items()}  # q_proj -> wq
PEFT_PREFIX = "base_model.model.model.layers"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def parse_targets(targets: str | list) -> list[str]:
    """"wq,wk,wv,wo" / "all" / ["q_proj", "v_proj"] -> Meta names in a fixed order; unknown names are a UserError."""
    names = targets.split(",") if isinstance(targets, str) else list(targets)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return list(PROJECTIONS)
    out = set()
    for n in names:
        meta = HF_TO_META.get(n, n)
        if meta not in PROJECTIONS:
            raise UserError(f"lora.targets: no projection {n!r} in a LLaMA block; expected some of "
                            f"{', '.join(PROJECTIONS)} (or HF's {', '.join(HF_TO_META)}), or 'all'")
        out.add(meta)
    if not out:
        raise UserError("lora.targets: expected at least one projection (wq, wk, wv, wo, w1, w2, w3) or 'all'")
    return [n for n in PROJECTIONS if n in out]


def scaling(cfg: LoRAConfig, use_rslora: bool = False) -> float:
    """alpha / r (the LoRA paper); alpha / sqrt(r) for rank-stabilized LoRA (Kalajdzievski 2023, PEFT's use_rslora)."""
    return cfg.alpha / (math.sqrt(cfg.rank) if use_rslora else cfg.rank)


def check(cfg: LoRAConfig) -> None:
    """Config values that cannot work: one UserError naming the field."""
    if cfg.rank < 1:
        raise UserError(f"lora.rank: expected a positive integer, got {cfg.rank}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"lora.dropout: expected a probability in [0, 1), got {cfg.dropout}")
    parse_targets(cfg.targets)


class LoRALinear(nn.Linear):
    """A frozen nn.Linear plus a trainable low-rank update. Shapes: x [..., in] -> [..., out].

    `weight` is the base layer's own Parameter object (not a copy), so its name and storage stay where they were."""

    def __init__(self, base: nn.Linear, rank: int, alpha_scaling: float, dropout: float):
        nn.Module.__init__(self)  # not nn.Linear.__init__: that would allocate a second weight
        if base.bias is not None:
            raise ValueError("LoRA on a projection with a bias: LLaMA has none")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", None)
        self.weight.requires_grad_(False)
        self.rank, self.scaling = rank, alpha_scaling
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, **kw)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, **kw)
        self.reset_lora()

    @torch.no_grad()
    def reset_lora(self) -> None:
        """A ~ Kaiming-uniform(a=sqrt(5)) (nn.Linear's and PEFT's default), B = 0: the update starts at zero."""
        if self.lora_A.weight.device.type == "meta":
            return
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out]: W x + scaling * B(A(dropout(x))) (Hu et al. 2021; scaling = alpha / r), with
        the frozen base weight W and the trainable low-rank A [r, in], B [out, r].
        """
        return F.linear(x, self.weight) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def extra_repr(self) -> str:
        """in/out features, rank and scaling, for print(model)."""
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scaling={self.scaling:g}"


def _is_parallelized(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    wrapped = any("_checkpoint_wrapped_module" in n or "_orig_mod" in n for n, _ in model.named_modules())
    return wrapped or any(isinstance(p, DTensor) for p in model.parameters())


def apply_lora(model: Transformer, cfg: LoRAConfig, use_rslora: bool = False) -> list[str]:
    """Freeze every parameter of `model` and put adapters on the configured projections of every block, in place.

    Must run before `train.parallel.parallelize` (asserted: no DTensor parameters, no checkpoint/compile wrappers
    yet). Returns the adapted module names, e.g. ["layers.0.attention.wq", ...]. Raises UserError on a bad config."""
    check(cfg)
    if _is_parallelized(model):
        raise RuntimeError("apply_lora runs before parallelize: FSDP2 must shard the adapters with their block")
    for p in model.parameters():
        p.requires_grad_(False)
    s = scaling(cfg, use_rslora)
    adapted = []
    for i, block in enumerate(model.layers):
        for name in parse_targets(cfg.targets):
            parent_path, attr = PROJECTIONS[name][0].split(".")
            parent = getattr(block, parent_path)
            base = getattr(parent, attr)
            if isinstance(base, LoRALinear):
                raise TypeError(f"layers.{i}.{PROJECTIONS[name][0]} is already a LoRALinear (adapters applied twice)")
            setattr(parent, attr, LoRALinear(base, cfg.rank, s, cfg.dropout))
            adapted.append(f"layers.{i}.{PROJECTIONS[name][0]}")
    return adapted


def adapter_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (`...lora_A.weight`, `...lora_B.weight`) of a model state dict."""
    return {k: v for k, v in state.items() if ".lora_A." in k or ".lora_B." in k}


@torch.no_grad()
def merge_state_dict(state: dict[str, torch.Tensor], alpha_scaling: float) -> dict[str, torch.Tensor]:
    """A plain model's state dict: W <- W + scaling * B @ A for every adapter (computed in fp64, then cast back to
    W's dtype, so the merge adds no rounding of its own), adapters dropped.

    `state` is an adapted model's full (unsharded) state dict with Meta names."""
    out = {k: v for k, v in state.items() if k not in adapter_state_dict(state)}
    for key, a in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        prefix = key[: -len(".lora_A.weight")]
        b, w = state[prefix + ".lora_B.weight"], out[prefix + ".weight"]
        out[prefix + ".weight"] = (w.double() + alpha_scaling * (b.double() @ a.double())).to(w.dtype)
    return out


def merge_lora(model: Transformer) -> Transformer:
    """A new plain `Transformer` (same device and dtype) whose weights include the adapters' updates."""
    s = {m.scaling for m in model.modules() if isinstance(m, LoRALinear)}
    if len(s) > 1:
        raise ValueError("adapters with different scalings")
    state = merge_state_dict(model.state_dict(), s.pop() if s else 1.0)
    with torch.device("meta"):
        plain = Transformer(model.args)
    plain.load_state_dict(state, assign=True)
    plain.init_rope(next(iter(state.values())).device)
    return plain


# ---------------------------------------------------------------------------------------------- PEFT format


def _peft_name(meta_key: str) -> tuple[str, str, str]:
    """'layers.3.attention.wq.lora_B.weight' -> (PEFT name, projection 'wq', 'lora_B')."""
    _, i, _, proj, lora, _ = meta_key.split(".")
    hf = PROJECTIONS[proj][1]
    return f"{PEFT_PREFIX}.{i}.{hf}.{lora}.weight", proj, lora


def to_peft(adapters: dict[str, torch.Tensor], n_heads: int, n_kv_heads: int) -> dict[str, torch.Tensor]:
    """Adapter tensors under PEFT's Llama names, lora_B of q/k rows permuted like the HF export of wq/wk."""
    from llamaforge.formats.hf import meta_to_hf_rows

    out = {}
    for key, w in adapters.items():
        name, proj, lora = _peft_name(key)
        w = w.detach().cpu()
        if lora == "lora_B" and proj in ("wq", "wk"):
            w = meta_to_hf_rows(w, n_heads if proj == "wq" else n_kv_heads)
        out[name] = w.contiguous()
    return out


def from_peft(tensors: dict[str, torch.Tensor], n_heads: int, n_kv_heads: int, source) -> dict[str, torch.Tensor]:
    """Inverse of `to_peft`: Meta names, q/k lora_B rows back in Meta's interleaved order."""
    from llamaforge.formats.hf import hf_to_meta_rows

    hf_to_path = {hf: meta_path for meta_path, hf in PROJECTIONS.values()}
    out = {}
    for name, w in tensors.items():
        parts = name.split(".")  # base_model.model.model.layers.N.<self_attn|mlp>.<proj>.<lora_A|lora_B>.weight
        if not (name.startswith(PEFT_PREFIX + ".") and parts[-1] == "weight" and len(parts) == 9):
            raise UserError(f"{source}: tensor {name!r}: expected PEFT LoRA names "
                            f"'{PEFT_PREFIX}.N.self_attn.q_proj.lora_A.weight'")
        i, hf, lora = parts[4], ".".join(parts[5:7]), parts[7]
        if hf not in hf_to_path or lora not in ("lora_A", "lora_B") or not i.isdigit():
            raise UserError(f"{source}: tensor {name!r}: not a LoRA weight of a Llama projection")
        meta_path = hf_to_path[hf]
        proj = meta_path.split(".")[1]
        if lora == "lora_B" and proj in ("wq", "wk"):
            w = hf_to_meta_rows(w, n_heads if proj == "wq" else n_kv_heads)
        out[f"layers.{i}.{meta_path}.{lora}.weight"] = w
    return out


def adapter_config(cfg: LoRAConfig, base_model: str = "") -> dict:
    """PEFT's LoraConfig fields for these adapters (peft.LoraConfig reads them; others keep PEFT's defaults)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": [PROJECTIONS[n][1].rsplit(".", 1)[1] for n in parse_targets(cfg.targets)],
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def save_adapter(state: dict[str, torch.Tensor], args, cfg: LoRAConfig, path, base_model: str = "") -> Path:
    """Write the adapters of an adapted model's (full) state dict as a PEFT folder at `path`, atomically."""
    from safetensors.torch import save_file

    from llamaforge.io import atomic_dir

    adapters = adapter_state_dict(state)
    if not adapters:
        raise ValueError("the state dict holds no LoRA adapters")
    tensors = to_peft(adapters, args.n_heads, args.n_kv_heads)
    path = Path(path)
    with atomic_dir(path) as tmp:
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(cfg, base_model), indent=2) + "\n")
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return path


def read_adapter_config(path) -> tuple[LoRAConfig, bool]:
    """(LoRAConfig, use_rslora) from a PEFT `adapter_config.json`; PEFT features this code lacks are refused."""
    file = Path(path) / ADAPTER_CONFIG
    c = read_json(file)
    if c.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{file}: peft_type: expected 'LORA', got {c.get('peft_type')!r}")
    for key, neutral in (("use_dora", False), ("bias", "none"), ("modules_to_save", None),
                         ("layers_to_transform", None), ("rank_pattern", {}), ("alpha_pattern", {})):
        if c.get(key, neutral) not in (neutral, None, {}, False, "none"):
            raise UserError(f"{file}: {key}: {c[key]!r} is not supported; expected {neutral!r}")
    targets = c.get("target_modules")
    if isinstance(targets, str):
        if targets != "all-linear":
            raise UserError(f"{file}: target_modules: a regular expression is not supported; expected a list")
        targets = "all"
    if not targets:
        raise UserError(f"{file}: target_modules: expected a list of projections, e.g. ['q_proj', 'v_proj']")
    try:
        cfg = LoRAConfig(rank=int(c["r"]), alpha=float(c.get("lora_alpha", 8)), dropout=float(c.get("lora_dropout", 0.0)),
                         targets=targets if isinstance(targets, str) else ",".join(targets))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{file}: r / lora_alpha / lora_dropout: expected numbers ({e})") from None
    try:
        check(cfg)
    except UserError as e:
        raise UserError(f"{file}: {e}") from None
    return cfg, bool(c.get("use_rslora", False))


def load_adapter(model: Transformer, path) -> LoRAConfig:
    """Put the PEFT adapters at `path` on `model` (a plain, unparallelized Transformer), in place; returns their
    config. Missing or extra adapter tensors and shape mismatches are a UserError naming the file."""
    from llamaforge.formats.weights import read_safetensors

    path = Path(path)
    cfg, rslora = read_adapter_config(path)
    file = path / ADAPTER_WEIGHTS
    if not file.is_file():
        raise UserError(f"{file}: no such file (PEFT adapters are stored as {ADAPTER_WEIGHTS})")
    # the project's one safetensors reader: a truncated or corrupt file is one line, not safetensors' traceback
    tensors = from_peft(read_safetensors(file), model.args.n_heads, model.args.n_kv_heads, file)
    apply_lora(model, cfg, use_rslora=rslora)
    own = adapter_state_dict(model.state_dict())
    if set(own) != set(tensors):
        missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        raise UserError(f"{file}: adapters do not match adapter_config.json: missing {missing[:3]}, extra {extra[:3]}")
    for k, w in tensors.items():
        if tuple(w.shape) != tuple(own[k].shape):
            raise UserError(f"{file}: {k}: shape {tuple(w.shape)}, expected {tuple(own[k].shape)}")
    with torch.no_grad():
        for k, p in model.named_parameters():
            if k in tensors:
                p.copy_(tensors[k])
    return cfg
