"""An OpenAI-compatible HTTP server over the engine (FastAPI + uvicorn).

Endpoints: GET /v1/models, POST /v1/completions (string or token-id prompts, `echo` + `logprobs`, so
lm-evaluation-harness's `local-completions` can score through it), POST /v1/chat/completions (a configurable chat
template), SSE streaming that ends with `data: [DONE]`, and /health, /tokenizer_info, /tokenize, /detokenize
(what lm-eval's remote tokenizer probes).

One background thread owns the engine and runs `Engine.step()` while any request is in flight; requests that
arrive meanwhile join the running batch at the next step (continuous batching). The rest is small state
(`Server`) and plain handlers (`ROUTES`). Every input is checked: a body that is not UTF-8 or JSON, text with lone
surrogates, a field of the wrong type, a prompt that cannot fit the context (refused before it is tokenized when
its byte length already proves it) all get HTTP 400 with OpenAI's error object; the engine's own refusals come
as typed `RequestError(field, reason)`. Prompts are tokenized in a worker thread. A request whose client
disconnects, streamed or not, is cancelled and its slot freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llamaforge.infer.detok import IncrementalDecoder, max_bytes_per_token, vocabulary
from llamaforge.infer.engine import Engine, Request, RequestError, SamplingParams
from llamaforge.infer.templates import DialogError, load_chat_format

MAX_STOP_STRINGS = 16
MAX_LOGPROBS = 20


class APIError(Exception):
    """A request the server refuses: OpenAI's error object {message, type, param, code} with HTTP `status`."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code

    @classmethod
    def from_request_error(cls, e: RequestError) -> APIError:
        """The engine's typed error, under the HTTP field's name (no message text is parsed)."""
        param = HTTP_FIELDS.get(e.field, e.field)
        return cls(f"{param}: {e.reason}", param, code=e.code)


HTTP_FIELDS = {"max_new_tokens": "max_tokens"}  # engine field -> OpenAI request field


def error_response(message: str, param=None, status=400, code=None) -> JSONResponse:
    """An OpenAI-style error body {"error": {message, type, param, code}} with `status`; type is invalid_request_error
    below 500.
    """
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


# -- request schemas: strict types (no "1" for 1), unknown fields rejected ----------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    """OpenAI's `stream_options`: include_usage adds a last chunk with the token counts."""
    include_usage: bool = False


class _Sampling(_Strict):
    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)  # vLLM's extension; -1 or 0: off
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0)  # accepted for compatibility; only 0 is supported
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0)
    user: str | None = None
    logit_bias: dict[str, float] | None = None  # OpenAI's: {"token id": bias in [-100, 100]}, checked by the engine


class CompletionRequest(_Sampling):
    """POST /v1/completions: prompt as text, texts, token ids or lists of token ids; max_tokens new tokens
    (OpenAI's default 16; 0 only with echo, for lm-eval's prompt scoring); logprobs up to MAX_LOGPROBS.
    """
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    best_of: Any = None  # not supported: only its no-op values (null, 1) are taken; see `refuse_unsupported`
    suffix: Any = None  # not supported: only null or ""


class ChatMessage(_Strict):
    """One chat message: role system | user | assistant, and its text content."""
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatRequest(_Sampling):
    """POST /v1/chat/completions: messages rendered by the model's chat format; max_completion_tokens (or the
    older max_tokens) new tokens, default the rest of the context.
    """
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    response_format: Any = None  # not supported: only null or {"type": "text"}; see `refuse_unsupported`


UNSUPPORTED = {  # OpenAI request field -> (the values that change nothing, why the others are refused)
    "best_of": ((None, 1), "best_of: not supported by this server (it returns n choices, none ranked out); "
                           "expected null or 1"),
    "suffix": ((None, ""), "suffix: not supported by this server (no fill-in-the-middle); expected null"),
    "response_format": ((None, {"type": "text"}), "response_format: not supported by this server (no JSON mode "
                                                  "or schema-guided decoding); expected null or {\"type\": \"text\"}"),
}


