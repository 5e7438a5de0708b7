"""Perplexity and bits per byte of text files, with disjoint windows or a strided sliding window.

A document's tokens t_1..t_N are scored as log p(t_i | BOS, t_1..t_{i-1}), the context cut to the model's window:
- disjoint (stride = context): windows of `context` tokens side by side; a window's first token sees only the
  token before it (lm-evaluation-harness's `loglikelihood_rolling`, and the usual "LLaMA-7B WikiText-2 5.68").
- sliding (stride < context): each window ends `stride` tokens after the previous one and only its last `stride`
  tokens are scored, so every token after the first window sees at least `context - stride` tokens of history
  (Hugging Face's "perplexity of fixed-length models").
The last window always ends on the document's last token with a full context behind it (as lm-eval does; HF's
guide starts windows at multiples of the stride, which leaves its last few tokens slightly less context).

Reported: token perplexity exp(NLL / tokens) (only comparable between models with the same tokenizer), and the
tokenizer-free bits per byte NLL / ln 2 / UTF-8 bytes, byte perplexity exp(NLL / bytes) and word perplexity
exp(NLL / whitespace-separated words).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llamaforge.errors import UserError


@dataclass
class Window:
    """One forward pass of the sliding-window perplexity: input positions [start, end), scored from `scored_from`."""
    start: int  # first input position in the document's sequence [BOS, t_1, ..., t_N]
    end: int  # one past the last input position
    scored_from: int  # first input position whose next-token prediction is scored


def windows(n_tokens: int, context: int, stride: int) -> Iterator[Window]:
    """Windows over the sequence [BOS, t_1..t_N]: input position i predicts t_{i+1}; every t is scored once."""
    if not 0 < stride <= context:
        raise UserError(f"--stride: expected 0 < stride <= context ({context}), got {stride}")
    done = 0  # input positions 0..done-1 have been scored (they predicted t_1..t_done)
    while done < n_tokens:
        end = min(done + stride, n_tokens)
        start = max(0, end - context)
        yield Window(start, end, done)
        done = end


@dataclass
class PerplexityResult:
    """Totals of a perplexity run: NLL in nats over `tokens` tokens of text that is `bytes` UTF-8 bytes and `words`
    words.
    """
    nll: float  # total negative log-likelihood (nats)
    tokens: int
    bytes: int
    words: int
    context: int
    stride: int

    def metrics(self) -> dict[str, float]:
        """Token, byte and word perplexity and bits per byte (tokenizer-independent: NLL / bytes / ln 2), with the
        token count and the window (context, stride) used.
        """
        return {
            "token_perplexity": math.exp(self.nll / self.tokens),
            "bits_per_byte": self.nll / self.bytes / math.log(2),
            "byte_perplexity": math.exp(self.nll / self.bytes),
            "word_perplexity": math.exp(self.nll / max(self.words, 1)),
            "tokens": self.tokens,
            "context": self.context,
            "stride": self.stride,
        }


@torch.inference_mode()
def document_nll(model, ids: Sequence[int], bos_id: int, context: int, stride: int, batch_size: int = 8) -> float:
    """Total NLL of `ids` (the document's tokens, without BOS) under the windowing above."""
    seq = torch.tensor([bos_id, *ids], dtype=torch.long)
    device = model.output.weight.device
    total = 0.0
    pending: list[Window] = []

    def flush():
        nonlocal total
        length = max(w.end - w.start for w in pending)
        inputs = torch.zeros(len(pending), length, dtype=torch.long)
        for k, w in enumerate(pending):  # right padding: causal attention keeps it out of the real positions
            inputs[k, : w.end - w.start] = seq[w.start : w.end]
        logp = F.log_softmax(model(inputs.to(device)).float(), dim=-1)
        for k, w in enumerate(pending):
            rows = slice(w.scored_from - w.start, w.end - w.start)
            targets = seq[w.scored_from + 1 : w.end + 1].to(device)
            total -= logp[k, rows].gather(-1, targets[:, None]).sum().item()
        pending.clear()

    for w in windows(len(ids), context, stride):
        pending.append(w)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return total


def perplexity(model, tokenizer, texts: Sequence[str], context: int | None = None, stride: int | None = None,
               batch_size: int = 8) -> PerplexityResult:
    """Perplexity over documents (each starts from BOS); context defaults to the model's max_seq_len."""
    context = min(context or model.args.max_seq_len, model.args.max_seq_len)
    stride = stride or context
    nll, n_tokens, n_bytes, n_words = 0.0, 0, 0, 0
    for text in texts:
        ids = tokenizer.encode(text, bos=False)
        if not ids:
            continue
        nll += document_nll(model, ids, tokenizer.bos_id, context, stride, batch_size)
        n_tokens += len(ids)
        n_bytes += len(text.encode("utf-8"))
        n_words += len(text.split())
    if n_tokens == 0:
        raise UserError("perplexity: the text files are empty")
    return PerplexityResult(nll, n_tokens, n_bytes, n_words, context, stride)


def read_texts(paths: Sequence[Path]) -> list[str]:
    """The UTF-8 text of each file (plain or compressed, `io.read_text`); all are read before any is scored.
    Raises UserError naming a path that is not a file, or one holding binary data rather than UTF-8 text."""
    from llamaforge.io import read_text

    texts = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise UserError(f"{p}: no such text file")
        texts.append(read_text(p))
    return texts
