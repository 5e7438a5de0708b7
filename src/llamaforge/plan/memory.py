"""Per-device training memory for a parallel layout, and the largest micro-batch that fits.

Four parts, each per device:

- model states (sharded over FSDP x TP = `shards` devices), in the master dtype (m bytes: 4 for fp32, 2 for bf16):
  parameters N·m/shards, gradients N·m/shards (kept between micro-batches: gradient accumulation),
  AdamW's two moments 2·N·m/shards;
- compute copies: with FSDP each block's weights are all-gathered in the compute dtype just in time; two units are
  in flight (the current one and the prefetched next), weights and gradients. Without FSDP, bf16 compute over fp32
  masters is autocast (as in `train.trainer`): it keeps a bf16 copy of every matmul weight until backward uses it;
- activations saved for the backward pass, counted tensor by tensor for `llamaforge.model` in the manner of
  Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", §4). Their GPT block
  saves 34·s·b·h + 5·a·s²·b bytes; ours differs because attention is a fused kernel (no s² scores are stored,
  as the paper's xformers kernel), RMSNorm and RoPE compute in fp32, and SwiGLU has three matmuls:

    per layer and token (p = compute bytes, r = residual-stream bytes, h = dim, kv = n_kv_heads·head_dim,
    f = FFN width, a = heads):
      RMSNorm x2      2 · (4 + 2r)·h      fp32 input, normalized, scaled output (the next matmul's input)
                      + 2 · p·h           under autocast only: the bf16 copy the matmul takes of that output
      RoPE            4 · (h + kv)        fp32 q and k that the rotation multiplies
      attention       p · (2h + 2kv) + 4a q, k, v after RoPE, output (= wo's input), log-sum-exp
      SwiGLU          4p · f              w1 x, silu(w1 x), w3 x, their product (= w2's input)

  r = p, except under autocast, where the residual stream stays fp32 (r = 4).
  Tensor parallelism of degree t, as `train.parallel` does it: sequence parallelism (Korthikanti §4.2.2) splits
  the norms' tensors t ways and column/row parallelism splits the heads and the FFN width t ways, but the gathered
  input each matmul saves (the norms' scaled output) and the full-size partial sums of wo and w2 (saved by
  selective checkpointing) are not split; Megatron-LM avoids the former by re-gathering in the backward pass.
  Activation checkpointing:
    none       everything above;
    selective  the paper's §2.4 choice, as `train.parallel` implements it: save what is expensive to recompute,
               the block input and the outputs of all seven matmuls and of attention; recompute norms, RoPE and
               the SwiGLU gate;
    full       the block input only (r·h per token); one layer is recomputed at a time during backward;
- the loss: logits [b, s, vocab] in fp32 held by the caller, log-softmax output, its incoming gradient and its
  input gradient: 16·vocab bytes per token at the start of the backward pass (not split by TP: the trainer
  gathers full logits on every rank).

The peak is states + compute copies + all saved activations + the larger of the loss buffers and one recomputed
layer. tests/test_plan_memory.py holds this to 10% of the peak resident memory of real training steps on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llamaforge.errors import UserError
from llamaforge.model import ModelArgs

DTYPE_BYTES = {"fp32": 4, "bf16": 2}
AC_MODES = ("none", "selective", "full")
ADAM_MOMENTS = 2  # exp_avg and exp_avg_sq, each the size of the parameters


@dataclass(frozen=True)
class Layout:
    """How one training step is laid out over devices: FSDP and tensor-parallel degrees, activation checkpointing (none
    | selective | full), sequence length and micro-batch (sequences per device), and the master (parameters,
    gradients, AdamW moments) and compute dtypes (fp32 or bf16)."""
    fsdp: int = 1  # parameter/gradient/optimizer sharding degree
    tp: int = 1  # tensor (and sequence) parallel degree
    ac: str = "none"  # activation checkpointing: none | selective | full
    seq_len: int = 2048
    micro_batch: int = 1  # sequences per device per forward/backward
    master_dtype: str = "fp32"  # dtype of the stored parameters, gradients and AdamW moments
    compute_dtype: str = "bf16"  # dtype of the matmuls and the saved activations

    @property
    def autocast(self) -> bool:
        """bf16 compute over fp32 masters without FSDP: the trainer uses torch.autocast, not FSDP's casts."""
        return self.fsdp == 1 and self.master_dtype == "fp32" and self.compute_dtype == "bf16"

    def check(self, args: ModelArgs) -> None:
        """Raise UserError (naming the CLI flag) for a degree below 1, an unknown AC mode or dtype, a non-positive
        sequence length or a negative micro-batch, or a TP degree that does not divide n_kv_heads and the FFN width
        (Megatron-style column/row sharding needs both)."""
        if self.fsdp < 1 or self.tp < 1:
            raise UserError(f"--fsdp/--tp: expected degrees >= 1, got fsdp={self.fsdp} tp={self.tp}")
        if self.ac not in AC_MODES:
            raise UserError(f"--ac: expected one of {', '.join(AC_MODES)}, got {self.ac!r}")
        for name in ("master_dtype", "compute_dtype"):
            if getattr(self, name) not in DTYPE_BYTES:
                raise UserError(f"--{name.replace('_', '-')}: expected fp32 or bf16, got {getattr(self, name)!r}")
        if self.seq_len < 1 or self.micro_batch < 0:
            raise UserError(f"--seq-len/--micro-batch: expected positive values, got {self.seq_len}/{self.micro_batch}")
        if args.n_kv_heads % self.tp or args.ffn_hidden_dim % self.tp:
            raise UserError(
                f"--tp: {self.tp} must divide n_kv_heads ({args.n_kv_heads}) and the FFN width ({args.ffn_hidden_dim})"
            )