def refuse_unsupported(body: BaseModel) -> None:
    """400 (OpenAI's error object naming the param) for an OpenAI field this server cannot honour, set to a value
    that would change the answer; its no-op values (what clients send by default) are taken."""
    for param, (noop, message) in UNSUPPORTED.items():
        value = getattr(body, param, None)
        if not any(value == v and type(value) is type(v) for v in noop):  # 1.0 / True are not 1
            raise APIError(message, param, code="unsupported_parameter")


def logit_bias_ids(body: _Sampling) -> dict[int, float] | None:
    """OpenAI's logit_bias keys are token ids written as JSON strings ("50256"): as ints (400 if not integers;
    the vocab range and the [-100, 100] values are the engine's check)."""
    if not body.logit_bias:
        return None
    try:
        return {int(k): v for k, v in body.logit_bias.items()}
    except ValueError:
        raise APIError("logit_bias: keys must be token ids (integers written as strings)", "logit_bias") from None


# -- the engine thread ---------------------------------------------------------------------------------------------


class EngineLoop:
    """Runs the engine in one thread; other threads hand it requests through a queue."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llamaforge-engine", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> None:
        """Queue `request` for the engine thread; raises RequestError in the caller's thread if the engine would refuse
        it.
        """
        self.engine.check(request)  # raises RequestError now, in the caller's thread
        self._inbox.put(request)

    def stop(self) -> None:
        """Stop the engine thread (waits up to 10 s for it to finish its current step)."""
        self._stopped.set()
        self._inbox.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:  # block while idle, otherwise only pick up what has arrived
                item = self._inbox.get(timeout=1.0) if not self.engine.busy else self._inbox.get_nowait()
            except queue.Empty:
                item = False
            while item is not False:
                if item is not None:
                    try:
                        self.engine.submit(item)
                    except Exception as e:  # checked already; never let one request end the thread
                        self.engine.fail(item, e)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = False
            if self.engine.busy:
                try:
                    self.engine.step()
                except Exception as e:  # a bug or out of memory: fail what is in flight, keep serving
                    self.engine.abort_all(e)


# -- reading a request: every mistake is an APIError (400), never a 500 --------------------------------------------


def _check_unicode(value, path: str = "") -> None:
    """JSON may carry lone surrogates ("\\ud83e"): text that cannot be UTF-8 encoded is the client's mistake."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(f"{path or 'body'}: invalid Unicode text (a lone surrogate)", path or None) from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_unicode(k, path)
            _check_unicode(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_unicode(v, f"{path}.{i}")


async def read_body(http: HTTPRequest, schema: type[BaseModel]):
    """The request body as `schema`: UTF-8, JSON, valid Unicode, then the schema's strict fields."""
    raw = await http.body()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise APIError("request body is not valid UTF-8") from None
    except ValueError:
        raise APIError("request body is not valid JSON") from None
    _check_unicode(data)
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(x) for x in err.get("loc", ())) or None
        msg = err.get("msg", "invalid value")
        raise APIError(f"{param}: {msg}" if param else msg, param) from None


class TokenizeRequest(_Strict):
    """POST /tokenize (vLLM's and lm-eval's remote tokenizer): text -> ids."""

    prompt: str
    add_special_tokens: bool = False
    model: str | None = None


class DetokenizeRequest(_Strict):
    """POST /detokenize: ids (each in [0, tokenizer vocab)) -> text."""

    tokens: list[int]
    model: str | None = None


# -- the server's state and its handlers ---------------------------------------------------------------------------


