"""The project's one sampling function: next token ids from logits (greedy, temperature, top-k, nucleus/top-p).

The engine (`llamaforge.infer.engine`) calls it once per decode step for every slot; everything that generates
text (`llamaforge.generate`, the CLI, the server, eval's generation tasks) goes through the engine.
"""

from __future__ import annotations

import torch


def sample_next(logits: torch.Tensor, temperature=0.0, top_p=1.0, generator=None, top_k=0) -> torch.Tensor:
    """Next token ids [B] from logits [B, vocab].

    Temperature 0 takes the argmax; otherwise a draw from softmax(logits / temperature), restricted to the
    top_k most likely tokens (0: no limit) and to the smallest set whose probability reaches top_p (nucleus,
    Holtzman et al. 2020). temperature, top_p and top_k are numbers or per-row tensors [B]; `generator` is one
    torch.Generator, a list of one per row (None entries use the global RNG), or None. Logits of -inf (ids the
    engine masks, e.g. rows of a padded vocabulary) are never drawn."""
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
    keep &= sorted_probs > 0  # masked ids (probability 0) stay out even when top_p reaches past them
    cdf = (sorted_probs * keep).cumsum(dim=-1)
    # Inverse-CDF draw: one uniform per row, so each row can have its own seeded generator.
    if isinstance(generator, (list, tuple)):
        u = torch.cat([torch.rand(1, generator=g, device=device) for g in generator])
    else:
        u = torch.rand(bsz, generator=generator, device=device)
    choice = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)
    # u * total can round up to the last cdf value: fall back to the last kept rank, never a masked one
    choice = torch.minimum(choice, keep.sum(-1, keepdim=True) - 1)
    sampled = order.gather(-1, choice).squeeze(-1)
    return torch.where(temperature > 0, sampled, greedy)
