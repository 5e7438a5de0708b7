"""Simple, correct text generation: prefill the prompt into a KV cache, then one token per step.

`sample_next` is the project's one sampling function (greedy, temperature, nucleus/top-p); the fast engine
(`llamaforge.infer`) and the evaluation code reuse it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: `llamaforge/__init__.py` imports `generate` from here eagerly (a lazy
# attribute would be shadowed by this submodule once imported), and `import llamaforge` must stay cheap.


def sample_next(logits: torch.Tensor, temperature=0.0, top_p=1.0, generator=None, top_k=0) -> torch.Tensor:
    """Next token ids [B] from logits [B, vocab].

    Temperature 0 takes the argmax; otherwise a draw from softmax(logits / temperature), restricted to the
    top_k most likely tokens (0: no limit) and to the smallest set whose probability reaches top_p (nucleus).
    temperature, top_p and top_k are numbers or per-row tensors [B]; `generator` is one torch.Generator, a
    list of one per row (None entries use the global RNG), or None."""
    import torch

    bsz, vocab = logits.shape
    greedy = logits.argmax(dim=-1)
    if not torch.is_tensor(temperature) and temperature <= 0.0:
        return greedy
    device = logits.device
    temperature = torch.as_tensor(temperature, dtype=torch.float32, device=device).expand(bsz)
    top_p = torch.as_tensor(top_p, dtype=torch.float32, device=device).expand(bsz)
    top_k = torch.as_tensor(top_k, dtype=torch.long, device=device).expand(bsz)
    probs = torch.softmax(logits.float() / temperature.clamp_min(1e-6)[:, None], dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    rank = torch.arange(vocab, device=device)
    keep = (top_k[:, None] <= 0) | (rank < top_k[:, None])
    # Nucleus: keep a token while the tokens ranked above it have not yet reached top_p (the top one always).
    keep &= sorted_probs.cumsum(dim=-1) - sorted_probs < top_p[:, None]
    cdf = (sorted_probs * keep).cumsum(dim=-1)
    # Inverse-CDF draw: one uniform per row, so each row can have its own seeded generator.
    if isinstance(generator, (list, tuple)):
        u = torch.cat([torch.rand(1, generator=g, device=device) for g in generator])
    else:
        u = torch.rand(bsz, generator=generator, device=device)
    choice = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_max(vocab - 1)
    sampled = order.gather(-1, choice).squeeze(-1)
    return torch.where(temperature > 0, sampled, greedy)


def _generator(seed: Optional[int], device) -> Optional[torch.Generator]:
    import torch

    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def iter_tokens(
    model, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
    seed: Optional[int] = None, stop_ids: Sequence[int] = (),
) -> Iterator[int]:
    """Yield new token ids one by one; stops after max_new_tokens, at a stop id (not yielded), or when prompt and
    completion fill max_seq_len (as Meta's generate)."""
    import torch

    if not prompt_ids:
        raise ValueError("prompt_ids is empty: start from at least the BOS token")
    device = model.output.weight.device
    max_len = min(model.args.max_seq_len, len(prompt_ids) + max_new_tokens)
    if len(prompt_ids) > model.args.max_seq_len:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens exceeds max_seq_len {model.args.max_seq_len}")
    generator = _generator(seed, device)

    def last_logits(tokens, start_pos):  # inference mode only around the model: this function yields
        with torch.inference_mode():
            return model(tokens, start_pos=start_pos)[:, -1]

    model.setup_cache(1, max_len)
    with _clearing_cache(model):
        tokens = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
        logits = last_logits(tokens, 0)  # prefill: the whole prompt in one pass
        length, produced = len(prompt_ids), 0
        while produced < max_new_tokens and length < model.args.max_seq_len:  # the sequence fits the context
            nxt = sample_next(logits, temperature, top_p, generator)
            token = int(nxt.item())
            if token in stop_ids:
                return
            yield token
            produced, length = produced + 1, length + 1
            if produced < max_new_tokens and length < model.args.max_seq_len:
                logits = last_logits(nxt.view(1, 1), length - 1)  # one step, attending to the cache


@contextlib.contextmanager
def _clearing_cache(model):
    try:
        yield
    finally:
        model.clear_cache()  # the cache is per call: leave the model as it was


def generate_tokens(model, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0,
                    top_p: float = 1.0, seed: Optional[int] = None, stop_ids: Sequence[int] = ()) -> list[int]:
    """The new token ids after prompt_ids (KV-cache decoding)."""
    return list(iter_tokens(model, prompt_ids, max_new_tokens, temperature, top_p, seed, stop_ids))


def generate(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             seed: Optional[int] = None, on_text: Optional[Callable[[str], None]] = None) -> str:
    """The completion of `prompt` (an empty prompt starts from BOS alone); stops at EOS.

    `on_text`, when given, receives the completion piece by piece as tokens arrive (for streaming)."""
    prompt_ids = tokenizer.encode(prompt, bos=True)
    prefix = len(tokenizer.decode(prompt_ids))

    def completion_text(new: list[int]) -> str:
        # Decode prompt and completion together, so that word-initial spaces come out as in the full text.
        return tokenizer.decode(prompt_ids + new)[prefix:]

    new: list[int] = []
    sent = ""
    for token in iter_tokens(model, prompt_ids, max_new_tokens, temperature, top_p, seed, stop_ids=[tokenizer.eos_id]):
        new.append(token)
        if on_text is not None:
            text = completion_text(new)
            if not text.endswith("\ufffd"):  # wait for the rest of a split UTF-8 character
                on_text(text[len(sent):])
                sent = text
    text = completion_text(new)
    if on_text is not None and text[len(sent):]:
        on_text(text[len(sent):])
    return text