@dataclass
class MemoryEstimate:
    """Bytes per device of one training step (`estimate`), by part: parameters, gradients and AdamW's two moments
    (sharded over FSDP x TP), compute copies (the bf16 weights FSDP gathers two units at a time, or autocast keeps
    without FSDP), activations saved by all layers and the final norm, the loss's buffers, and one layer's
    recomputation under checkpointing; `parts` is one layer's activation bytes per token by tensor group."""
    params: float
    grads: float
    optimizer: float
    compute_copies: float
    activations: float  # saved by all layers + the final norm
    loss: float  # logits and the loss's buffers at the start of the backward pass
    recompute: float  # one layer's activations rebuilt during the backward pass (checkpointing only)
    parts: dict = field(default_factory=dict)  # per-layer activation bytes, by tensor group

    @property
    def states(self) -> float:
        """Bytes of parameters, gradients, optimizer moments and compute copies: what the step holds whatever the
        micro-batch."""
        return self.params + self.grads + self.optimizer + self.compute_copies

    @property
    def total(self) -> float:
        """Peak bytes per device: the states, all saved activations, and the larger of the loss buffers (live at the
        start of the backward pass) and one recomputed layer (later in it). tests/test_plan_memory.py holds it to 10%
        of measured peaks."""
        return self.states + self.activations + max(self.loss, self.recompute)


