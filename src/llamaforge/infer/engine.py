"""A generation engine in the style of gpt-fast: static KV cache, separate prefill and one-token decode step,
sampling on the device, and a continuous-batching scheduler.

How it works:
- The KV cache is allocated once for `max_batch` slots x `max_seq_len` positions (`Transformer.setup_cache`).
  Every slot holds one sequence at its own positions (`Transformer.forward(..., input_pos=[B, T])`): each query
  attends to its own row's keys up to its position, so rows of different lengths share one decode step and a
  slot is reused by simply starting again at position 0 (stale keys beyond the position are masked out).
- Prefill runs a new prompt (or several, right-padded) through the model in one forward into its slot(s).
- The decode step feeds one token per slot at that slot's position. Its shapes never change, so it is compiled
  once (`torch.compile`): with CUDA graphs on a GPU (the default there); on a CPU, when asked (`compile=True`,
  `--compile`), with inductor's C++ GEMM templates over frozen, concatenated weights (`CPU_COMPILE_CONFIG`:
  faster per token than eager, at the price of compiling once; how much of each: BENCHMARKS.md "Inference").
  After the first call Dynamo's guards are skipped.
- Eager on a CPU, the engine swaps the model's linear layers for a decode-friendly weight layout
  (`infer/layout.py`: transposed-contiguous weights, one-row products split over the threads) and the decode
  step attends only to the cache positions filled so far.
- Sampling (`llamaforge.infer.sampling.sample_next`) stays on the device; the loop reads the B new token ids back
  once per step, which it must do anyway to stream text and check stop conditions. Rows of a padded embedding
  (ids the tokenizer does not have) are masked to -inf before sampling and logprobs.
- Text comes from one `Detokenizer` per request (`infer/detok.py`): bytes in, complete UTF-8 out, stop strings
  matched on the text; `on_update` receives exactly the pieces that join to the final `text`.
- Requests that cannot run raise `RequestError(field, reason)` (the server maps it to an OpenAI 400 error object).
- The engine works on a structural copy of the caller's model (new module objects, the same parameter tensors):
  its KV cache and, eager on a CPU, the decode layout's module swap stay off the caller's model. The one visible
  change: the decode layout re-lays each linear weight column-major in place (same values, same Parameter
  objects, other strides; `cpu_layout=False` leaves them as they are).
- `Engine.step()` admits waiting requests into free slots and decodes one token for every active slot:
  continuous batching. `Engine.generate` drives it to completion; the server drives it from a thread.
"""

from __future__ import annotations

import copy
import itertools
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from llamaforge.errors import UserNotice
from llamaforge.infer.detok import Detokenizer
from llamaforge.infer.layout import decode_layout
from llamaforge.infer.sampling import sample_next
from llamaforge.model import KVCache, Transformer

__all__ = ["Engine", "Request", "RequestError", "SamplingParams"]


class RequestError(ValueError):
    """A request the engine cannot run: `field` names the offending SamplingParams field or "prompt", `reason`
    says what was expected, `code` is OpenAI's error code where one exists (e.g. "context_length_exceeded")."""

    def __init__(self, field: str, reason: str, code: str | None = None):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason, self.code = field, reason, code


@dataclass
class SamplingParams:
    """How one request is continued: the budget of new tokens, the sampling rule (greedy at temperature 0, else
    temperature with optional top-k and nucleus top-p, Holtzman et al. 2020), its own seed, where it stops (stop
    strings on the text, stop token ids), and which log-probabilities it reports.
    """
    max_new_tokens: int | None = None  # None: the rest of the context (as OpenAI-compatible servers do)
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int | None = None  # a private random stream for this request (None: the engine's)
    stop: Sequence[str] = ()  # stop strings; the text is cut before the first one found
    stop_token_ids: Sequence[int] | None = None  # None: the tokenizer's end-of-sequence id
    logprobs: int | None = None  # also return this many most likely tokens (and the chosen one's logprob)
    echo_logprobs: bool = False  # score the prompt tokens too (lm-eval's loglikelihood requests)
    # added to those ids' logits before sampling (OpenAI's logit_bias: ids in the vocab, values in [-100, 100]);
    # the reported logprobs are of the biased distribution, the one the tokens are drawn from
    logit_bias: Mapping[int, float] | None = None


