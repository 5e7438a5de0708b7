"""The LLaMA transformer (Touvron et al. 2023), pure PyTorch.

Each paper feature is one small piece: RMSNorm pre-normalization, rotary position embeddings (RoPE),
SwiGLU feed-forward, causal attention with grouped-query support (Llama 2); Llama 3.x adds RoPE frequency scaling
(`apply_scaling`) and, for 3.2 1B/3B, tied input/output embeddings. Parameter names follow Meta's
reference implementation (``tok_embeddings``, ``layers.N.attention.wq`` ...), so Meta checkpoints load as is.

This file holds no I/O, no parallelism and no compilation: those are applied from outside
(``llamaforge.formats``, ``llamaforge.train.parallel``, ``llamaforge.infer``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelArgs:
    """The shape of a LLaMA model: Meta's `ModelArgs` fields (llama/model.py), plus `hidden_dim` for configs that
    state the FFN width. Defaults are LLaMA-7B's (paper Table 2: dim 4096, 32 layers, 32 heads, context 2048).

    Raises ValueError when dim is not divisible by n_heads, n_heads not by n_kv_heads, or head_dim is odd
    (RoPE rotates pairs).
    """

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: Optional[int] = None  # None: multi-head attention (n_kv_heads = n_heads)
    vocab_size: int = 32000
    multiple_of: int = 256  # SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: Optional[float] = None  # Llama 2 70B uses 1.3
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    hidden_dim: Optional[int] = None  # explicit FFN size (llama2.c / HF configs); None: the paper's rule
    # Llama 3.1 RoPE scaling (HF rope_type "llama3", Meta's use_scaled_rope): None = no scaling; 3.1 uses 8, 3.2 32
    rope_scaling_factor: Optional[float] = None
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_seq_len: int = 8192  # the context the model was pretrained at before scaling
    tie_embeddings: bool = False  # output projection = token embedding matrix (Llama 3.2 1B/3B)

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"head_dim {self.dim // self.n_heads} must be even for RoPE")
        if self.rope_scaling_factor is not None and not (
            self.rope_scaling_factor > 0 and self.rope_high_freq_factor > self.rope_low_freq_factor > 0
            and self.rope_original_max_seq_len > 0
        ):
            raise ValueError("rope scaling: expected factor > 0, high_freq_factor > low_freq_factor > 0 and "
                             "original_max_seq_len > 0")

    @property
    def head_dim(self) -> int:
        """Width of one attention head: dim / n_heads (128 in every paper model)."""
        return self.dim // self.n_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """SwiGLU width: 2/3 of 4*dim (same parameter count as a 4*dim ReLU FFN), rounded up."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in fp32 whatever the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., dim] -> the same shape and dtype, normalized over the last dimension and scaled by weight."""
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_frequencies(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """The rotation speed of each pair i < head_dim/2: theta^(-2i/head_dim) radians per position, [head_dim/2] fp32
    (Su et al. 2021, RoFormer; Meta's `precompute_freqs_cis`)."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))


def apply_scaling(freqs: torch.Tensor, factor: float, low_freq_factor: float, high_freq_factor: float,
                  original_max_seq_len: int) -> torch.Tensor:
    """Llama 3.1's RoPE frequency scaling of `freqs` ([head_dim/2] from `rope_frequencies`; same shape out).

    Meta's `apply_scaling` in llama3/model.py (HF rope_type "llama3"): pairs whose wavelength 2*pi/freq is shorter
    than original_max_seq_len / high_freq_factor keep their speed, those longer than original_max_seq_len /
    low_freq_factor turn `factor` times slower, and the band between blends the two linearly in
    original_max_seq_len / wavelength. Meta hard-codes low 1, high 4, original 8192 and takes the factor (8 for
    3.1, 32 for 3.2)."""
    low, high, old_len = low_freq_factor, high_freq_factor, original_max_seq_len
    wavelen = 2 * math.pi / freqs
    smooth = (old_len / wavelen - low) / (high - low)  # 0 at the low-frequency edge, 1 at the high one
    blended = (1 - smooth) * freqs / factor + smooth * freqs
    slow = torch.where(wavelen > old_len / low, freqs / factor, blended)
    return torch.where(wavelen < old_len / high, freqs, slow)


def rope_tables(freqs: torch.Tensor, max_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of angle pos * freq_i for pos < max_pos: two [max_pos, head_dim/2] fp32 tensors, on the device
    of `freqs` ([head_dim/2], from `rope_frequencies`, scaled by `apply_scaling` for Llama 3.1+)."""
    angles = torch.outer(torch.arange(max_pos, dtype=torch.float32, device=freqs.device), freqs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) by the position's angle: Meta's complex product, in reals.

    x: [B, T, H, head_dim]; cos, sin: [T, head_dim/2], or [B, T, head_dim/2] for per-sequence positions.
    """
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    if cos.dim() == 2:  # shared positions: broadcast over batch and heads
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    else:  # per-sequence positions: broadcast over heads
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


class KVCache(nn.Module):
    """Preallocated keys and values for incremental decoding: [B, n_kv_heads, max_seq_len, head_dim]."""

    def __init__(self, batch: int, n_kv_heads: int, max_seq_len: int, head_dim: int, dtype, device=None):
        super().__init__()
        shape = (batch, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v ([B, Hkv, T, D]) of row b at positions input_pos[b] ([B, T]); return the whole cache rows
        [B, Hkv, S, D] (static shapes, so a compiled decode step never recompiles)."""
        bsz = k.shape[0]
        rows = torch.arange(bsz, device=k.device)[:, None]  # [B, 1], pairs with input_pos [B, T]
        # index_put_ (not scatter_): a compiled decode step then updates the cache in place
        self.k[rows, :, input_pos] = k.transpose(1, 2)  # the indexed view is [B, T, Hkv, D]
        self.v[rows, :, input_pos] = v.transpose(1, 2)
        return self.k[:bsz], self.v[:bsz]


class Attention(nn.Module):
    """Causal multi-head self-attention with RoPE on queries and keys, and grouped-query attention when
    n_kv_heads < n_heads (Llama 2, Ainslie et al. 2023): each key/value head serves n_heads / n_kv_heads query
    heads. Projections wq, wk, wv, wo carry Meta's names and have no bias."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        self.cache: Optional[KVCache] = None

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, input_pos: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """x [B, T, dim] -> [B, T, dim] (x's dtype).

        cos, sin: the RoPE tables of the T positions, [T, head_dim/2] (positions shared by the batch) or
        [B, T, head_dim/2] (each row its own positions), fp32, from `Transformer.forward`.
        input_pos None: the T tokens are positions 0..T-1 and attend causally among themselves (training,
        scoring); no cache is read or written. input_pos [B, T] (LongTensor, needs `Transformer.setup_cache`):
        the keys and values are written into this layer's `KVCache` at those positions and each query attends to
        its row's cached keys at positions <= its own; positions are not range-checked here.
        Scores are softmax(q k^T / sqrt(head_dim)) v through `F.scaled_dot_product_attention`.
        """
        bsz, seqlen, _ = x.shape
        # -1 heads: under tensor parallelism each rank holds only its share of the heads.
        q = self.wq(x).view(bsz, seqlen, -1, self.head_dim)
        k = self.wk(x).view(bsz, seqlen, -1, self.head_dim)
        v = self.wv(x).view(bsz, seqlen, -1, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
        gqa = q.shape[1] != k.shape[1]
        if input_pos is None:  # the whole sequence at once (training, scoring): plain causal attention
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:  # with the KV cache: each query sees its own row's keys at positions up to its own
            k, v = self.cache.update(input_pos, k, v)
            mask = torch.arange(k.shape[2], device=x.device) <= input_pos[:, None, :, None]  # [B, 1, T, S]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., dim] -> [..., dim] through the hidden width `ModelArgs.ffn_hidden_dim` (Shazeer 2020)."""
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-normalization: each sub-layer normalizes its input, the residual stream is left raw."""

    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, input_pos: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """x [B, T, dim] -> [B, T, dim]: x + attention(norm(x)), then h + feed_forward(norm(h)); cos, sin and
        input_pos as in `Attention.forward`."""
        h = x + self.attention(self.attention_norm(x), cos, sin, input_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """The LLaMA decoder: token embedding, n_layers `TransformerBlock`s, a final RMSNorm and an output projection
    to vocab_size logits (its own matrix, or the embedding's when `args.tie_embeddings`, Llama 3.2 1B/3B). Built
    initialized (`init_weights`); on the meta device it allocates nothing and `init_rope` / `init_weights` are
    called once the parameters have storage."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(i, args) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:  # one Parameter under both names: training, copies and .to() keep it shared
            self.output.weight = self.tok_embeddings.weight
        # RoPE tables are derived, not learned: non-persistent, so checkpoints hold weights only.
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.init_rope()
        self.init_weights()

    def init_rope(self, device=None) -> None:
        """(Re)compute the RoPE tables, e.g. after building the model on the meta device."""
        device = torch.device(device) if device is not None else self.tok_embeddings.weight.device
        a = self.args
        freqs = rope_frequencies(a.head_dim, a.rope_theta, device)
        if a.rope_scaling_factor is not None:  # Llama 3.1+
            freqs = apply_scaling(freqs, a.rope_scaling_factor, a.rope_low_freq_factor, a.rope_high_freq_factor,
                                  a.rope_original_max_seq_len)
        self.rope_cos, self.rope_sin = rope_tables(freqs, a.max_seq_len)

    def tie_weights(self) -> None:
        """Share the output projection with the token embedding again when the args say so (after
        `load_state_dict(assign=True)`, which replaces both Parameters separately)."""
        if self.args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialization (the paper does not give one; this is GPT-2's, as in torchtitan and nanoGPT):
        embeddings and linear weights ~ N(0, 0.02); the two projections that write into the residual stream
        (wo, w2) ~ N(0, 0.02 / sqrt(2 * n_layers)) so the stream's variance does not grow with depth;
        RMSNorm gains 1."""
        if self.tok_embeddings.weight.device.type == "meta":
            return
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.args.n_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def setup_cache(self, max_batch: int, max_seq_len: Optional[int] = None, dtype=None) -> None:
        """Give every attention layer a KV cache of max_batch rows x max_seq_len positions; forward with
        input_pos then writes the new keys and values at those positions."""
        max_seq_len = max_seq_len or self.args.max_seq_len
        w = self.tok_embeddings.weight  # not output: a quantized output layer holds integer weights
        for layer in self.layers:
            layer.attention.cache = KVCache(
                max_batch, self.args.n_kv_heads, max_seq_len, self.args.head_dim, dtype or w.dtype, w.device
            )

    def clear_cache(self) -> None:
        """Drop every layer's KV cache (frees its memory; forward with input_pos then needs `setup_cache`)."""
        for layer in self.layers:
            layer.attention.cache = None

    def forward(self, tokens: torch.Tensor, input_pos: Optional[torch.Tensor] = None, head: bool = True) -> torch.Tensor:
        """tokens [B, T] -> logits [B, T, vocab] (fp32).

        input_pos None: the tokens are positions 0..T-1 of their sequences, attended causally, no cache (training,
        scoring). input_pos [B, T] (needs setup_cache): the position of every token, each sequence its own, so
        sequences of different lengths decode in one batch (llamaforge.infer.engine); the keys and values go into
        the cache at those positions, and a query attends to its row's cache up to its own position. Positions are
        not range-checked there (the engine checks them once per request).

        head False: the last block's output [B, T, dim] instead, without the final norm and the vocabulary
        projection (a caller that only fills the cache, e.g. the eval scorer's shared prefix, skips that matmul)."""
        seqlen = tokens.shape[1]
        if input_pos is None:
            if seqlen > self.rope_cos.shape[0]:
                raise ValueError(f"{seqlen} positions exceed max_seq_len {self.rope_cos.shape[0]}")
            cos, sin = self.rope_cos[:seqlen], self.rope_sin[:seqlen]
        else:
            cos, sin = self.rope_cos[input_pos], self.rope_sin[input_pos]  # [B, T, head_dim/2]
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin, input_pos)
        if not head:
            return h
        return self.output(self.norm(h)).float()

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (a tied matrix once); with non_embedding, without the token embedding table (Kaplan et
        al. 2020's N, which the FLOP formula in `plan.flops` uses): the output projection is counted, also when it
        is the embedding's matrix (tied), since it is still a matmul."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared Parameter once
        if not non_embedding or self.args.tie_embeddings:  # tied: the one matrix counts as the output projection
            return n
        return n - self.tok_embeddings.weight.numel()
