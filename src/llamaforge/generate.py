"""`llamaforge.generate`: text in, text out, for a script or a notebook. A thin call into the inference engine
(`llamaforge.infer.Engine`): the project has one decode loop, one sampler (`infer/sampling.py`) and one
detokenizer (`infer/detok.py`), whichever surface asks.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

# torch and the engine are imported inside the functions: `llamaforge/__init__.py` imports `generate` from here
# eagerly (a lazy attribute would be shadowed by this submodule once imported), and `import llamaforge` must stay
# cheap.


def _seed(seed: Optional[int]) -> int:
    """The request's seed; None draws one from torch's global generator (so torch.manual_seed governs it)."""
    import torch

    return int(torch.randint(0, 2**62, ())) if seed is None else seed


def _complete(model, tokenizer, prompt_ids: Sequence[int], max_new_tokens: int, seed: Optional[int], on_update=None,
              **sampling):
    """Run one request on a batch-1 engine sized to prompt + budget; the finished `infer.Request`. The budget is cut
    to what the context leaves (as Meta's generate). Raises the request's error (`infer.RequestError`)."""
    from llamaforge.infer import Engine, Request, SamplingParams

    n = min(max_new_tokens, model.args.max_seq_len - len(prompt_ids))
    engine = Engine(model, tokenizer, max_batch=1,
                    max_seq_len=min(model.args.max_seq_len, len(prompt_ids) + max(n, 1)))
    params = SamplingParams(max_new_tokens=max(n, 0), seed=_seed(seed), **sampling)
    request = engine.submit(Request(list(prompt_ids), params, on_update=on_update))
    while not request.done.is_set():
        engine.step()
    if request.error is not None:
        raise request.error
    return request


def generate_tokens(model, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0,
                    top_p: float = 1.0, seed: Optional[int] = None, stop_ids: Sequence[int] = (),
                    top_k: int = 0) -> list[int]:
    """The new token ids after prompt_ids: at most max_new_tokens, fewer at a stop id (not included) or when
    prompt and completion fill the model's max_seq_len (as Meta's generate). Raises ValueError
    (`infer.RequestError`) for an empty prompt or one that fills the context."""
    return _complete(model, None, prompt_ids, max_new_tokens, seed, temperature=temperature, top_p=top_p,
                     top_k=top_k, stop_token_ids=tuple(stop_ids)).tokens


def generate(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             seed: Optional[int] = None, on_text: Optional[Callable[[str], None]] = None, top_k: int = 0,
             stop: Sequence[str] = ()) -> str:
    """The completion of `prompt` (BOS first; an empty prompt starts from BOS alone); stops at EOS, at the first
    stop string (cut before it), after max_new_tokens, or when the context is full.

    `on_text`, when given, receives the completion piece by piece as tokens arrive: complete UTF-8 only, and the
    pieces join to exactly the returned text. seed None: drawn from torch's global generator."""
    on_update = None if on_text is None else (lambda _, piece: piece and on_text(piece))
    return _complete(model, tokenizer, tokenizer.encode(prompt, bos=True), max_new_tokens, seed, on_update,
                     temperature=temperature, top_p=top_p, top_k=top_k, stop=tuple(stop)).text