class Server:
    """The state the handlers share: the engine (driven by its thread), the tokenizer and chat format, names."""

    def __init__(self, engine: Engine, model_name: str, chat_template: str, model_root: str | None = None):
        if engine.tokenizer is None:
            raise ValueError("the server needs an engine with a tokenizer")
        self.engine, self.tokenizer, self.model_name = engine, engine.tokenizer, model_name
        self.model_root = model_root or model_name  # the path it was loaded from (vLLM's `root` in /v1/models)
        self.chat = load_chat_format(chat_template, self.tokenizer)
        self.loop = EngineLoop(engine)
        self.created = int(time.time())
        # a prompt of B UTF-8 bytes has at least B / max_bytes tokens (None: this tokenizer gives no such bound)
        self.max_bytes = max_bytes_per_token(self.tokenizer)

    def check_model(self, name: str | None) -> None:
        """A request's `model` must be the served one: its id or the path it was loaded from, as /v1/models lists
        them (`id`, `root`); omitted is the served one. Else 404 with OpenAI's `model_not_found` error, as OpenAI
        and vLLM answer (an unknown name used to be accepted and echoed back)."""
        if name is not None and name not in (self.model_name, self.model_root):
            raise APIError(f"The model `{name}` does not exist; this server serves `{self.model_name}`", "model",
                           status=404, code="model_not_found")

    # -- prompts ---------------------------------------------------------------------------------------------------

    def least_tokens(self, texts: list[str]) -> int:
        """A lower bound on the tokens of `texts`, each encoded on its own, without encoding them: every token
        stands for at most max_bytes bytes of text (0 when the tokenizer gives no such bound)."""
        if self.max_bytes is None:
            return 0
        return sum(-(-len(t.encode("utf-8")) // self.max_bytes) for t in texts)

    def check_fits(self, least: int, field: str) -> None:
        """Refuse a prompt of at least `least` tokens when it leaves no room for one new token in the context."""
        if least >= self.engine.max_seq_len:
            raise APIError(f"{field}: at least {least} tokens, the context holds {self.engine.max_seq_len}", field,
                           code="context_length_exceeded")

    async def prompt_ids(self, prompt) -> list[list[int]]:
        """The completion request's prompt as token-id lists (text gets BOS, as llama.cpp does), tokenized in a
        worker thread so a long prompt does not stall the event loop."""
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise APIError("prompt: must not be empty", "prompt")
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]
        if all(isinstance(p, str) for p in prompt):
            for text in prompt:
                self.check_fits(self.least_tokens([text]) + 1, "prompt")  # + BOS
            return await asyncio.to_thread(lambda: [self.tokenizer.encode(t, bos=True) for t in prompt])
        return [list(p) for p in prompt]

    async def chat_ids(self, messages: list[dict]) -> list[int]:
        """The dialog as token ids from the chat format, in a worker thread; DialogError -> APIError. The format's
        pieces (control tokens, text runs) are laid out first, so a dialog that cannot fit is refused before its
        text is tokenized."""

        def build() -> list[int]:
            try:
                pieces = self.chat.pieces(messages, True)
            except DialogError:
                raise
            except Exception:  # render() checks the dialog first and says what is wrong
                pieces = []
            texts = ["".join(s for s, _ in p.spans) for p in pieces if hasattr(p, "spans")]
            self.check_fits(self.least_tokens(texts) + len(pieces) - len(texts), "messages")
            return self.chat.render(messages).ids

        try:  # the chat format builds token ids: control tokens only from the template
            return await asyncio.to_thread(build)
        except DialogError as e:
            raise APIError(str(e), e.field) from None

    def sampling(self, body: _Sampling, max_new_tokens: int | None, logprobs: int | None, echo: bool, i: int,
                 stops: list[str] = (), stop_ids=None) -> SamplingParams:
        """The engine's SamplingParams for choice i of a request (stop strings checked; seed + i for n > 1)."""
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > MAX_STOP_STRINGS or any(not s for s in stop):
            raise APIError(f"stop: expected at most {MAX_STOP_STRINGS} non-empty strings", "stop")
        seed = None if body.seed is None else body.seed + i  # n > 1 with a seed: different, reproducible draws
        return SamplingParams(
            max_new_tokens=max_new_tokens, temperature=body.temperature, top_k=max(body.top_k, 0), top_p=body.top_p,
            seed=seed, stop=stop + list(stops), logprobs=logprobs, echo_logprobs=echo, stop_token_ids=stop_ids,
            logit_bias=logit_bias_ids(body),
        )

    # -- running requests ------------------------------------------------------------------------------------------

    async def run(self, jobs: list[tuple[list[int], SamplingParams]], http: HTTPRequest, watch: bool):
        """Start every job; yield (choice index, text delta, request, finished) as they come. Every request
        still running when this generator ends (the client went away, an error) is cancelled: its slot is freed
        at the engine's next step. watch: also end when the client disconnects (a non-streamed request; a
        streamed one is ended by the response itself, which listens for the disconnect)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def listener(index):
            def on_update(r, delta):  # runs in the engine thread
                try:
                    loop.call_soon_threadsafe(events.put_nowait, (index, delta, r, r.done.is_set()))
                except RuntimeError:  # the event loop is closed (server shutting down): nobody is listening
                    r.cancelled = True

            return on_update

        requests, gone = [], None
        try:
            for i, (prompt, params) in enumerate(jobs):
                request = Request(prompt, params, on_update=listener(i))
                try:
                    self.loop.submit(request)
                except RequestError as e:
                    raise APIError.from_request_error(e) from None
                requests.append(request)
            if watch:
                gone = asyncio.ensure_future(_disconnected(http))
            pending = len(requests)
            while pending:
                get = asyncio.ensure_future(events.get())
                waits = {get} if gone is None else {get, gone}
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():  # the client went away
                    get.cancel()
                    return
                item = get.result()
                pending -= item[3]
                yield item
        finally:
            if gone is not None:
                gone.cancel()
            for r in requests:
                if not r.done.is_set():
                    r.cancelled = True

    async def run_to_end(self, jobs, http: HTTPRequest) -> list[Request] | None:
        """Every job to completion (non-streamed responses), in job order; None when the client went away."""
        finished: dict[int, Request] = {}
        async for index, _, r, done in self.run(jobs, http, watch=True):
            if done:
                finished[index] = r
        if len(finished) < len(jobs):
            return None
        requests = [finished[i] for i in range(len(jobs))]
        for r in requests:
            if r.error is not None:
                raise APIError(f"generation failed: {type(r.error).__name__}: {r.error}", status=500)
        return requests

    # -- logprobs in OpenAI's form ---------------------------------------------------------------------------------

    def token_texts(self, tokens: list[int], tops: list, text_len: int, primed: list[int]):
        """Each token's text and its alternatives' texts, so that the tokens join to the returned text.

        A token's text is the characters it completes: with byte fallback, a token holding the first bytes of a
        character has "" and the token that completes it has the whole character (its raw bytes are in chat's
        `bytes` field, OpenAI's way to show partial characters). vLLM and OpenAI's legacy API instead show such a
        token alone ("\\ufffd" or "bytes:\\xNN"), which breaks "".join(tokens) == text; we keep that rule. An
        alternative's text is what it would complete at that point. Texts are clipped to the returned text (a
        stop string cuts it inside a token). primed: tokens before `tokens` that set the decoder's state only."""
        dec = IncrementalDecoder(self.tokenizer)
        for t in primed:
            dec.decode(t)
        texts, top_texts = [], []
        for t, top in zip(tokens, tops):
            alts = None
            if top is not None:
                alts = {}
                for k, v in top.items():  # most likely first: on a shared text, the likelier entry stays
                    alts.setdefault(dec.peek(k), (k, v))
            top_texts.append(alts)
            texts.append(dec.decode(t))
        if texts:
            texts[-1] += dec.flush()
        clipped, at = [], 0
        for s in texts:
            s = s[: max(0, text_len - at)]
            clipped.append(s)
            at += len(s)
        return clipped, top_texts

    def completion_logprobs(self, r: Request, echo: bool, text: str) -> dict:
        """OpenAI's legacy logprobs: tokens join to `text` (the returned text, the prompt's included with echo)
        and text[text_offset[i]:][:len(tokens[i])] == tokens[i]; offsets count from the start of the returned
        text. BOS and other control tokens have the text "" (they are not part of the text)."""
        ids = (r.prompt if echo else []) + r.tokens
        lps = (r.prompt_logprobs if echo else []) + r.token_logprobs
        tops = (r.prompt_top_logprobs if echo else []) + r.top_logprobs
        texts, top_texts = self.token_texts(ids, tops, len(text), [] if echo else r.prompt)
        offsets, at = [], 0
        for s in texts:
            offsets.append(at)
            at += len(s)
        top = [None if t is None else {s: v for s, (_, v) in t.items()} for t in top_texts]
        return {"tokens": texts, "token_logprobs": lps, "top_logprobs": top, "text_offset": offsets}

    def chat_logprobs(self, r: Request, k: int) -> dict:
        """OpenAI's chat logprobs: per token its text (as in `token_texts`), logprob, raw `bytes` and k alternatives."""
        vocab = vocabulary(self.tokenizer)
        texts, top_texts = self.token_texts(r.tokens, r.top_logprobs, len(r.text), r.prompt)
        content = []
        for t, s, lp, alts in zip(r.tokens, texts, r.token_logprobs, top_texts):
            top = [{"token": a, "logprob": v, "bytes": list(vocab.bytes_of(i))} for a, (i, v) in alts.items()][:k]
            content.append({"token": s, "logprob": lp, "bytes": list(vocab.bytes_of(t)), "top_logprobs": top})
        return {"content": content}

    def usage(self, jobs, requests) -> dict:
        """OpenAI's usage object: prompt, completion and total tokens over every choice."""
        prompt_tokens = sum(len(p) for p, _ in jobs)
        completion = sum(len(r.tokens) for r in requests)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}


