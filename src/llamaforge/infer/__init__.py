"""Inference: the generation engine (static KV cache, prefill/decode, continuous batching), its sampler
(`infer.sampling`) and incremental detokenizer (`infer.detok`), weight-only quantization (`infer.quantize`) and
the OpenAI-compatible server (`infer.server`)."""

from llamaforge.infer.engine import Engine, Request, RequestError, SamplingParams
from llamaforge.infer.quantize import quantize

__all__ = ["Engine", "Request", "RequestError", "SamplingParams", "quantize"]
