"""The peer models the benchmarks compare against, built from the same ModelArgs as ours."""

from __future__ import annotations

import torch

from llamaforge.formats.hf import config_from_args
from llamaforge.model import ModelArgs


def hf_llama(args: ModelArgs, attn_implementation: str = "sdpa"):
    """A randomly initialized `transformers.LlamaForCausalLM` of the same shape as `Transformer(args)`.

    Its config comes from `formats.hf.config_from_args`, the writer `save_model(..., format="hf")` uses."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_dict(config_from_args(args, torch.float32), attn_implementation=attn_implementation)
    return LlamaForCausalLM(config)
