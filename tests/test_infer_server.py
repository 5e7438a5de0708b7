"""The OpenAI-compatible server, driven by the real `openai` client over loopback."""

from __future__ import annotations

import copy
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

pytestmark = [
    pytest.mark.timeout(180),  # a hung server fails the test instead of the whole run
    pytest.mark.usefixtures("one_thread"),  # conftest: tiny models run on one thread
]

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from llamaforge.infer import Engine, SamplingParams
from llamaforge.infer.server import create_app
from llamaforge.model import ModelArgs, Transformer
from llamaforge.tokenizer import SentencePieceTokenizer




TEXT = [
    "Once upon a time there was a little girl named Lily who loved to play outside in the park.",
    "She saw a big red ball and wanted to play with it but it was too high.",
    "The cat sat on the mat and the dog ran to the tree.",
]


def train_tokenizer(path):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT * 50), model_prefix=str(path / "tok"), vocab_size=320, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2,
    )
    return SentencePieceTokenizer(path / "tok.model")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tok = train_tokenizer(tmp_path_factory.mktemp("tok"))
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=tok.vocab_size, multiple_of=16,
                                  max_seq_len=128))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    engine = Engine(model, tok, max_batch=4, max_seq_len=128)
    app = create_app(engine, model_name="tiny")
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "server did not start"
    # A second engine over a copy of the weights (an engine owns its model's caches) gives the expected text.
    reference = Engine(copy.deepcopy(model), tok, max_batch=1, max_seq_len=128)
    yield {"base": f"http://127.0.0.1:{port}", "tok": tok, "engine": engine, "reference": reference, "app": app}
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key="none", timeout=60, max_retries=0)


def expected_text(server, prompt_ids, n):
    (r,) = server["reference"].generate([prompt_ids], SamplingParams(max_new_tokens=n))
    return r


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_completion_matches_engine(server, client):
    tok = server["tok"]
    out = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=12, temperature=0)
    ref = expected_text(server, tok.encode("Once upon a time", bos=True), 12)
    assert out.choices[0].text == ref.text
    assert out.choices[0].finish_reason == ref.finish_reason
    assert out.usage.completion_tokens == len(ref.tokens)
    assert out.usage.prompt_tokens == len(tok.encode("Once upon a time", bos=True))


def test_streaming_completion_concatenates_to_the_same_text(server, client):
    full = client.completions.create(model="tiny", prompt="The cat", max_tokens=15, temperature=0)
    stream = client.completions.create(model="tiny", prompt="The cat", max_tokens=15, temperature=0, stream=True)
    pieces, reasons = [], []
    for chunk in stream:
        pieces.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == full.choices[0].text
    assert reasons[-1] == full.choices[0].finish_reason and all(r is None for r in reasons[:-1])