async def _disconnected(http: HTTPRequest) -> None:
    """Return when the client disconnects (after the body is read, the next ASGI message is the disconnect)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


# -- the handlers: plain functions of (server, HTTP request) -------------------------------------------------------


async def health(srv: Server, http: HTTPRequest):
    """GET /health: the server is up (the event loop answers)."""
    return {"status": "ok"}


async def models(srv: Server, http: HTTPRequest):
    """GET /v1/models: the one model, with its context length (vLLM's max_model_len)."""
    card = {"id": srv.model_name, "object": "model", "created": srv.created, "owned_by": "llamaforge",
            "root": srv.model_root,
            "max_model_len": srv.engine.max_seq_len}
    return {"object": "list", "data": [card]}


async def tokenizer_info(srv: Server, http: HTTPRequest):
    """GET /tokenizer_info: what lm-eval's remote tokenizer probes (special tokens, length, chat template)."""
    tok = srv.tokenizer
    return {
        "bos_token": tok.id_to_piece(tok.bos_id) if tok.bos_id >= 0 else None,
        "eos_token": tok.id_to_piece(tok.eos_id) if tok.eos_id >= 0 else None,
        "pad_token": None,
        "model_max_length": srv.engine.max_seq_len,
        "chat_template": getattr(srv.chat, "source", srv.chat.name),
    }


async def tokenize(srv: Server, http: HTTPRequest):
    """POST /tokenize: text -> ids, tokenized off the event loop."""
    body = await read_body(http, TokenizeRequest)
    srv.check_model(body.model)
    tok, text = srv.tokenizer, body.prompt
    specials = {tok.id_to_piece(i): i for i in (tok.bos_id, tok.eos_id) if i >= 0}
    if text in specials:  # a special token's own text is that token, not its characters (lm-eval's probe)
        return {"tokens": [specials[text]], "count": 1}
    # no context check: lm-eval tokenizes long documents and windows them itself
    ids = await asyncio.to_thread(tok.encode, text, bos=body.add_special_tokens)
    return {"tokens": ids, "count": len(ids)}


async def detokenize(srv: Server, http: HTTPRequest):
    """POST /detokenize: ids -> text; ids outside the tokenizer are a 400."""
    body = await read_body(http, DetokenizeRequest)
    srv.check_model(body.model)
    n = srv.tokenizer.vocab_size
    if any(not 0 <= i < n for i in body.tokens):
        raise APIError(f"tokens: ids must be in [0, {n})", "tokens")
    return {"prompt": srv.tokenizer.decode(body.tokens)}


async def completions(srv: Server, http: HTTPRequest):
    """POST /v1/completions: text or token-id prompts, n choices, echo + logprobs, streamed or not."""
    body = await read_body(http, CompletionRequest)
    srv.check_model(body.model)
    refuse_unsupported(body)
    max_new_tokens = 16 if body.max_tokens is None else body.max_tokens  # OpenAI's default
    if max_new_tokens == 0 and not body.echo:
        raise APIError("max_tokens: must be at least 1 unless echo is set", "max_tokens")
    if body.stream and body.echo:
        raise APIError("echo: not supported with stream", "echo")
    prompts = await srv.prompt_ids(body.prompt)
    echo_scores = body.echo and body.logprobs is not None
    jobs = [(p, srv.sampling(body, max_new_tokens, body.logprobs, echo_scores, j)) for p in prompts
            for j in range(body.n)]
    cid, model = f"cmpl-{uuid.uuid4().hex}", body.model or srv.model_name
    if body.stream:
        return _sse(_stream_completion(srv.run(jobs, http, watch=False), cid, model, int(time.time()), body, jobs,
                                       srv.usage))
    requests = await srv.run_to_end(jobs, http)
    if requests is None:
        return JSONResponse({}, status_code=499)  # nobody reads it: the client closed the connection
    choices = []
    for index, r in enumerate(requests):
        dec = IncrementalDecoder(srv.tokenizer)  # the prompt's text, as the completion's decoder continues it
        text = ("".join(dec.decode(t) for t in r.prompt) if body.echo else "") + r.text
        choices.append({"index": index, "text": text, "finish_reason": r.finish_reason,
                        "logprobs": srv.completion_logprobs(r, body.echo, text) if body.logprobs is not None else None})
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": srv.usage(jobs, requests)}


async def chat_completions(srv: Server, http: HTTPRequest):
    """POST /v1/chat/completions: messages through the chat format, streamed or not, logprobs with bytes."""
    body = await read_body(http, ChatRequest)
    srv.check_model(body.model)
    refuse_unsupported(body)
    prompt = await srv.chat_ids([m.model_dump() for m in body.messages])
    max_new_tokens = body.max_completion_tokens or body.max_tokens  # None: the rest of the context
    top = (body.top_logprobs or 0) if body.logprobs else None
    stop_ids = sorted(srv.chat.stop_ids)
    jobs = [(prompt, srv.sampling(body, max_new_tokens, top, False, j, srv.chat.stop_strings, stop_ids))
            for j in range(body.n)]
    cid, model = f"chatcmpl-{uuid.uuid4().hex}", body.model or srv.model_name
    if body.stream:
        return _sse(_stream_chat(srv.run(jobs, http, watch=False), cid, model, int(time.time()), body, jobs, srv.usage))
    requests = await srv.run_to_end(jobs, http)
    if requests is None:
        return JSONResponse({}, status_code=499)
    choices = [{"index": index, "message": {"role": "assistant", "content": r.text},
                "logprobs": srv.chat_logprobs(r, body.top_logprobs or 0) if body.logprobs else None,
                "finish_reason": r.finish_reason} for index, r in enumerate(requests)]
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": srv.usage(jobs, requests)}


ROUTES = [("GET", "/health", health), ("GET", "/v1/models", models), ("GET", "/tokenizer_info", tokenizer_info),
          ("POST", "/tokenize", tokenize), ("POST", "/detokenize", detokenize),
          ("POST", "/v1/completions", completions), ("POST", "/v1/chat/completions", chat_completions)]


def create_app(engine: Engine, model_name: str = "llamaforge", chat_template: str = "plain",
               model_root: str | None = None) -> FastAPI:
    """The FastAPI app: `Server` state plus the handlers in ROUTES. `chat_template`: a name
    `llamaforge.infer.templates.load_chat_format` takes. Client mistakes answer 400 with OpenAI's error object;
    only a failure of the server itself answers 500. `model_root`: the path the model was loaded from; requests
    may name the model by it or by `model_name`."""
    srv = Server(engine, model_name, chat_template, model_root)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        srv.loop.stop()  # server shutdown: end the engine thread

    app = FastAPI(title="llamaforge", lifespan=lifespan)
    app.state.server = srv
    app.state.engine_loop = srv.loop
    for method, path, handler in ROUTES:
        async def endpoint(http: HTTPRequest, handler=handler):
            return await handler(srv, http)

        app.add_api_route(path, endpoint, methods=[method])

    @app.exception_handler(APIError)
    async def _api_error(_, e: APIError):
        return error_response(e.message, e.param, e.status, e.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_, e: StarletteHTTPException):  # unknown path, wrong method: same error object
        return error_response(str(e.detail), status=e.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(_, e: Exception):
        return error_response(f"internal error: {type(e).__name__}: {e}", status=500)

    return app


def _sse(events) -> StreamingResponse:
    async def body():
        async for event in events:
            yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


async def _stream_completion(updates, cid, model, created, body: CompletionRequest, jobs, usage):
    finished: dict[int, Request] = {}
    async for index, delta, r, done in updates:
        if r.error is not None:
            yield {"error": {"message": f"generation failed: {r.error}", "type": "server_error", "param": None,
                             "code": None}}
            return
        if delta or done:
            yield {"id": cid, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": index, "text": delta, "logprobs": None,
                                "finish_reason": r.finish_reason if done else None}]}
        if done:
            finished[index] = r
    if body.stream_options and body.stream_options.include_usage:
        yield {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": [],
               "usage": usage(jobs, list(finished.values()))}