@dataclass(eq=False)  # requests are compared by identity
class Request:
    """One sequence to continue. The engine fills the output fields as it goes."""

    prompt: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    on_update: Callable[[Request, str], None] | None = None  # called with each new piece of text
    # outputs
    tokens: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    prompt_logprobs: list[float | None] = field(default_factory=list)
    prompt_top_logprobs: list[dict[int, float] | None] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length"
    error: BaseException | None = None
    cancelled: bool = False  # set by another thread (client gone): the engine frees the slot at its next step
    done: threading.Event = field(default_factory=threading.Event)
    # internal
    _slot: int = -1
    _detok: Detokenizer | None = None
    _generator: torch.Generator | None = None
    _limit: int = 0  # new tokens allowed: max_new_tokens, or the rest of the context


def _cache_view(cache: KVCache, start: int, n: int, length: int | None = None) -> KVCache:
    """A KVCache whose tensors are rows [start, start+n) and positions [0, length) of `cache` (shared memory):
    prefill writes one slot; an eager decode step attends only to the positions filled so far."""
    view = KVCache.__new__(KVCache)
    nn.Module.__init__(view)
    view.register_buffer("k", cache.k[start : start + n, :, :length], persistent=False)
    view.register_buffer("v", cache.v[start : start + n, :, :length], persistent=False)
    return view


