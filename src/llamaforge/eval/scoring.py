"""Log-likelihood of continuations given contexts, and generation with stop strings (batched, through the
inference engine), for evaluation.

Scoring a continuation `cont` after a context `ctx` (token ids) follows the usual convention (lm-evaluation-harness,
GPT-3): feed `(ctx + cont)[:-1]` and sum log p(cont[i] | everything before it) over the continuation's positions.

Efficiency: a multiple-choice item asks for the same context with several continuations. Here the context is run
once per item: its first `len(ctx) - 1` tokens (the "prefix") go through the model into the KV cache, the cache row
is copied to one row per choice, and only `[ctx[-1]] + cont[:-1]` is run per choice. Items are sorted by length
and batched (each row keeps its own positions, so prefixes of different lengths share a forward pass).
Continuations that feed identical tokens (e.g. MMLU's single letters " A", " B", ...) are run once. The prefix
pass stops before the vocabulary projection (`Transformer.forward(head=False)`: its logits would be thrown away),
and log p(target) is read as logit - logsumexp, without a [rows, T, vocab] log-softmax tensor.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llamaforge.infer.engine import Engine, Request, SamplingParams

Tokens = Sequence[int]


@dataclass
class _Row:
    """One distinct continuation input of one item: the tokens fed after the prefix."""

    item: int  # index of the item (shared prefix) this row belongs to
    feed: tuple[int, ...]  # [ctx[-1]] + cont[:-1]


def encode_pair(tokenizer, context: str, continuation: str, bos: bool = True, encode=None):
    """Token ids for (context, continuation): (context ids, continuation ids), the continuation never empty
    unless the continuation text is.

    Trailing spaces of the context move to the continuation (" Paris" is one word piece, "Paris" after a space is
    not), and the continuation's ids are read off the encoding of the whole string so that the tokenizer's merges
    across the boundary are respected: while the context's own ids are a prefix of the whole string's ids, the cut
    is at the context's length, exactly as lm-evaluation-harness does (`TemplateLM._encode_pair`).

    When a token spans the boundary (Llama 2: "Ans" + "wer" is the single piece "▁Answer"; "hello wor" + "ld"
    ends in "▁world"), that cut leaves the continuation empty or misaligned; lm-eval 0.4 then fails the whole
    run (`assert len(continuation_enc) > 0`, EleutherAI/lm-evaluation-harness#1053, #1297). Here the pair is
    re-split at the boundary instead: the context keeps the longest common prefix of its own ids and the whole
    string's ids, and the continuation is the rest of the whole string's ids, so the spanning token is scored as
    part of the continuation (with the context characters it covers). The scored text is then exactly the
    string the tokenizer produces; encoding the continuation alone instead would add SentencePiece's dummy-prefix
    space ("▁wer"). An empty context becomes the BOS token; an empty continuation gives no ids (its
    log-likelihood is 0). `encode(text)` may be given to memoize the tokenizer.
    """
    encode = encode or (lambda text: tokenizer.encode(text, bos=bos))
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if not continuation:
        return list(encode(context)) if context else [tokenizer.bos_id], []
    if not context:
        return [tokenizer.bos_id], tokenizer.encode(continuation, bos=False)
    whole = list(encode(context + continuation))
    ctx = list(encode(context))
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        return ctx, whole[len(ctx) :]
    common = next((i for i, (a, b) in enumerate(zip(ctx, whole)) if a != b), min(len(ctx), len(whole)))
    common = min(common, len(whole) - 1)  # at least one token for the continuation
    if common == 0:  # nothing of the context survives (no BOS): condition on BOS
        return [tokenizer.bos_id], whole
    return whole[:common], whole[common:]


class Scorer:
    """Batched log-likelihoods and generation for one model and tokenizer (no gradients, eval mode).

    batch_size counts continuation rows per forward pass (a 4-choice item is 4 rows); max_seq_len caps the
    window (default: the model's), contexts are cut from the left to fit it."""

    def __init__(self, model, tokenizer, batch_size: int = 16, max_seq_len: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.max_seq_len = min(max_seq_len or model.args.max_seq_len, model.args.max_seq_len)
        self.device = model.output.weight.device

    # ----------------------------------------------------------------------------------------------------------
    # log-likelihood

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), continuation is the greedy decode) for each (context, continuation).

        Every pair is scored: the split into ids follows `encode_pair` (a token spanning the boundary is re-split
        there, never an empty continuation), and an empty continuation scores (0.0, True), log 1."""
        encode = functools.lru_cache(maxsize=4096)(lambda text: tuple(self.tokenizer.encode(text, bos=True)))
        return self.loglikelihood_tokens([encode_pair(self.tokenizer, c, x, encode=encode) for c, x in pairs])

    @torch.inference_mode()
    def loglikelihood_tokens(self, requests: Sequence[tuple[Tokens, Tokens]]) -> list[tuple[float, bool]]:
        """Like `loglikelihood` on token ids: each request is (context ids, continuation ids). An empty continuation
        scores (0.0, True) without running the model; an empty context is conditioned on BOS."""
        prefixes: dict[tuple[int, ...], int] = {}  # prefix tokens -> item index
        rows: list[_Row] = []
        row_of: dict[tuple[int, tuple[int, ...]], int] = {}
        requests_of_row: list[list[int]] = []
        targets: dict[int, list[int]] = {}
        for q, (ctx, cont) in enumerate(requests):
            if not cont:
                continue
            ctx, cont = self._truncate(list(ctx) or [self.tokenizer.bos_id], list(cont))
            item = prefixes.setdefault(tuple(ctx[:-1]), len(prefixes))
            key = (item, tuple([ctx[-1]] + cont[:-1]))
            if key not in row_of:  # identical inputs give identical logits: run them once
                row_of[key] = len(rows)
                rows.append(_Row(*key))
                requests_of_row.append([])
            requests_of_row[row_of[key]].append(q)
            targets[q] = cont

        # A group: one prefix and at most batch_size of its rows (an item with more choices is split).
        item_rows: dict[int, list[int]] = {}
        for r, row in enumerate(rows):
            item_rows.setdefault(row.item, []).append(r)
        prefix_of = list(prefixes)
        groups = [
            (prefix_of[item], rs[s : s + self.batch_size])
            for item, rs in item_rows.items()
            for s in range(0, len(rs), self.batch_size)
        ]
        results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)  # empty continuations: log 1
        for batch in self._batches(groups, rows):
            batch_rows = [r for g in batch for r in groups[g][1]]
            logits = self._forward_rows([groups[g] for g in batch], rows)
            # log p(target) = logit(target) - logsumexp(logits): no [rows, T, vocab] log-softmax tensor is made.
            lse, greedy = logits.logsumexp(-1), logits.argmax(-1)
            for k, r in enumerate(batch_rows):
                for q in requests_of_row[r]:
                    n = len(targets[q])
                    target = torch.tensor(targets[q], device=logits.device)
                    total = (logits[k, :n].gather(-1, target[:, None])[:, 0] - lse[k, :n]).sum().item()
                    results[q] = (total, bool((greedy[k, :n] == target).all()))
        return results

    def _truncate(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        """Keep the last max_seq_len + 1 tokens of ctx + cont (the model sees all but the last one)."""
        if not cont:
            raise ValueError("empty continuation: nothing to score")
        if not ctx:
            raise ValueError("empty context: start it with the BOS token")
        cont = cont[-self.max_seq_len :]
        keep = self.max_seq_len + 1 - len(cont)  # at least one context token is kept
        return ctx[-keep:], cont

    def _batches(self, groups, rows):
        """Lists of group indices with at most batch_size rows in all, longest first (similar lengths together)."""
        feed_len = [max(len(rows[r].feed) for r in rs) for _, rs in groups]
        order = sorted(range(len(groups)), key=lambda g: (-len(groups[g][0]), -feed_len[g]))
        batch, n_rows, longest_feed = [], 0, 0
        for g in order:
            # Padded positions must stay inside the model's window: the batch's first (longest) prefix plus its
            # longest feed.
            too_long = batch and len(groups[batch[0]][0]) + max(longest_feed, feed_len[g]) > self.max_seq_len
            if batch and (too_long or n_rows + len(groups[g][1]) > self.batch_size):
                yield batch
                batch, n_rows, longest_feed = [], 0, 0
            batch.append(g)
            n_rows += len(groups[g][1])
            longest_feed = max(longest_feed, feed_len[g])
        if batch:
            yield batch

    def _forward_rows(self, groups, rows) -> torch.Tensor:
        """Logits (fp32) at every fed position of every row of `groups`: [rows, feed_len, vocab].

        Each row carries its own positions (`input_pos`), so prefixes of different lengths share the batch: right
        padding is harmless because a query only attends to keys at positions up to its own, and the continuation
        overwrites the prefix's padding in the cache before anything can see it.
        """
        model, dev = self.model, self.device
        prefix_lens = [len(prefix) for prefix, _ in groups]
        row_group = [k for k, (_, rs) in enumerate(groups) for _ in rs]  # batch row -> its group
        feeds = [rows[r].feed for _, rs in groups for r in rs]
        max_prefix, feed_len = max(prefix_lens), max(len(f) for f in feeds)
        model.setup_cache(max_batch=max(len(feeds), len(groups)), max_seq_len=max_prefix + feed_len)
        try:
            if max_prefix:
                prefix = torch.zeros(len(groups), max_prefix, dtype=torch.long)
                for k, (tokens, _) in enumerate(groups):
                    prefix[k, : len(tokens)] = torch.tensor(tokens)
                pos = torch.arange(max_prefix, device=dev).expand(len(groups), -1)
                model(prefix.to(dev), input_pos=pos, head=False)  # fills the cache; no logits are needed there
                source = torch.tensor(row_group, device=dev)
                for layer in model.layers:  # copy each group's cached prefix to all of its rows
                    cache = layer.attention.cache
                    cache.k[: len(feeds)] = cache.k[source]
                    cache.v[: len(feeds)] = cache.v[source]
            feed = torch.zeros(len(feeds), feed_len, dtype=torch.long)
            for k, tokens in enumerate(feeds):
                feed[k, : len(tokens)] = torch.tensor(tokens)
            start = torch.tensor([prefix_lens[g] for g in row_group], device=dev)
            h = model(feed.to(dev), input_pos=start[:, None] + torch.arange(feed_len, device=dev), head=False)
        finally:
            model.clear_cache()
        # The vocabulary projection only where a row has a real token (padding's logits would be thrown away):
        # the model's own final norm and output head on the packed positions, then back to [rows, feed_len, vocab].
        real = torch.arange(feed_len)[None, :] < torch.tensor([len(f) for f in feeds])[:, None]
        if bool(real.all()):
            return model.output(model.norm(h)).float()
        real = real.to(dev)
        logits = torch.zeros(len(feeds), feed_len, model.args.vocab_size, device=dev)
        logits[real] = model.output(model.norm(h[real])).float()
        return logits

    # ----------------------------------------------------------------------------------------------------------
    # generation

    def generate_until(self, prompt: Tokens, *args, **kwargs) -> list[str]:
        """`generate_many` for one prompt (same arguments after it): its `num_samples` completions."""
        return self.generate_many([prompt], *args, **kwargs)[0]

    @torch.inference_mode()
    def generate_many(
        self,
        prompts: Sequence[Tokens],
        until: Sequence[str] = (),
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        num_samples: int = 1,
        seed: int = 0,
    ) -> list[list[str]]:
        """Complete every prompt `num_samples` times; each completion is cut before its first stop string.

        All completions run through the inference engine (`llamaforge.infer.Engine`, eager), `batch_size` sequences
        at a time with continuous batching: a finished sequence's slot takes the next waiting one. Temperature 0
        is greedy decoding. With sampling, completion k (prompt-major order) draws from its own random stream
        seeded `seed + k`, so the results do not depend on the batch size."""
        jobs = []
        for p in prompts:
            p = list(p)[-(self.max_seq_len - 1) :]  # keep room for at least one new token
            jobs.append((p, max(0, min(max_new_tokens, self.max_seq_len - len(p)))))
        out = [[""] * num_samples for _ in jobs]
        n_requests = sum(num_samples for _, n in jobs if n)
        if n_requests == 0:
            return out
        # The engine's KV cache spans only what this call needs; it is dropped when the call ends.
        engine = Engine(self.model, self.tokenizer, max_batch=min(self.batch_size, n_requests),
                        max_seq_len=max(len(p) + n for p, n in jobs if n), compile=False)
        stop = [s for s in until if s]
        requests = {}
        try:
            for i, (p, n) in enumerate(jobs):
                for k in range(num_samples if n else 0):
                    params = SamplingParams(max_new_tokens=n, temperature=temperature, top_p=top_p,
                                            seed=seed + len(requests), stop=stop)
                    requests[i, k] = engine.submit(Request(p, params))
            while engine.busy:
                engine.step()
        finally:
            self.model.clear_cache()
        for (i, k), r in requests.items():
            if r.error is not None:
                raise r.error
            out[i][k] = r.text
        return out