def layer_activation_bytes_per_token(
    args: ModelArgs, compute_dtype: str, ac: str, autocast: bool = False, tp: int = 1
) -> dict[str, float]:
    """Bytes one transformer block keeps for its backward pass per token of the micro-batch, on one device."""
    p = DTYPE_BYTES[compute_dtype]
    r = 4 if autocast else p  # residual stream: autocast leaves the non-matmul ops (and the stream) in fp32
    h, f, a = args.dim, args.ffn_hidden_dim, args.n_heads
    kv = args.n_kv_heads * args.head_dim
    # Terms not divided by tp are full size on every TP rank: the matmuls take the gathered sequence as input,
    # and the row-parallel ones (wo, w2) produce full-size partial sums before their reduce-scatter.
    if ac == "full":
        return {"block input": r * h / tp}
    if ac == "selective":
        return {
            "block input": r * h / tp,
            "q, k, v": p * (h + 2 * kv) / tp,
            "attention out + lse": (p * h + 4 * a) / tp,
            "wo out, w2 out": 2 * p * h,
            "w1 out, w3 out": 2 * p * f / tp,
        }
    # fp32 copy of the input and the normalized input (sequence-split under TP), the scaled output that the next
    # matmul saves (gathered under TP), and under autocast the bf16 copy the matmul makes of it
    norm = (4 + r) * h / tp + r * h + (p * h if autocast else 0)
    return {
        "RMSNorm x2": 2 * norm,
        "RoPE (fp32 q, k)": 4 * (h + kv) / tp,
        "attention (q, k, v, out, lse)": (p * (2 * h + 2 * kv) + 4 * a) / tp,
        "SwiGLU": 4 * p * f / tp,
    }


def _unit_params(args: ModelArgs) -> list[int]:
    """Parameters of each FSDP unit: the embedding, every block, the final norm with the output layer."""
    h, f, kv = args.dim, args.ffn_hidden_dim, args.n_kv_heads * args.head_dim
    block = 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h
    return [args.vocab_size * h] + [block] * args.n_layers + [h + h * args.vocab_size]


def estimate(args: ModelArgs, layout: Layout) -> MemoryEstimate:
    """Peak bytes per device for one training step of `args` under `layout` (see the module docstring)."""
    layout.check(args)
    units = _unit_params(args)
    n_params = sum(units)
    shards = layout.fsdp * layout.tp
    m, p = DTYPE_BYTES[layout.master_dtype], DTYPE_BYTES[layout.compute_dtype]
    t = layout.tp

    compute_copies = 0.0
    if layout.fsdp > 1:  # weights gathered (and gradients reduced) one unit at a time in compute dtype
        in_flight = sorted(units)[-2:]  # the current unit and the prefetched one
        compute_copies = sum(in_flight) * 2 * p / t  # weights and their unsharded gradients
    elif layout.autocast:  # autocast's cast of every matmul weight, saved for the backward pass
        compute_copies = (n_params - units[0]) * p / t

    tokens = layout.micro_batch * layout.seq_len
    per_layer = layer_activation_bytes_per_token(args, layout.compute_dtype, layout.ac, layout.autocast, t)
    full_layer = layer_activation_bytes_per_token(args, layout.compute_dtype, "none", layout.autocast, t)
    final_norm = full_layer["RMSNorm x2"] / 2
    activations = tokens * (args.n_layers * sum(per_layer.values()) + final_norm)
    loss = tokens * 16 * args.vocab_size  # fp32 logits (gathered on every TP rank), log-softmax out, 2 gradients
    recompute = 0.0 if layout.ac == "none" else tokens * sum(full_layer.values())

    return MemoryEstimate(
        params=n_params * m / shards,
        grads=n_params * m / shards,
        optimizer=ADAM_MOMENTS * n_params * m / shards,
        compute_copies=compute_copies,
        activations=activations,
        loss=loss,
        recompute=recompute,
        parts=per_layer,
    )


def largest_micro_batch(args: ModelArgs, layout: Layout, capacity_bytes: float, limit: int = 1 << 16) -> int:
    """The largest micro-batch whose estimate fits in `capacity_bytes` (0: not even one sequence fits).

    The estimate is linear in the micro-batch, so this is one division; it is checked against `estimate`."""
    from dataclasses import replace

    fixed = estimate(args, replace(layout, micro_batch=0)).total
    per_sequence = estimate(args, replace(layout, micro_batch=1)).total - fixed
    if capacity_bytes < fixed + per_sequence:
        return 0
    best = min(int((capacity_bytes - fixed) // per_sequence), limit)
    while best > 0 and estimate(args, replace(layout, micro_batch=best)).total > capacity_bytes:  # rounding
        best -= 1
    return best