# Inductor settings for compiling the CPU decode step (each one's effect, measured: BENCHMARKS.md "Inference"):
#   max_autotune: inductor's C++ GEMM templates, which beat the BLAS calls on one-row products;
#   freezing: the weights become constants of the graph, packed once for those kernels (the model's weights must
#     not change afterwards: one engine per model, for inference);
#   cpp.enable_concat_linear: products sharing an input (wq/wk/wv, w1/w3) run as one wider product;
#   cpp_wrapper: the graph's kernel calls are made from C++, not Python (no interpreter between kernels);
#   max_autotune_gemm_backends="CPP": the C++ template is the only GEMM candidate. Autotuning picks by timing
#     each candidate once; on a busy 2-core VM the 2-thread template timed ~1000x slow under OpenMP barrier waits,
#     lost to the MKL call (3-5 tok/s instead of ~100), and inductor's on-disk cache handed that choice to every
#     later process. Where the template cannot take a product, inductor's mkldnn lowerings still fall back to the
#     MKL/ATen kernel (their `len(choices) == 0` branch), so nothing fails to compile (torch 2.11-2.13);
#   autotune_num_choices_displayed=0, max_autotune_report_choices_stats=False: autotuning prints nothing.
# They are read while the graph is compiled, i.e. during the first call, so `Engine._run_compiled` patches them
# around that call (passed as torch.compile's `options`, freezing did not take effect and inductor fell back to
# plain aten::mm on row-major weights).
CPU_COMPILE_CONFIG = {"max_autotune": True, "freezing": True, "cpp.enable_concat_linear": True, "cpp_wrapper": True,
                      "max_autotune_gemm_backends": "CPP",
                      "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}


def _structural_copy(module: nn.Module) -> nn.Module:
    """A copy of the module tree (new module objects) whose parameters and buffers are the original tensors:
    caches installed and layers swapped in the copy leave the original's modules untouched."""
    new = copy.copy(module)  # a new object with the same __dict__ entries...
    new._parameters, new._buffers = dict(module._parameters), dict(module._buffers)  # ...and its own tables
    new._modules = {k: None if m is None else _structural_copy(m) for k, m in module._modules.items()}
    return new


class Engine:
    """Batched generation with a static KV cache; `max_batch` sequences decode together.

    model: a Transformer (any dtype, quantized or not) on its device; the engine decodes with a structural copy of
    it (same weights; see the module docstring for the one in-place change, the CPU decode layout).
    tokenizer: turns ids into text (`Request.text`, `on_update`) and gives the end-of-sequence id; when the
    model's embedding has more rows than the tokenizer has tokens, the extra ids are never sampled
    (`extra_rows`). max_seq_len: KV cache positions per slot (default and upper bound: the model's).
    compile: compile the decode step (default: on CUDA; on a CPU when asked). cpu_layout: the eager CPU decode
    layout (default: on a CPU when not compiled)."""

    def __init__(
        self,
        model: Transformer,
        tokenizer=None,
        max_batch: int = 1,
        max_seq_len: int | None = None,
        compile: bool | None = None,
        cpu_layout: bool | None = None,
    ):
        model = self.model = _structural_copy(model).eval()
        self.tokenizer = tokenizer
        self.device = model.tok_embeddings.weight.device
        self.max_batch = max_batch
        self.max_seq_len = min(max_seq_len or model.args.max_seq_len, model.args.max_seq_len)
        # Ids >= n_tokens have no text: a padded embedding (e.g. 32064 rows, 32000 pieces) never samples them.
        rows = model.args.vocab_size
        self.n_tokens = min(rows, tokenizer.vocab_size) if tokenizer is not None else rows
        self.extra_rows = rows - self.n_tokens
        model.setup_cache(max_batch, self.max_seq_len)
        # Eager on a CPU, the decode step's matvecs run faster with the weights stored transposed and split over
        # the threads (infer/layout.py: one-row products are memory-bound and PyTorch runs them on one thread);
        # this swaps the copy's linear layers, weights shared, math unchanged. Off elsewhere (GPU
        # matmuls gain nothing from it).
        # Compiled by default on a GPU (CUDA graphs); on a CPU the compiled step is faster per token but takes a
        # while to compile (max-autotune tries kernels), so it is asked for (--compile). Numbers: BENCHMARKS.md
        # "Inference" (bench/decode_cpu.py).
        self.compiled = self.device.type == "cuda" if compile is None else compile
        # On a CPU the decode layout (eager) and the compiled step (its own packed GEMMs) exclude each other.
        self.cpu_layout = self.device.type == "cpu" and not self.compiled if cpu_layout is None else cpu_layout
        if self.cpu_layout:
            decode_layout(model)
        self._caches = [layer.attention.cache for layer in model.layers]
        self._decode_fn = None
        if self.compiled:  # GPU: CUDA graphs, one replay instead of hundreds of kernel launches
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._decode_fn = torch.compile(self._forward_decode, mode=mode, fullgraph=True)
        self._warm = False  # the compiled step has run once (its guards are then skipped: shapes never change)
        self._generator = torch.Generator(self.device).manual_seed(0)
        self._slots: list[Request | None] = [None] * max_batch
        self._waiting: list[Request] = []
        # Per-slot decode state, kept on the device so the decode step reads no host values.
        self._last = torch.zeros(max_batch, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(max_batch, dtype=torch.long, device=self.device)
        self._temperature = torch.zeros(max_batch, device=self.device)
        self._top_k = torch.zeros(max_batch, dtype=torch.long, device=self.device)
        self._top_p = torch.ones(max_batch, device=self.device)

    # -- the two model calls ---------------------------------------------------------------------------------

    def _forward_decode(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self.compiled and self.device.type == "cpu":
            # softmax(q k^T) v as plain ops: inductor fuses them into one loop per layer, which beats the flash
            # kernel for a single query (BENCHMARKS.md "Inference")
            with sdpa_kernel(SDPBackend.MATH):
                return self.model(tokens[:, None], input_pos=pos[:, None])[:, 0]
        return self.model(tokens[:, None], input_pos=pos[:, None])[:, 0]

    def _run_compiled(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self._warm:
            # Dynamo's guards check every parameter and buffer on each call, a visible share of a small CPU step.
            # This step's inputs never change shape, dtype or device (`decode` always installs the whole cache
            # when compiled), so after the first call they are skipped.
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                return self._decode_fn(tokens, pos)
        try:
            import torch._inductor.config as inductor_config

            known = inductor_config.get_config_copy()  # settings this torch version lacks are left out
            wanted = CPU_COMPILE_CONFIG if self.device.type == "cpu" else {}
            wanted = {k: v for k, v in wanted.items() if k in known}
            try:
                logits = self._compile_first_call(inductor_config, wanted, tokens, pos)
            except Exception:
                if "max_autotune_gemm_backends" not in wanted:
                    raise
                # a product the C++ template cannot take (a future torch, an op we do not have today): compile
                # again with every GEMM backend before giving up on compiling
                wanted = {k: v for k, v in wanted.items() if k != "max_autotune_gemm_backends"}
                logits = self._compile_first_call(inductor_config, wanted, tokens, pos)
        except Exception as e:  # e.g. no C++ compiler for inductor on this machine: decode eagerly instead
            if self.device.type != "cpu":
                raise
            warnings.warn(f"compiling the decode step failed ({type(e).__name__}: {str(e)[:200]}); decoding eagerly",
                          UserNotice)
            self.compiled, self.cpu_layout = False, True
            decode_layout(self.model)
            return self._forward_decode(tokens, pos)
        self._warm = True
        return logits

    def _compile_first_call(self, inductor_config, settings: dict, tokens: torch.Tensor, pos: torch.Tensor):
        """The first call of the compiled step (it compiles) with inductor's `settings` patched in around it."""
        with inductor_config.patch(settings), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")  # inductor's own use
            return self._decode_fn(tokens, pos)

    def warmup(self) -> None:
        """Compile the decode step now rather than on the first request (a dummy step on the idle slots: each
        slot's next prefill rewrites the cache position it touches)."""
        if self.compiled and not self._warm and not self.busy:
            self.decode(self._last, self._pos)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One token per slot (tokens, pos: [max_batch]) -> next-token logits [max_batch, vocab].

        Eager on a CPU, attention reads only the cache positions up to max(pos) (rounded up to a multiple of 64,
        to keep the shapes few) instead of all max_seq_len; reading pos costs no device sync there. A compiled
        step keeps its static shapes."""
        length = None
        if self.device.type == "cpu" and not self.compiled:
            length = min(-(-(int(pos.max()) + 1) // 64) * 64, self.max_seq_len)
        # (re)installing also covers a model used without a cache meanwhile (e.g. a full forward for scoring)
        self._install(length=length)
        if not self.compiled:
            return self._forward_decode(tokens, pos)
        return self._run_compiled(tokens, pos).clone()  # CUDA-graph outputs are overwritten by the next call

    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Sequence[int]], first_slot: int = 0) -> torch.Tensor:
        """Run prompts into slots first_slot.. (right-padded, each from position 0) -> logits [n, T, vocab].

        Padding writes junk keys past a prompt's end; decoding overwrites each before any query can see it."""
        n, width = len(prompts), max(len(p) for p in prompts)
        tokens = torch.zeros(n, width, dtype=torch.long)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        tokens = tokens.to(self.device)
        pos = torch.arange(width, device=self.device).expand(n, width)
        try:
            self._install(first_slot, n)
            return self.model(tokens, input_pos=pos)
        finally:
            self._install()

    def _install(self, first_slot: int = 0, n: int | None = None, length: int | None = None) -> None:
        """Point every attention layer at this engine's cache (or at rows [first_slot, first_slot+n) and
        positions [0, length) of it)."""
        n = self.max_batch - first_slot if n is None else n
        whole = first_slot == 0 and n == self.max_batch and length in (None, self.max_seq_len)
        if whole and all(layer.attention.cache is c for layer, c in zip(self.model.layers, self._caches)):
            return  # already in place (every compiled decode step): no module attribute writes
        for layer, cache in zip(self.model.layers, self._caches):
            layer.attention.cache = cache if whole else _cache_view(cache, first_slot, n, length)

    # -- requests ----------------------------------------------------------------------------------------------

    def check(self, request: Request) -> None:
        """Raise RequestError when a request cannot run (the server answers it with HTTP 400)."""
        n, p = len(request.prompt), request.params
        if n == 0:
            raise RequestError("prompt", "must hold at least one token")
        if any(not 0 <= t < self.n_tokens for t in request.prompt):  # past the tokenizer: no text, no training
            raise RequestError("prompt", f"token ids must be in [0, {self.n_tokens})")
        if n >= self.max_seq_len:
            raise RequestError("prompt", f"{n} tokens leave no room for a new one in the context of "
                               f"{self.max_seq_len}", code="context_length_exceeded")
        if p.max_new_tokens is not None and (p.max_new_tokens < 0 or n + p.max_new_tokens > self.max_seq_len):
            raise RequestError("max_new_tokens", f"prompt ({n} tokens) plus {p.max_new_tokens} new tokens exceeds "
                               f"the context length {self.max_seq_len}", code="context_length_exceeded")
        if p.logit_bias and any(not (isinstance(t, int) and 0 <= t < self.n_tokens) for t in p.logit_bias):
            raise RequestError("logit_bias", f"token ids must be integers in [0, {self.n_tokens})")
        if p.logit_bias and any(not -100 <= b <= 100 for b in p.logit_bias.values()):  # `not <=`: NaN refused
            raise RequestError("logit_bias", "bias values must be in [-100, 100]")
        if not p.temperature >= 0 or not 0 < p.top_p <= 1 or p.top_k < 0:  # `not >=`: NaN is refused too
            raise RequestError("temperature" if not p.temperature >= 0 else "top_p" if p.top_k >= 0 else "top_k",
                               "expected temperature >= 0, 0 < top_p <= 1, top_k >= 0")

    def submit(self, request: Request) -> Request:
        """Queue a request (checked first: RequestError); it starts at the next `step`."""
        self.check(request)
        p = request.params
        request._limit = self.max_seq_len - len(request.prompt) if p.max_new_tokens is None else p.max_new_tokens
        if p.seed is not None:
            request._generator = torch.Generator(self.device).manual_seed(p.seed)
        if self.tokenizer is not None:
            request._detok = Detokenizer(self.tokenizer, request.prompt, p.stop)
        self._waiting.append(request)
        return request

    @property
    def busy(self) -> bool:
        """Whether any request is waiting or still decoding in a slot."""
        return bool(self._waiting) or any(r is not None for r in self._slots)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None) -> list[Request]:
        """Continue every prompt (batched by `max_batch`); returns the finished requests in order."""
        requests = [self.submit(Request(list(p), params or SamplingParams())) for p in prompts]
        while self.busy:
            self.step()
        for r in requests:
            if r.error is not None:
                raise r.error
        return requests

    # -- the scheduler -----------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> None:
        """Admit waiting requests into free slots (prefill), then decode one token for every active slot."""
        for r in self._waiting + self._slots:
            if r is not None and r.cancelled:
                self._finish(r, "cancelled")
        self._admit()
        active = [i for i, r in enumerate(self._slots) if r is not None]
        if not active:
            return
        logits = self.decode(self._last, self._pos)
        if len(active) == self.max_batch:  # every slot busy (always at batch 1): no index tensors to build
            self._pos += 1
            self._take(logits, active)
        else:
            self._pos[torch.tensor(active, device=self.device)] += 1
            self._take(logits[active], active)

    def _admit(self) -> None:
        free = [i for i, r in enumerate(self._slots) if r is None]
        admitted = []
        while free and self._waiting:
            slot, request = free.pop(0), self._waiting.pop(0)
            request._slot = slot
            self._slots[slot] = request
            admitted.append(request)
        # Prefill runs of neighbouring slots together (all prompts at once when a batch starts).
        for _, run in itertools.groupby(enumerate(admitted), key=lambda ir: ir[1]._slot - ir[0]):
            run = [r for _, r in run]
            try:
                logits = self.prefill([r.prompt for r in run], first_slot=run[0]._slot)
            except Exception as e:  # e.g. out of memory: fail these requests, keep serving the others
                for r in run:
                    self._finish(r, None, error=e)
                continue
            for i, r in enumerate(run):
                n, slot, p = len(r.prompt), r._slot, r.params
                if p.echo_logprobs:
                    self._score_prompt(r, logits[i, : n - 1])
                self._pos[slot] = n
                self._temperature[slot] = p.temperature
                self._top_k[slot] = p.top_k
                self._top_p[slot] = p.top_p
                if r._limit == 0:
                    self._finish(r, "length")
                else:
                    self._take(logits[i, n - 1][None], [slot])

    def _mask(self, logits: torch.Tensor) -> torch.Tensor:
        """-inf for the ids past the tokenizer (rows of a padded embedding), so they are never drawn or listed."""
        if self.extra_rows:
            logits = logits.clone()  # the caller's tensor (or a compiled step's output) stays as it was
            logits[..., self.n_tokens :] = float("-inf")
        return logits

    def _score_prompt(self, r: Request, logits: torch.Tensor) -> None:
        """Log-probability of each prompt token given the ones before it (the first has none)."""
        logp = torch.log_softmax(self._mask(logits).float(), dim=-1)
        target = torch.tensor(r.prompt[1:], device=logp.device)
        r.prompt_logprobs = [None] + logp.gather(-1, target[:, None])[:, 0].tolist()
        k = max(r.params.logprobs or 1, 1)
        values, ids = logp.topk(k, dim=-1)
        r.prompt_top_logprobs = [None] + [dict(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]

    def _take(self, logits: torch.Tensor, slots: list[int]) -> None:
        """Sample the next token of each slot from its logits [len(slots), vocab] and hand it to its request."""
        requests = [self._slots[s] for s in slots]
        logits = self._mask(logits)
        biased = [(i, r.params.logit_bias) for i, r in enumerate(requests) if r.params.logit_bias]
        if biased:
            logits = logits.clone()  # the step's output stays as it was
            for i, bias in biased:  # OpenAI's logit_bias: added to the logits before sampling
                ids = torch.tensor(list(bias), device=logits.device)
                logits[i, ids] += torch.tensor(list(bias.values()), dtype=logits.dtype, device=logits.device)
        every_slot = len(slots) == self.max_batch  # slots are then 0..max_batch-1, in order
        index = slice(None) if every_slot else torch.tensor(slots, device=self.device)
        if all(r.params.temperature <= 0 for r in requests):  # all greedy (known on the host): plain argmax
            next_ids = sample_next(logits, 0.0)
        else:
            generators = [r._generator or self._generator for r in requests]
            next_ids = sample_next(
                logits, self._temperature[index], self._top_p[index], generators, top_k=self._top_k[index]
            )
        self._last[index] = next_ids
        want = [i for i, r in enumerate(requests) if r.params.logprobs is not None]
        scores = {}
        if want:
            logp = torch.log_softmax(logits[want].float(), dim=-1)
            chosen = logp.gather(-1, next_ids[want][:, None])[:, 0].tolist()
            k = max(max(requests[i].params.logprobs for i in want), 1)
            values, ids = logp.topk(k, dim=-1)
            for j, i in enumerate(want):
                kk = max(requests[i].params.logprobs, 1)
                scores[i] = (chosen[j], dict(zip(ids[j, :kk].tolist(), values[j, :kk].tolist())))
        for i, (r, token) in enumerate(zip(requests, next_ids.tolist())):  # the one host sync per step
            if i in scores:
                r.token_logprobs.append(scores[i][0])
                r.top_logprobs.append(scores[i][1])
            self._append(r, token)

    def _append(self, r: Request, token: int) -> None:
        p = r.params
        stop_ids = p.stop_token_ids
        if stop_ids is None:
            stop_ids = (self.tokenizer.eos_id,) if self.tokenizer is not None else ()
        if token in stop_ids:
            if r.token_logprobs:  # the end-of-sequence token is not part of the text
                r.token_logprobs.pop()
                r.top_logprobs.pop()
            return self._finish(r, "stop")
        r.tokens.append(token)
        if r._detok is not None:
            piece = r._detok.add(token)
            r.text = r._detok.text
            if r._detok.stopped:  # a stop string appeared (with several, the earliest one cuts)
                return self._finish(r, "stop", piece=piece)
            if piece and r.on_update is not None:
                r.on_update(r, piece)
        if len(r.tokens) >= r._limit or len(r.prompt) + len(r.tokens) >= self.max_seq_len:
            self._finish(r, "length")

    def fail(self, request: Request, error: BaseException) -> None:
        """End one request with an error (it is removed from the queue or its slot)."""
        self._finish(request, None, error=error)

    def abort_all(self, error: BaseException) -> None:
        """Fail every waiting and running request (after an unexpected error), leaving the engine usable."""
        for r in self._waiting + self._slots:
            if r is not None:
                self._finish(r, None, error=error)

    def _finish(self, r: Request, reason: str | None, error: BaseException | None = None, piece: str = "") -> None:
        r.finish_reason, r.error = reason, error
        if error is None and r._detok is not None:
            piece += r._detok.finish()  # what was held back: an unfinished character (as U+FFFD), a stop prefix
            r.text = r._detok.text
        if r in self._waiting:
            self._waiting.remove(r)
        elif r._slot >= 0 and self._slots[r._slot] is r:
            self._slots[r._slot] = None
            self._pos[r._slot] = 0  # an idle slot decodes a dummy token at position 0
        if piece and r.on_update is not None:
            r.on_update(r, piece)
        r.done.set()
        if r.on_update is not None:
            r.on_update(r, "")  # done is set: the listener knows the request has finished
