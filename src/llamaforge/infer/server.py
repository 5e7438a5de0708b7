"""An OpenAI-compatible HTTP server over the engine (FastAPI + uvicorn).

Endpoints: GET /v1/models, POST /v1/completions (string or token-id prompts, `echo` + `logprobs`, so
lm-evaluation-harness's `local-completions` can score through it), POST /v1/chat/completions (a configurable chat
template), SSE streaming that ends with `data: [DONE]`, and /health, /tokenizer_info, /tokenize, /detokenize
(what lm-eval's remote tokenizer probes).

One background thread owns the engine and runs `Engine.step()` while any request is in flight; requests that
arrive meanwhile join the running batch at the next step (continuous batching). Every field is validated;
a bad request gets HTTP 400 with OpenAI's error object and the server carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
import uuid
from typing import Literal

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from llamaforge.infer.templates import DialogError, load_chat_format
from llamaforge.infer.engine import Engine, Request, RequestError, SamplingParams

MAX_STOP_STRINGS = 16
MAX_LOGPROBS = 20


class APIError(Exception):
    """A request the server refuses: `message` (one line), the OpenAI `param` it is about, the HTTP `status`
    (400 unless said) and an optional OpenAI `code` such as context_length_exceeded.
    """
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


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


class CompletionRequest(_Sampling):
    """POST /v1/completions: prompt as text, texts, token ids or lists of token ids; max_tokens new tokens
    (OpenAI's default 16; 0 only with echo, for lm-eval's prompt scoring); logprobs up to MAX_LOGPROBS.
    """
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False


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
        self.engine.check(request)  # raises ValueError now, in the caller's thread
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


# -- the app -------------------------------------------------------------------------------------------------------


def create_app(engine: Engine, model_name: str = "llamaforge", chat_template: str = "plain") -> FastAPI:
    """The FastAPI app. `chat_template`: a name `llamaforge.infer.templates.load_chat_format` takes."""
    tokenizer = engine.tokenizer
    if tokenizer is None:
        raise ValueError("the server needs an engine with a tokenizer")
    template = load_chat_format(chat_template, tokenizer)
    loop_thread = EngineLoop(engine)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        loop_thread.stop()  # server shutdown: end the engine thread

    app = FastAPI(title="llamaforge", lifespan=lifespan)
    app.state.engine_loop = loop_thread

    @app.exception_handler(APIError)
    async def _api_error(_, e: APIError):
        return error_response(e.message, e.param, e.status, e.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_, e: RequestValidationError):
        err = e.errors()[0]
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = err.get("msg", "invalid request")
        if err.get("type") == "json_invalid":
            msg, param = "request body is not valid JSON", None
        return error_response(f"{param}: {msg}" if param else msg, param)

    @app.exception_handler(Exception)
    async def _internal_error(_, e: Exception):
        return error_response(f"internal error: {type(e).__name__}: {e}", status=500)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "llamaforge",
                "max_model_len": engine.max_seq_len}
        return {"object": "list", "data": [card]}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return {
            "bos_token": tokenizer.id_to_piece(tokenizer.bos_id) if tokenizer.bos_id >= 0 else None,
            "eos_token": tokenizer.id_to_piece(tokenizer.eos_id) if tokenizer.eos_id >= 0 else None,
            "pad_token": None,
            "model_max_length": engine.max_seq_len,
            "chat_template": getattr(template, "source", template.name),
        }

    @app.post("/tokenize")
    async def tokenize(body: dict):
        text = body.get("prompt")
        if not isinstance(text, str):
            raise APIError("prompt: expected a string", "prompt")
        specials = {tokenizer.id_to_piece(i): i for i in (tokenizer.bos_id, tokenizer.eos_id) if i >= 0}
        if text in specials:  # a special token's own text is that token, not its characters
            return {"tokens": [specials[text]], "count": 1}
        ids = tokenizer.encode(text, bos=bool(body.get("add_special_tokens", False)))
        return {"tokens": ids, "count": len(ids)}

    @app.post("/detokenize")
    async def detokenize(body: dict):
        ids = body.get("tokens")
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise APIError("tokens: expected a list of integers", "tokens")
        return {"prompt": tokenizer.decode(ids)}

    def sampling(body: _Sampling, max_new_tokens: int, stops: list[str], logprobs: int | None, echo: bool, i: int,
                 stop_ids=None):
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > MAX_STOP_STRINGS or any(not s for s in stop):
            raise APIError(f"stop: expected at most {MAX_STOP_STRINGS} non-empty strings", "stop")
        seed = None if body.seed is None else body.seed + i  # n > 1 with a seed: different, reproducible draws
        return SamplingParams(
            max_new_tokens=max_new_tokens, temperature=body.temperature, top_k=max(body.top_k, 0), top_p=body.top_p,
            seed=seed, stop=stop + stops, logprobs=logprobs, echo_logprobs=echo, stop_token_ids=stop_ids,
        )

    def start(prompt: list[int], params: SamplingParams, on_update) -> Request:
        request = Request(prompt, params, on_update=on_update)
        try:
            loop_thread.submit(request)
        except RequestError as e:
            param = {"max_new_tokens": "max_tokens"}.get(e.field, e.field)
            raise APIError(f"{param}: {e.reason}", param, code=e.code)
        return request

    async def run_all(jobs: list[tuple[list[int], SamplingParams]], http: HTTPRequest):
        """Start every job; yield (choice index, text delta, request, finished) as they come."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def listener(index):
            def on_update(r, delta):  # runs in the engine thread
                try:
                    loop.call_soon_threadsafe(events.put_nowait, (index, delta, r, r.done.is_set()))
                except RuntimeError:  # the event loop is closed (server shutting down): nobody is listening
                    r.cancelled = True

            return on_update

        requests = []
        try:
            for i, (prompt, params) in enumerate(jobs):
                requests.append(start(prompt, params, listener(i)))
            pending = len(requests)
            while pending:
                try:
                    item = await asyncio.wait_for(events.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await http.is_disconnected():
                        return
                    continue
                pending -= item[3]
                yield item
        finally:  # client gone or error: free the slots
            for r in requests:
                if not r.done.is_set():
                    r.cancelled = True

    def usage(jobs, requests) -> dict:
        prompt_tokens = sum(len(p) for p, _ in jobs)
        completion = sum(len(r.tokens) for r in requests)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}

    def piece(i: int) -> str:
        return tokenizer.id_to_piece(i).replace("\u2581", " ")

    def completion_logprobs(r: Request, echo: bool, prompt_text: str) -> dict:
        tokens = (r.prompt if echo else []) + r.tokens
        lps = (r.prompt_logprobs if echo else []) + r.token_logprobs
        tops = (r.prompt_top_logprobs if echo else []) + r.top_logprobs
        strings = [piece(t) for t in tokens]
        offsets, at = [], 0 if echo else len(prompt_text)
        for s in strings:
            offsets.append(at)
            at += len(s)
        top = [None if t is None else {piece(k): v for k, v in t.items()} for t in tops]
        return {"tokens": strings, "token_logprobs": lps, "top_logprobs": top, "text_offset": offsets}

    async def run_to_end(jobs: list[tuple[list[int], SamplingParams]], http: HTTPRequest) -> list[Request]:
        """Run every job to completion (non-streaming responses); the finished requests in job order."""
        finished: dict[int, Request] = {}
        async for index, _, r, done in run_all(jobs, http):
            if done:
                finished[index] = r
        requests = [finished[i] for i in range(len(jobs))]
        for r in requests:
            if r.error is not None:
                raise APIError(f"generation failed: {type(r.error).__name__}: {r.error}", status=500)
        return requests

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HTTPRequest):
        prompts = _prompts(body.prompt, tokenizer)
        max_new_tokens = 16 if body.max_tokens is None else body.max_tokens  # OpenAI's default
        if max_new_tokens == 0 and not body.echo:
            raise APIError("max_tokens: must be at least 1 unless echo is set", "max_tokens")
        if body.stream and body.echo:
            raise APIError("echo: not supported with stream", "echo")
        jobs = []
        for prompt in prompts:
            for j in range(body.n):
                params = sampling(body, max_new_tokens, [], body.logprobs, body.echo and body.logprobs is not None, j)
                jobs.append((prompt, params))
        cid, model = f"cmpl-{uuid.uuid4().hex}", body.model or model_name
        if body.stream:
            return _sse(_stream_completion(run_all(jobs, http), cid, model, created, body, jobs, usage))
        requests = await run_to_end(jobs, http)
        choices = []
        for index, ((prompt, _), r) in enumerate(zip(jobs, requests)):
            prompt_text = tokenizer.decode(prompt)
            choices.append({
                "index": index,
                "text": (prompt_text if body.echo else "") + r.text,
                "logprobs": completion_logprobs(r, body.echo, prompt_text) if body.logprobs is not None else None,
                "finish_reason": r.finish_reason,
            })
        return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": choices, "usage": usage(jobs, requests)}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, http: HTTPRequest):
        try:  # the chat format builds token ids: control tokens only from the template
            prompt = template.render([m.model_dump() for m in body.messages]).ids
        except DialogError as e:
            raise APIError(str(e), e.field)
        max_new_tokens = body.max_completion_tokens or body.max_tokens  # None: the rest of the context
        top = (body.top_logprobs or 0) if body.logprobs else None
        stop_ids = sorted(template.stop_ids)
        jobs = [(prompt, sampling(body, max_new_tokens, template.stop_strings, top, False, j, stop_ids))
                for j in range(body.n)]
        cid, model = f"chatcmpl-{uuid.uuid4().hex}", body.model or model_name
        if body.stream:
            return _sse(_stream_chat(run_all(jobs, http), cid, model, created, body, jobs, usage))
        requests = await run_to_end(jobs, http)
        choices = []
        for index, r in enumerate(requests):
            logprobs = None
            if body.logprobs:
                content = [{"token": piece(t), "logprob": lp,
                            "top_logprobs": [{"token": piece(k), "logprob": v} for k, v in top.items()][: body.top_logprobs or 0]}
                           for t, lp, top in zip(r.tokens, r.token_logprobs, r.top_logprobs)]
                logprobs = {"content": content}
            choices.append({"index": index, "message": {"role": "assistant", "content": r.text},
                            "logprobs": logprobs, "finish_reason": r.finish_reason})
        return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": choices, "usage": usage(jobs, requests)}

    return app


def _prompts(prompt, tokenizer) -> list[list[int]]:
    """The request's prompt field as token-id lists (text gets a BOS token, as llama.cpp does)."""
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt, bos=True)]
    if not prompt:
        raise APIError("prompt: must not be empty", "prompt")
    if all(isinstance(p, str) for p in prompt):
        return [tokenizer.encode(p, bos=True) for p in prompt]
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return [list(p) for p in prompt]


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
          chat_template: str = "plain") -> None:
    """Run the server until interrupted."""
    import sys

    import uvicorn

    if engine.compiled:  # pay for compiling before the first client waits on it
        print("compiling the decode step (once; 15-45 s on a CPU)...", file=sys.stderr, flush=True)
        engine.warmup()
    app = create_app(engine, model_name=model_name, chat_template=chat_template)
    uvicorn.run(app, host=host, port=port, log_level="info")


