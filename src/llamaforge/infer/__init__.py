"""Inference: the generation engine (static KV cache, prefill/decode, continuous batching), weight-only
quantization and the OpenAI-compatible server."""

from llamaforge.infer.engine import Engine, Request, SamplingParams

__all__ = ["Engine", "Request", "SamplingParams"]
