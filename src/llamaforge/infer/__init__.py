"""Inference: the generation engine (static KV cache, prefill/decode, continuous batching), weight-only
quantization (`llamaforge.infer.quantize`) and the OpenAI-compatible server (`llamaforge.infer.server`)."""

from llamaforge.infer.engine import Engine, Request, SamplingParams
from llamaforge.infer.quantize import quantize

__all__ = ["Engine", "Request", "SamplingParams", "quantize"]
