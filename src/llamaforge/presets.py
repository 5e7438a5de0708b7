"""Named model shapes: the paper's Table 2, Llama 2, Llama 3.1/3.2, and small ones that train on a CPU."""

from __future__ import annotations

import dataclasses

import torch

from llamaforge.model import ModelArgs, Transformer

PRESETS: dict[str, ModelArgs] = {
    # LLaMA-1 (paper Table 2): eps 1e-6, context 2048, multi-head attention.
    "llama-7b": ModelArgs(dim=4096, n_layers=32, n_heads=32),
    "llama-13b": ModelArgs(dim=5120, n_layers=40, n_heads=40),
    "llama-33b": ModelArgs(dim=6656, n_layers=60, n_heads=52),
    "llama-65b": ModelArgs(dim=8192, n_layers=80, n_heads=64),
    # Llama 2: eps 1e-5, context 4096; 70B adds grouped-query attention and a wider FFN.
    "llama2-7b": ModelArgs(dim=4096, n_layers=32, n_heads=32, norm_eps=1e-5, max_seq_len=4096),
    "llama2-13b": ModelArgs(dim=5120, n_layers=40, n_heads=40, norm_eps=1e-5, max_seq_len=4096),
    "llama2-70b": ModelArgs(
        dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim_multiplier=1.3, multiple_of=4096,
        norm_eps=1e-5, max_seq_len=4096,
    ),
    # Llama 3.1 / 3.2 (Meta's params.json; HF config.json of the same releases): 128,256-token tiktoken vocabulary,
    # 8 KV heads, rope_theta 500,000, RoPE scaling of type llama3 (factor 8 for 3.1, 32 for 3.2) over an original
    # 8,192-token context, 131,072 tokens of context; 3.2 1B/3B tie the output projection to the embedding.
    # Parameters: 8,030,261,248 / 1,235,814,400 / 3,212,749,824 (the HF model cards' counts).
    "llama3.1-8b": ModelArgs(
        dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, ffn_dim_multiplier=1.3, multiple_of=1024,
        norm_eps=1e-5, rope_theta=500000.0, rope_scaling_factor=8.0, max_seq_len=131072,
    ),
    "llama3.2-1b": ModelArgs(
        dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256, ffn_dim_multiplier=1.5, multiple_of=256,
        norm_eps=1e-5, rope_theta=500000.0, rope_scaling_factor=32.0, max_seq_len=131072, tie_embeddings=True,
    ),
    "llama3.2-3b": ModelArgs(
        dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, vocab_size=128256, ffn_dim_multiplier=1.0, multiple_of=256,
        norm_eps=1e-5, rope_theta=500000.0, rope_scaling_factor=32.0, max_seq_len=131072, tie_embeddings=True,
    ),
    # CPU-sized shapes (same architecture, smaller numbers).
    "tiny-1m": ModelArgs(dim=128, n_layers=4, n_heads=4, vocab_size=2048, multiple_of=32, max_seq_len=512),
    "small-17m": ModelArgs(dim=384, n_layers=6, n_heads=6, vocab_size=8192, hidden_dim=1024, max_seq_len=1024),
    "small-42m": ModelArgs(dim=512, n_layers=8, n_heads=8, vocab_size=32000, multiple_of=32, max_seq_len=1024),
    "base-110m": ModelArgs(dim=768, n_layers=12, n_heads=12, vocab_size=32000, multiple_of=32, max_seq_len=1024),
    "base-1b": ModelArgs(dim=2048, n_layers=16, n_heads=16, vocab_size=32000, hidden_dim=5632),
}


def get_preset(name: str, **overrides) -> ModelArgs:
    """The named preset's ModelArgs with `overrides` applied (dataclasses.replace, so ModelArgs' own checks run again).
    Raises KeyError for an unknown name (the message lists the known ones; callers at the boundary turn it into a
    UserError)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def count_params(args: ModelArgs) -> tuple[int, int]:
    """(total, non-embedding) parameters, counted on a meta-device model: no memory is allocated."""
    with torch.device("meta"):
        model = Transformer(args)
    return model.num_params(), model.num_params(non_embedding=True)
