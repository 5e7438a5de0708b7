"""Log-likelihood of continuations given contexts, and generation with stop strings (batched, through the
inference engine), for evaluation.

Scoring a continuation `cont` after a context `ctx` (token ids) follows the usual convention (lm-evaluation-harness,
GPT-3): feed `(ctx + cont)[:-1]` and sum log p(cont[i] | everything before it) over the continuation's positions.

Efficiency: the work is what the scored tokens need and no more. lm-evaluation-harness's HF backend runs every
(context + continuation) through the whole model and computes the output layer (the vocabulary-size matmul) and a
log-softmax at every position. Here every request's sequence `(ctx + cont)[:-1]` goes into a prefix tree: sorted
sequences share the KV cache of their common prefix (an item's context is run once for all its choices; MMLU's
5-shot prompt once for all items of a subject), so each distinct prefix token goes through the model body once (a
branch sharing at most `_MIN_SHARED` tokens recomputes them), and the output layer is applied only at the
positions whose next token is scored (once per distinct position, shared by choices with a common start), with
log p(target) = logit - logsumexp (no [rows, T, vocab] log-softmax).
Segments run in windows of consecutive tree order, level by level, in batches of similar lengths (several items
per forward pass, each row at its own positions, its cache starting as a copy of its parent's shared prefix).
Identical inputs (MMLU's one-letter answers " A", " B", ...) are one sequence.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from llamaforge.infer.engine import Engine, Request, SamplingParams

Tokens = Sequence[int]


_HEAD_CHUNK = 256  # output-layer rows per matmul: [256, vocab] fp32 logits at a time (32 MB at vocab 32000)
_WINDOW = 8  # segments taken at a time, in batch sizes
_STASH_BYTES = 2**29  # at most ~512 MB of shared-prefix caches kept for a window's later segments
_FILL = 0.7  # a row shorter than this share of its batch's longest starts a new batch (padding vs. pass size)
_MIN_SHARED = 4  # a branch shares a prefix computed elsewhere only if that saves more than this many tokens


@dataclass
class _Segment:
    """The part of one scored sequence that no earlier sequence (in sorted order) already computes.

    Its tokens sit at positions [start, start + len(tokens)); the positions before `start` are read from the KV
    cache of `parent`, whose sequence shares them (-1 and start 0: nothing shared)."""

    seq: tuple[int, ...]  # the whole sequence (ctx + cont)[:-1] this segment ends
    start: int
    parent: int
    heads: dict[int, int] = field(default_factory=dict)  # position -> index into the call's list of heads
    need: int = 0  # positions of this segment's cache that children read (0: none; its cache is dropped)


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Length of the longest common prefix of two token tuples (binary search on C-level slice equality)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


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

    batch_size bounds a log-likelihood forward pass to the KV-cache positions of batch_size of the call's longest
    requests (the memory lm-evaluation-harness's batch of that size takes); the rows are prefix-tree segments, each
    costing its shared prefix + its segment, so shorter requests fill more rows. For generation it is the number of sequences decoded at
    once. max_seq_len caps the window (default: the model's), contexts are cut from the left to fit it."""

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
        results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)  # empty continuations: log 1
        live = []  # (request, sequence fed, position predicting cont[0], cont)
        for q, (ctx, cont) in enumerate(requests):
            if cont:
                ctx, cont = self._truncate(list(ctx) or [self.tokenizer.bos_id], list(cont))
                live.append((q, tuple(ctx + cont[:-1]), len(ctx) - 1, cont))
        if not live:
            return results
        live.sort(key=lambda r: r[1])  # sorted: sequences sharing a prefix are neighbours (a depth-first tree walk)
        segs = self._segments([seq for _, seq, _, _ in live])
        # A forward pass's KV cache holds as many positions as batch_size of the longest requests (the memory a
        # batch of whole requests would take), in as many rows as fit: a row costs its shared prefix + its segment.
        self._tokens_per_batch = self.batch_size * max(len(seq) for _, seq, _, _ in live)

        # Heads: the distinct (segment, position) whose logits some target needs; targets: (head, token, request).
        head_targets: list[list[int]] = []
        t_token, t_request = [], []
        for k, (q, _, first, cont) in enumerate(live):
            for i, token in enumerate(cont):
                p, s = first + i, k
                while segs[s].start > p:  # the position is computed by an ancestor (a shared prefix)
                    s = segs[s].parent
                head = segs[s].heads.setdefault(p, len(head_targets))
                if head == len(head_targets):
                    head_targets.append([])
                head_targets[head].append(len(t_token))
                t_token.append(token)
                t_request.append(q)
        dev = self.device
        self._totals = torch.zeros(len(requests), dtype=torch.float64, device=dev)
        self._misses = torch.zeros(len(requests), dtype=torch.long, device=dev)
        self._targets = (head_targets, torch.tensor(t_token, device=dev), torch.tensor(t_request, device=dev))

        # Windows of consecutive segments (in tree order), each run level by level: a segment's parent is run
        # before it, and the cache a child reads is kept only while some child is still to run.
        todo = [i for i, s in enumerate(segs) if s.start < len(s.seq)]
        last = list(range(len(segs)))  # the last segment of each one's subtree
        depth = [0] * len(segs)
        for i in range(len(segs)):
            depth[i] = depth[segs[i].parent] + 1 if segs[i].parent >= 0 else 0
        for i in reversed(range(len(segs))):
            if segs[i].parent >= 0:
                last[segs[i].parent] = max(last[segs[i].parent], last[i])
        stash: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        args = self.model.args
        element = self.model.tok_embeddings.weight.element_size()
        position_bytes = 2 * args.n_layers * args.n_kv_heads * args.head_dim * element  # keys and values
        windows, at = [], 0
        while at < len(todo):  # _WINDOW batches of segments, fewer when their stashed caches would pass the budget
            end, held = at + 1, segs[todo[at]].need
            while end < len(todo) and end - at < _WINDOW * self.batch_size and held * position_bytes < _STASH_BYTES:
                held += segs[todo[end]].need
                end += 1
            windows.append(todo[at:end])
            at = end
        try:
            for chunk in windows:
                for d in sorted({depth[i] for i in chunk}):
                    level = sorted((i for i in chunk if depth[i] == d),
                                   key=lambda i: -(len(segs[i].seq) - segs[i].start))
                    for batch in self._batches(level, segs):
                        self._run(batch, segs, stash)
                for s in [s for s in stash if last[s] <= chunk[-1]]:
                    del stash[s]
            totals, misses = self._totals.tolist(), self._misses.tolist()
        finally:
            del self._totals, self._misses, self._targets
        for q, _, _, _ in live:
            results[q] = (totals[q], misses[q] == 0)
        return results

    @staticmethod
    def _segments(seqs: Sequence[tuple[int, ...]]) -> list[_Segment]:
        """The prefix tree of sorted sequences as segments, one per sequence (segment k ends sequence k).

        Sequence k's segment holds the tokens after its longest common prefix with sequence k-1; its parent is the
        latest earlier segment that starts before that prefix ends (the previous-smaller-start on a stack), whose
        cache row then holds the shared positions. A branch that would share only a few tokens more than its
        parent's parent attaches there instead and recomputes them (`_MIN_SHARED`): one pass less to wait for.
        Identical sequences get an empty segment (nothing to run)."""
        segs: list[_Segment] = []
        stack: list[tuple[int, int]] = []  # (segment, its common-prefix length), increasing
        prev: tuple[int, ...] | None = None
        for seq in seqs:
            shared = _common_prefix(prev, seq) if prev is not None else 0
            prev = seq
            while stack and stack[-1][1] >= shared:
                stack.pop()
            parent = stack[-1][0] if stack else -1
            start = shared if parent >= 0 else 0
            if shared < len(seq):  # (an identical sequence keeps its parent: it runs nothing and reads no cache)
                while parent >= 0 and shared - segs[parent].start <= _MIN_SHARED:
                    start, parent = segs[parent].start, segs[parent].parent
                stack.append((len(segs), shared))
                if parent >= 0:
                    segs[parent].need = max(segs[parent].need, start)
            segs.append(_Segment(seq, start, parent))
        return segs

    def _truncate(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        """Keep the last max_seq_len + 1 tokens of ctx + cont (the model sees all but the last one)."""
        if not cont:
            raise ValueError("empty continuation: nothing to score")
        if not ctx:
            raise ValueError("empty context: start it with the BOS token")
        cont = cont[-self.max_seq_len :]
        keep = self.max_seq_len + 1 - len(cont)  # at least one context token is kept
        return ctx[-keep:], cont

    def _batches(self, level: list[int], segs: list[_Segment]):
        """Lists of segments (given longest first, so a batch's padding is small) whose KV cache, rows x (latest
        start + longest segment) positions, holds no more than batch_size of the call's longest requests, and
        whose padded positions stay inside the model's window."""
        batch, longest, latest = [], 0, 0
        for i in level:
            n, start = len(segs[i].seq) - segs[i].start, segs[i].start
            # Each row's KV cache spans its shared prefix too: rows x (latest start + longest segment) positions.
            cache = max(latest, start) + longest
            if batch and ((len(batch) + 1) * cache > self._tokens_per_batch or cache > self.max_seq_len
                          or n < _FILL * longest):  # mostly padding: a batch of its own costs less
                yield batch
                batch, longest, latest = [], 0, 0
            batch.append(i)
            longest, latest = max(longest, n), max(latest, start)
        if batch:
            yield batch

    def _run(self, batch: list[int], segs: list[_Segment], stash: dict) -> None:
        """One forward pass over `batch` (segment indices): each row's cache starts as a copy of its parent's
        cached prefix, its tokens go through the model body, the output layer runs at the row's heads only, and
        the targets' log p and greedy checks are added to the call's totals. Rows that children read are stashed.

        Right padding is harmless: a query attends only to keys at positions up to its own, and a padded position
        lies after every real one of its row (a child reads only positions before its own start)."""
        model, dev = self.model, self.device
        feeds = [segs[i].seq[segs[i].start :] for i in batch]
        starts = [segs[i].start for i in batch]
        width = max(len(f) for f in feeds)
        model.setup_cache(max_batch=len(batch), max_seq_len=max(starts) + width)
        try:
            by_parent: dict[int, list[int]] = {}
            for r, i in enumerate(batch):
                if segs[i].parent >= 0:
                    by_parent.setdefault(segs[i].parent, []).append(r)
            for parent, rows in by_parent.items():  # the shared prefix, copied into each row
                index, upto = torch.tensor(rows, device=dev), max(starts[r] for r in rows)
                for layer, (k, v) in zip(model.layers, stash[parent]):
                    cache = layer.attention.cache
                    cache.k[index, :, :upto] = k[:, :upto]
                    cache.v[index, :, :upto] = v[:, :upto]
            tokens = torch.tensor([list(f) + [0] * (width - len(f)) for f in feeds], device=dev)
            pos = torch.tensor(starts, device=dev)[:, None] + torch.arange(width, device=dev)
            h = model(tokens, input_pos=pos, head=False)  # [rows, width, dim]: no logits here
            for r, i in enumerate(batch):
                if segs[i].need:  # children will read positions [0, need) of this row
                    stash[i] = [(layer.attention.cache.k[r, :, : segs[i].need].clone(),
                                 layer.attention.cache.v[r, :, : segs[i].need].clone()) for layer in model.layers]
        finally:
            model.clear_cache()
        rows, offsets, heads = [], [], []
        for r, i in enumerate(batch):
            for p, head in segs[i].heads.items():
                rows.append(r)
                offsets.append(p - starts[r])
                heads.append(head)
        if heads:
            x = model.norm(h[torch.tensor(rows, device=dev), torch.tensor(offsets, device=dev)])  # [heads, dim]
            for at in range(0, len(heads), _HEAD_CHUNK):
                self._score_heads(model.output(x[at : at + _HEAD_CHUNK]).float(), heads[at : at + _HEAD_CHUNK])

    def _score_heads(self, logits: torch.Tensor, heads: list[int]) -> None:
        """Add log p(target) = logit - logsumexp(logits) and greedy misses of every target of `heads` (logits
        [len(heads), vocab], fp32) to the requests' totals."""
        head_targets, t_token, t_request = self._targets
        local, targets = [], []
        for k, head in enumerate(heads):
            ts = head_targets[head]
            targets += ts
            local += [k] * len(ts)
        local = torch.tensor(local, device=logits.device)
        targets = torch.tensor(targets, device=logits.device)
        token, request = t_token[targets], t_request[targets]
        picked = logits[local, token]
        # logsumexp by hand: the max pass also gives the greedy token (argmax), and the shift and exp run in place
        # on the logits (not needed again), so no [heads, vocab] temporaries; 25% off the whole call at 15M.
        top, greedy = logits.max(-1)
        lse = top + logits.sub_(top[:, None]).exp_().sum(-1).log()
        self._totals.index_add_(0, request, (picked - lse[local]).double())
        self._misses.index_add_(0, request, (greedy[local] != token).long())

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