def test_raw_stream_ends_with_done(server):
    body = {"prompt": "The dog", "max_tokens": 4, "stream": True, "temperature": 0}
    with httpx.stream("POST", server["base"] + "/v1/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


@pytest.mark.parametrize("route, body", [("completions", {"prompt": "The dog"}),
                                         ("chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})])
def test_stream_created_is_the_request_time(server, route, body):
    """A streamed response's `created` is when the request came (as non-streamed ones), not the server's start
    (found by helper "user": every stream carried the start time). The start time is moved back to tell them apart."""
    state = server["app"].state.server
    started, state.created = state.created, 1
    before = int(time.time())
    try:
        with httpx.stream("POST", f"{server['base']}/v1/{route}", json={**body, "max_tokens": 2, "stream": True},
                          timeout=60) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data: {")]
    finally:
        state.created = started
    import json

    assert lines and all(json.loads(line[6:])["created"] >= before for line in lines)


def test_echo_logprobs_on_token_ids_like_lm_eval(server, client):
    """lm-eval local-completions: token-id prompt, echo, logprobs=1, max_tokens=1; reads [ctxlen:-1]."""
    model, tok = server["reference"].model, server["tok"]
    ids = tok.encode("She saw a big red ball", bos=True)
    out = client.completions.create(model="tiny", prompt=ids, echo=True, logprobs=1, max_tokens=1, temperature=0)
    lp = out.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1 and lp.token_logprobs[0] is None
    model.clear_cache()
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).double()[0], -1)
    expected = [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx(expected, abs=1e-4)
    # is_greedy as lm-eval computes it: the token equals the top-1 entry
    greedy = [int(logp[i - 1].argmax()) == ids[i] for i in range(1, len(ids))]
    got = [max(top, key=top.get) == t for t, top in zip(lp.tokens[1 : len(ids)], lp.top_logprobs[1 : len(ids)])]
    assert got == greedy
    assert out.choices[0].text.startswith(tok.decode(ids))


def test_null_max_tokens_means_the_default(server):
    r = httpx.post(server["base"] + "/v1/completions", json={"prompt": "The", "max_tokens": None,
                                                              "temperature": 0}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 16


def test_echo_without_generation(client):
    out = client.completions.create(model="tiny", prompt=[1, 50, 60, 70], echo=True, logprobs=0, max_tokens=0)
    assert len(out.choices[0].logprobs.token_logprobs) == 4 and out.usage.completion_tokens == 0


def test_chat_and_chat_stream(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell a story."}]
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    msg = out.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str)
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == msg.content
    assert chunks[-1].usage.completion_tokens == out.usage.completion_tokens


def test_stop_strings_and_seeded_sampling(server, client):
    full = client.completions.create(model="tiny", prompt="Lily", max_tokens=20, temperature=0).choices[0].text
    stop = full[5:8]
    cut = client.completions.create(model="tiny", prompt="Lily", max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.find(stop)] and cut.choices[0].finish_reason == "stop"
    a = client.completions.create(model="tiny", prompt="Lily", max_tokens=10, temperature=1.0, seed=7)
    b = client.completions.create(model="tiny", prompt="Lily", max_tokens=10, temperature=1.0, seed=7)
    assert a.choices[0].text == b.choices[0].text


BAD = [
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "x", "temperature": 3}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "logprobs": 99}, "logprobs"),
    ({"prompt": "x", "max_tokens": 1000}, "max_tokens"),
    ({"prompt": [1, 99999]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x", "stop": ["a", ""]}, "stop"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "bogus": 1}, "bogus"),
    ({}, "prompt"),
]


@pytest.mark.parametrize("body,param", BAD)
def test_bad_completion_requests_are_400(server, body, param):
    r = httpx.post(server["base"] + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"].split(".")[0] == param


def test_bad_chat_and_malformed_json_then_still_serving(server, client):
    base = server["base"]
    for body in ({"messages": []}, {"messages": [{"role": "robot", "content": "hi"}]},
                 {"messages": [{"role": "user"}]}, {"messages": [{"role": "user", "content": "hi"}], "top_k": -5}):
        r = httpx.post(base + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 400 and "error" in r.json(), r.text
    r = httpx.post(base + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=-3)
    assert client.completions.create(model="tiny", prompt="The", max_tokens=3).choices[0].text is not None


def test_eight_concurrent_clients_batched_and_correct(server):
    """8 clients at once through 4 slots: continuous batching, each answer equals its unbatched greedy text."""
    tok = server["tok"]
    prompts = [f"{w} the" for w in ["Once", "She", "The", "A", "Lily", "cat", "dog", "ball"]]
    lengths = [5, 9, 13, 7, 11, 6, 10, 8]
    expected = [expected_text(server, tok.encode(p, bos=True), n).text for p, n in zip(prompts, lengths)]

    def ask(i):
        c = openai.OpenAI(base_url=server["base"] + "/v1", api_key="none", timeout=60, max_retries=0)
        return c.completions.create(model="tiny", prompt=prompts[i], max_tokens=lengths[i], temperature=0)

    engine, busy = server["engine"], []
    decode = engine.decode

    def counting_decode(tokens, pos):  # how many slots each decode step serves
        busy.append(sum(r is not None for r in engine._slots))
        return decode(tokens, pos)

    engine.decode = counting_decode
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(ask, range(8)))
    finally:
        del engine.decode
    assert [r.choices[0].text for r in results] == expected
    assert max(busy) > 1  # requests really shared decode steps


def test_lm_eval_local_completions_scores_through_the_server(server):
    """lm-evaluation-harness's own `local-completions` backend (remote tokenizer) against a direct forward."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    tok, model = server["tok"], copy.deepcopy(server["reference"].model)
    lm = LocalCompletionsAPI(base_url=server["base"] + "/v1/completions", model="tiny", tokenizer_backend="remote",
                             max_length=128, max_retries=1, num_concurrent=2)
    pairs = [("She saw a", " big red ball"), ("The cat sat on", " the mat")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)])
    model.clear_cache()
    for (ctx, cont), (ll, greedy) in zip(pairs, got):
        ctx_ids = tok.encode(ctx)
        whole = tok.encode(ctx + cont)
        cont_ids = whole[len(ctx_ids):]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole])).double()[0], -1)
        n = len(whole)
        expected = sum(logp[i - 1, whole[i]].item() for i in range(n - len(cont_ids), n))
        assert ll == pytest.approx(expected, abs=1e-3)
        assert greedy == all(int(logp[i - 1].argmax()) == whole[i] for i in range(n - len(cont_ids), n))


def test_several_prompts_and_n_choices(server, client):
    tok = server["tok"]
    out = client.completions.create(model="tiny", prompt=["The cat", "Lily"], max_tokens=6, temperature=0, n=2)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for i, prompt in enumerate(["The cat", "Lily"]):
        ref = expected_text(server, tok.encode(prompt, bos=True), 6).text
        assert out.choices[2 * i].text == out.choices[2 * i + 1].text == ref  # greedy: both choices agree


def test_streamed_text_respects_stop_strings(client):
    full = client.completions.create(model="tiny", prompt="She", max_tokens=24, temperature=0).choices[0].text
    stop = full[6:9]
    ref = client.completions.create(model="tiny", prompt="She", max_tokens=24, temperature=0, stop=stop)
    stream = client.completions.create(model="tiny", prompt="She", max_tokens=24, temperature=0, stop=stop,
                                       stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == ref.choices[0].text == full[: full.find(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("route, body", [
    ("/v1/completions", {"prompt": "x", "max_tokens": 1}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    ("/tokenize", {"prompt": "x"}),
])
def test_unknown_model_is_404_model_not_found(server, route, body):
    """`"model": "nosuch"` was accepted and echoed back; OpenAI and vLLM answer 404 with code model_not_found.
    The served id (and the request without `model`) still work."""
    r = httpx.post(server["base"] + route, json={**body, "model": "nosuch"}, timeout=30)
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and err["param"] == "model" and err["type"] == "invalid_request_error"
    assert "nosuch" in err["message"]
    card = httpx.get(server["base"] + "/v1/models", timeout=30).json()["data"][0]
    for name in (card["id"], card["root"], None):
        ok = httpx.post(server["base"] + route, json={**body, **({"model": name} if name else {})}, timeout=30)
        assert ok.status_code == 200, ok.text


def test_logit_bias_is_added_to_the_logits(server):
    """OpenAI's logit_bias (was refused as an extra input): the bias is added to those ids' logits before the draw.
    Reference: a direct forward of the model; the greedy token is argmax(logits + bias) and its reported logprob
    is that of softmax(logits + bias)."""
    tok, model = server["tok"], copy.deepcopy(server["reference"].model)
    model.clear_cache()
    ids = tok.encode("Once upon a time", bos=True)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).double()[0, -1]
    ranked = logits.argsort(descending=True).tolist()
    bias = {ranked[0]: -100.0, ranked[5]: 3.0}  # the greedy token out, a lower one pushed up
    biased = logits.clone()
    for i, b in bias.items():
        biased[i] += b
    want = int(biased.argmax())
    assert want != ranked[0]
    r = httpx.post(server["base"] + "/v1/completions", timeout=30, json={
        "prompt": ids, "max_tokens": 1, "temperature": 0, "logprobs": 0,
        "logit_bias": {str(i): b for i, b in bias.items()}})
    assert r.status_code == 200, r.text
    got = r.json()["choices"][0]["logprobs"]["token_logprobs"][0]
    assert got == pytest.approx(torch.log_softmax(biased, -1)[want].item(), abs=1e-4)


@pytest.mark.parametrize("route, extra, param", [
    ("/v1/completions", {"logit_bias": {"abc": 1}}, "logit_bias"),
    ("/v1/completions", {"logit_bias": {"99999": 1}}, "logit_bias"),
    ("/v1/completions", {"logit_bias": {"5": 101}}, "logit_bias"),
    ("/v1/completions", {"best_of": 3}, "best_of"),
    ("/v1/completions", {"suffix": "end"}, "suffix"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/chat/completions", {"logit_bias": {"5": -101}}, "logit_bias"),
])
def test_unsupported_or_bad_openai_fields_are_400_naming_the_param(server, route, extra, param):
    body = {"prompt": "x"} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(server["base"] + route, json={**body, "max_tokens": 1, **extra}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"].split(".")[0] == param and err["message"].startswith(param), err
    if param != "logit_bias":
        assert "not supported" in err["message"]


def test_openai_fields_at_their_no_op_values_are_taken(server):
    """Clients that always send `logit_bias: {}`, `best_of: 1`, `suffix: null` or `response_format: text` work."""
    r = httpx.post(server["base"] + "/v1/completions", timeout=30, json={
        "prompt": "x", "max_tokens": 1, "logit_bias": {}, "best_of": 1, "suffix": None})
    assert r.status_code == 200, r.text
    r = httpx.post(server["base"] + "/v1/chat/completions", timeout=30, json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "logit_bias": {},
        "response_format": {"type": "text"}})
    assert r.status_code == 200, r.text