async def _stream_chat(updates, cid, model, created, body: ChatRequest, jobs, usage):
    finished: dict[int, Request] = {}
    head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
    for index in range(len(jobs)):  # by convention the first chunk names the role
        yield {**head, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}]}
    async for index, delta, r, done in updates:
        if r.error is not None:
            yield {"error": {"message": f"generation failed: {r.error}", "type": "server_error", "param": None,
                             "code": None}}
            return
        if delta:
            yield {**head, "choices": [{"index": index, "delta": {"content": delta}, "finish_reason": None}]}
        if done:
            finished[index] = r
            yield {**head, "choices": [{"index": index, "delta": {}, "finish_reason": r.finish_reason}]}
    if body.stream_options and body.stream_options.include_usage:
        yield {**head, "choices": [], "usage": usage(jobs, list(finished.values()))}


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 8000, model_name: str = "llamaforge",
          chat_template: str = "plain", model_root: str | None = None) -> None:
    """Run the server until interrupted (arguments as `create_app`'s)."""
    import sys

    import uvicorn

    if engine.compiled:  # pay for compiling before the first client waits on it
        print("compiling the decode step (once; 15-45 s on a CPU)...", file=sys.stderr, flush=True)
        engine.warmup()
    app = create_app(engine, model_name=model_name, chat_template=chat_template, model_root=model_root)
    uvicorn.run(app, host=host, port=port, log_level="info")


