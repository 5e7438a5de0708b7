"""A decode-time layout for linear layers on a CPU, applied from outside the model (its code is untouched).

At batch 1 every linear layer is a matrix-vector product y = x W^T, and a decode step streams all the weights
once, so the memory walk decides the time. Two changes help, in this order (timings: BENCHMARKS.md "Inference",
the eager CPU decode layout):

    F.linear(x, W), W [out, in] row-major           as nn.Linear stores it
    x @ W^T, W^T stored contiguous [in, out]         same product, a friendlier memory walk
    split-K over the threads (below)                 one-row products otherwise use one thread

PyTorch runs a one-row matmul on one thread, so the third line splits the input dimension into `splits` equal
chunks and runs them as one batched matmul (one chunk per thread), then sums the partial products:
x W^T = sum_j x[:, chunk j] @ W^T[chunk j, :]. With W^T contiguous, the chunks W^T.view(splits, in/splits, out)
are a view: no copy. Only the summation order differs from F.linear (~1e-7 relative in fp32).

`decode_layout(model)` re-lays each nn.Linear weight in place as a view of a contiguous [in, out] buffer (the
tensor keeps its shape, values, Parameter object, so tied weights stay tied, and state_dict name) and swaps the
module for a `SplitKLinear` sharing that Parameter (int8 weight-only layers likewise: `SplitKInt8Linear`).
Rows beyond a few (prefill) go through plain F.linear, which already uses every thread for a matrix-matrix
product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llamaforge.infer.quantize import WeightOnlyInt8Linear

MAX_SPLIT_ROWS = 8  # up to this many rows (decode: one per sequence) take the split-K path


def is_column_major(weight: torch.Tensor) -> bool:
    """Whether a 2-D weight [out, in] is a view of a contiguous [in, out] tensor."""
    return weight.dim() == 2 and weight.t().is_contiguous()


def split_k_matmul(x: torch.Tensor, weight_t: torch.Tensor, splits: int) -> torch.Tensor:
    """x [rows, in] @ weight_t [in, out] (contiguous), as `splits` chunks of the input dimension in one bmm."""
    rows, (d_in, d_out) = x.shape[0], weight_t.shape
    x_chunks = x.reshape(rows, splits, d_in // splits).transpose(0, 1)  # [splits, rows, in/splits]
    partial = torch.bmm(x_chunks, weight_t.view(splits, d_in // splits, d_out))  # [splits, rows, out]
    return partial.sum(0)


class SplitKLinear(nn.Linear):
    """nn.Linear whose weight [out, in] is stored column-major and whose few-row products run split-K across
    `splits` threads. Same parameters, names and math as the nn.Linear it replaces."""

    splits: int = 1

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, splits: int) -> SplitKLinear:
        """A SplitKLinear sharing `linear`'s Parameter, re-laid column-major in place (tied weights stay tied);
        `splits` falls back to 1 when it does not divide in_features.
        """
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        m.in_features, m.out_features = linear.in_features, linear.out_features
        if not is_column_major(linear.weight):
            # .data keeps the Parameter object, so whatever shares it (a tied embedding) follows along
            linear.weight.data = linear.weight.data.t().contiguous().t()
        m.weight, m.bias = linear.weight, linear.bias  # shared, not copied
        m.splits = splits if splits > 1 and linear.in_features % splits == 0 else 1
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out]: split-K for up to MAX_SPLIT_ROWS rows (decode), F.linear otherwise (prefill)."""
        rows = x.numel() // self.in_features
        if self.splits == 1 or rows > MAX_SPLIT_ROWS or not is_column_major(self.weight):
            return F.linear(x, self.weight, self.bias)
        y = split_k_matmul(x.reshape(rows, self.in_features), self.weight.t(), self.splits)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)


class SplitKInt8Linear(WeightOnlyInt8Linear):
    """WeightOnlyInt8Linear with its int8 weight stored column-major and few-row products run split-K (the
    dequantizing cast keeps the column-major strides, so the product reads a contiguous [in, out] buffer)."""

    splits: int = 1

    @classmethod
    @torch.no_grad()
    def from_int8(cls, linear: WeightOnlyInt8Linear, splits: int) -> SplitKInt8Linear:
        """The same int8 weights and scales as `linear`, the weights stored column-major; `splits` as in SplitKLinear.
        """
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        m.in_features, m.out_features = linear.in_features, linear.out_features
        m.register_buffer("weight", linear.weight.t().contiguous().t())
        m.register_buffer("scales", linear.scales)
        m.splits = splits if splits > 1 and linear.in_features % splits == 0 else 1
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out]: split-K for up to MAX_SPLIT_ROWS rows, the parent's dequantize-and-matmul
        otherwise.
        """
        rows = x.numel() // self.in_features
        if self.splits == 1 or rows > MAX_SPLIT_ROWS:
            return super().forward(x)
        w_t = self.weight.t().to(x.dtype)  # [in, out], contiguous
        y = split_k_matmul(x.reshape(rows, self.in_features), w_t, self.splits) * self.scales.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)


@torch.no_grad()
def decode_layout(model: nn.Module, splits: int | None = None) -> nn.Module:
    """Swap every nn.Linear of `model` (in place) for a SplitKLinear sharing its weight, and every int8
    weight-only layer for a SplitKInt8Linear (its weight re-laid column-major); returns the model. splits: threads to split a matvec over
    (default: torch.get_num_threads())."""
    splits = torch.get_num_threads() if splits is None else splits
    for name, child in list(model.named_children()):
        if isinstance(child, (SplitKLinear, SplitKInt8Linear)):
            continue
        if isinstance(child, nn.Linear):
            setattr(model, name, SplitKLinear.from_linear(child, splits))
        elif isinstance(child, WeightOnlyInt8Linear):
            setattr(model, name, SplitKInt8Linear.from_int8(child, splits))
        else:
            decode_layout(child, splits)
    return model
