"""Weight-only quantization of a loaded model, applied from outside: each `nn.Linear` is swapped for a module that
stores low-bit weights and computes in the activations' dtype (the model's code is untouched).

- int8, per output channel, symmetric: w ~ q * scale with q in [-127, 127]. Plain PyTorch, runs on every device;
  under `torch.compile` the dequantization fuses into the matmul (gpt-fast's recipe). At batch 1 decoding reads
  every weight once per token, so a quarter of the bytes is up to 4x (vs fp32) / 2x (vs bf16) less traffic.
- int4, per group of input channels, asymmetric: w ~ (q - 8) * scale + zero with q in [0, 15], packed for
  PyTorch's tinygemm kernels: `_weight_int4pack_mm` on CUDA (bf16), `_weight_int4pack_mm_for_cpu` on CPU.

The token embedding stays in full precision (a lookup, not a matmul).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llamaforge.errors import UserError

MODES = ("int8", "int4")


class WeightOnlyInt8Linear(nn.Module):
    """y = (x @ q^T) * scale, q int8 [out, in], one scale per output channel."""

    def __init__(self, in_features: int, out_features: int, device=None, scale_dtype=torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=scale_dtype, device=device))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> WeightOnlyInt8Linear:
        """Symmetric per-output-channel int8 of `linear`'s weight: scale = max|w_row| / 127, q = round(w / scale);
        the scales keep the weight's dtype (gpt-fast's weight-only int8).
        """
        w = linear.weight.float()
        scales = w.abs().amax(dim=1).clamp_min(1e-12) / 127  # the largest weight of each row maps to +-127
        q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
        m = cls(linear.in_features, linear.out_features, w.device, linear.weight.dtype)
        m.weight.copy_(q)
        m.scales.copy_(scales)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] in x's dtype: (x @ q^T) * scale, the scale applied after the matmul (it is per
        output).
        """
        # the scale is per output channel, so it can be applied after the matmul
        return F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype)


def _int4_params(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q in [0, 15] (int32, [out, in]), scales and zeros ([out, in / group]) with w ~ (q - 8) * scale + zero."""
    groups = w.float().reshape(w.shape[0], -1, group_size)
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
    scales = ((hi - lo) / 15).clamp_min(1e-6)
    zeros = lo + 8 * scales  # the middle code 8 sits at zero-point `zeros`
    q = torch.round((groups - lo[..., None]) / scales[..., None]).clamp(0, 15).to(torch.int32)
    return q.reshape(w.shape), scales, zeros


class WeightOnlyInt4Linear(nn.Module):
    """Group-wise asymmetric int4 weights in the layout of PyTorch's tinygemm kernels (CUDA or CPU)."""

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, in_features: int, out_features: int,
                 group_size: int):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("weight", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, group_size: int = 64, inner_k_tiles: int = 8) -> WeightOnlyInt4Linear:
        """Group-wise asymmetric int4 of `linear`'s weight (groups of `group_size` inputs, w ~ (q - 8) * scale + zero),
        packed for PyTorch's tinygemm kernel of the weight's device (gpt-fast's int4 layout); check `int4_fits` first.
        """
        w = linear.weight
        q, scales, zeros = _int4_params(w, group_size)
        # [in / group, out, 2]: the kernels' layout of (scale, zero) pairs
        sz = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous()
        if w.device.type == "cuda":
            q_uint8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)  # two 4-bit codes per byte
            packed = torch.ops.aten._convert_weight_to_int4pack(q_uint8, inner_k_tiles)
            sz = sz.to(torch.bfloat16)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            sz = sz.to(w.dtype)
        return cls(packed, sz, linear.in_features, linear.out_features, group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] in x's dtype through `_weight_int4pack_mm` (bf16 on CUDA, x's dtype on a CPU)."""
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if x.device.type == "cuda":  # tinygemm on CUDA computes in bf16
            y = torch.ops.aten._weight_int4pack_mm(x2.to(torch.bfloat16), self.weight, self.group_size,
                                                   self.scales_and_zeros).to(x.dtype)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), self.weight, self.group_size,
                                                           self.scales_and_zeros.to(x.dtype))
        return y.reshape(*shape[:-1], self.out_features)


def int4_fits(linear: nn.Linear, group_size: int, inner_k_tiles: int = 8) -> bool:
    """Whether the tinygemm kernels take this shape (their tiling constraints on outputs N and inputs K)."""
    n, k = linear.out_features, linear.in_features
    if linear.weight.device.type == "cuda":
        return k % group_size == 0 and k % (inner_k_tiles * 16) == 0 and n % 8 == 0
    return k % group_size == 0 and n % 16 == 0


def quantize(model: nn.Module, mode: str = "int8", group_size: int = 64) -> nn.Module:
    """Swap every nn.Linear of `model` (in place) for its weight-only quantized version; returns the model.

    int4 leaves layers whose shape the kernels cannot take (see `int4_fits`) in full precision. With tied
    embeddings (Llama 3.2 1B/3B) the output projection, the largest product of a decode step, becomes a quantized
    copy of the shared matrix, as llama.cpp's q8_0 uses the quantized token_embd for both; the embedding lookup keeps
    the full-precision rows."""
    if mode not in MODES:
        raise UserError(f"quantization mode {mode!r}: expected one of {', '.join(MODES)}")
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            if mode == "int8":
                setattr(model, name, WeightOnlyInt8Linear.from_linear(child))
            elif int4_fits(child, group_size):  # other shapes stay in full precision
                setattr(model, name, WeightOnlyInt4Linear.from_linear(child, group_size))
        else:
            quantize(child, mode, group_size)
    return model
