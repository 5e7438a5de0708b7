"""The server against fault classes that broke other servers (issue #13 faults 1, 4, 5, 9, 10), over loopback with
Meta's Llama-2 tokenizer and models that say chosen token ids (tests/infer_helpers.py)."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import shared_path
from infer_helpers import TableModel, bigram_model

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from llamaforge.infer import Engine  # noqa: E402
from llamaforge.infer.server import create_app  # noqa: E402

HELLO, A, PAD_ID = 15043, 263, 32010  # "▁Hello", "▁a", an id past the 32000-piece tokenizer
USER_TEXT = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"  # chat prompt = BOS + the text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(engine, **kw):
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(engine, model_name="m", **kw), host="127.0.0.1", port=port,
                                       log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    return srv, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def llama2():
    from llamaforge.tokenizer import load_tokenizer

    return load_tokenizer(shared_path("llama2-tokenizer/tokenizer.model"))


@pytest.fixture(scope="module")
def server(llama2):
    """A model with 32064 embedding rows (64 past the tokenizer) whose greedy continuations are: after "Hello",
    id 32010 first and " Hi 😀!" + EOS second (the padded id must be masked); after "a", " a" forever."""
    hi = llama2.encode("Hi 😀!") + [llama2.eos_id]
    transitions = {HELLO: [PAD_ID, hi[0]], **{a: [b] for a, b in zip(hi, hi[1:])}, A: [A]}
    model = bigram_model(llama2.vocab_size, transitions, rows=32064, max_seq_len=64)
    engine = Engine(model, llama2, max_batch=4, max_seq_len=64)
    srv, thread, base = start_server(engine, chat_template=USER_TEXT)
    yield {"base": base, "tok": llama2, "engine": engine}
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key="none", timeout=60, max_retries=0)


# -- fault 1: multi-byte characters split over byte tokens, streamed ----------------------------------------------


def test_fault_1_completion_stream_equals_text(client):
    full = client.completions.create(model="m", prompt="Hello", max_tokens=20, temperature=0)
    assert full.choices[0].text == " Hi 😀!"  # SentencePiece: decode(ids("Hello Hi 😀!")) after "Hello"
    stream = client.completions.create(model="m", prompt="Hello", max_tokens=20, temperature=0, stream=True)
    pieces = [c.choices[0].text for c in stream]
    assert "".join(pieces) == " Hi 😀!" and not any("\ufffd" in p for p in pieces)


def test_fault_1_chat_stream_equals_text(client):
    messages = [{"role": "user", "content": "Hello"}]
    full = client.chat.completions.create(model="m", messages=messages, temperature=0)
    assert full.choices[0].message.content == " Hi 😀!"
    stream = client.chat.completions.create(model="m", messages=messages, temperature=0, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == " Hi 😀!" and not any("\ufffd" in p for p in pieces)


def test_property_a_every_http_surface_streams_the_whole_text(llama2):
    """Random byte-fallback-heavy outputs (emoji, CJK, combining marks) with stop strings taken from inside them,
    through completions and chat, streamed and not, 4 requests in one batch: the streamed pieces join to the
    non-streamed text, which is SentencePiece's decode cut before the earliest stop; no piece has a U+FFFD."""
    from test_infer_detok import random_text

    from llamaforge.infer.detok import cut_at_stop

    rng = random.Random(5)
    table, cases = {}, []
    for k in range(8):  # case k: a prompt of BOS + 1 + 100 k "▁a" tokens; its script starts at that position
        prompt = [llama2.bos_id] + [A] * (1 + 100 * k)
        ids = llama2.encode(random_text(rng, rng.randint(3, 30)))[:90]
        for i, t in enumerate(ids + [llama2.eos_id]):
            table[len(prompt) - 1 + i] = t
        full = llama2.sp.decode(prompt + ids)[len(llama2.sp.decode(prompt)):]
        stop = [full[len(full) // 2 :][:2]] if k % 2 and len(full) > 3 else []
        cases.append((prompt, full, stop))
    engine = Engine(TableModel(llama2.vocab_size, table, llama2.eos_id, max_seq_len=1024), llama2, max_batch=4)
    srv, thread, base = start_server(engine, chat_template=USER_TEXT)
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", timeout=120, max_retries=0)

        def check(case):
            prompt, full, stop = case
            expected = cut_at_stop(full, stop)
            kw = dict(model="m", temperature=0, max_tokens=200, stop=stop or None)
            text = client.completions.create(prompt=prompt, **kw).choices[0].text
            pieces = [c.choices[0].text for c in client.completions.create(prompt=prompt, stream=True, **kw)]
            messages = [{"role": "user", "content": " ".join(["a"] * (len(prompt) - 1))}]
            chat = client.chat.completions.create(messages=messages, **kw).choices[0].message.content
            chat_pieces = [c.choices[0].delta.content or "" for c in
                           client.chat.completions.create(messages=messages, stream=True, **kw) if c.choices]
            assert text == "".join(pieces) == chat == "".join(chat_pieces) == expected
            assert not any("\ufffd" in p for p in pieces + chat_pieces)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(check, cases))
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


# -- fault 4: a model vocabulary padded past the tokenizer ---------------------------------------------------------


def test_fault_4_padded_ids_are_never_sampled(server, client):
    assert server["engine"].extra_rows == 64
    out = client.completions.create(model="m", prompt="Hello", max_tokens=2, temperature=0, logprobs=5)
    assert out.choices[0].text == " Hi "  # not id 32010, though its logit is the highest
    assert all(len(top) <= 5 for top in out.choices[0].logprobs.top_logprobs)
    for seed in range(20):  # sampling never draws them either (temperature 2 flattens the distribution)
        r = client.completions.create(model="m", prompt="Hello", max_tokens=1, temperature=2.0, seed=seed)
        assert r.choices[0].finish_reason in ("length", "stop")


def test_fault_4_generate_command_says_so_and_works(tmp_path, llama2, capsys):
    from llamaforge.cli import main
    from llamaforge.formats import save_model

    hi = llama2.encode("Hi 😀!") + [llama2.eos_id]
    transitions = {HELLO: [PAD_ID, hi[0]], **{a: [b] for a, b in zip(hi, hi[1:])}}
    save_model(bigram_model(llama2.vocab_size, transitions, rows=32064), tmp_path / "padded")
    tok = str(shared_path("llama2-tokenizer/tokenizer.model"))
    assert main(["generate", str(tmp_path / "padded"), "--tokenizer", tok, "--prompt", "Hello"]) == 0
    out = capsys.readouterr()
    assert out.out == "Hello Hi 😀!\n"
    notes = [line for line in out.err.splitlines() if "64 embedding rows more than the tokenizer" in line]
    assert len(notes) == 1


# -- fault 5: echo + logprobs in OpenAI's form ---------------------------------------------------------------------


def check_openai_logprobs(text: str, lp) -> None:
    """OpenAI's documented semantics: each token is the text at its offset; the tokens join to the text."""
    assert "".join(lp["tokens"]) == text
    for token, offset in zip(lp["tokens"], lp["text_offset"]):
        assert text[offset : offset + len(token)] == token
    assert lp["text_offset"] == sorted(lp["text_offset"]) and all(0 <= o <= len(text) for o in lp["text_offset"])
    for top in lp["top_logprobs"]:
        assert top is None or all(isinstance(k, str) for k in top)


def completion(base, **body):
    r = httpx.post(base + "/v1/completions", json={"temperature": 0, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def test_fault_5_echo_tokens_join_and_offsets_slice(server):
    text = "Hello world\nNew line"
    choice = completion(server["base"], prompt=text, echo=True, logprobs=2, max_tokens=1)
    lp = choice["logprobs"]
    assert choice["text"].startswith(text)
    check_openai_logprobs(choice["text"], lp)
    # BOS is not part of the text; SentencePiece's dummy-prefix space and the newline byte token are text as
    # sentencepiece decodes them ("Hello", " world", "\n", "New", " line")
    assert lp["tokens"][:6] == ["", "Hello", " world", "\n", "New", " line"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None


def test_fault_5_byte_tokens_completing_a_character(server, llama2):
    """"😀" is four byte tokens: the first three have "" and the fourth the whole character (OpenAI's chat
    `bytes` field carries each token's raw bytes)."""
    ids = llama2.encode("Hi 😀!", bos=True)
    lp = completion(server["base"], prompt=ids, echo=True, logprobs=1, max_tokens=1)["logprobs"]
    assert lp["tokens"][:8] == ["", "Hi", " ", "", "", "", "😀", "!"]


def test_fault_5_chat_logprobs_carry_bytes(client):
    out = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hello"}], temperature=0,
                                         logprobs=True, top_logprobs=2)
    content = out.choices[0].logprobs.content
    assert "".join(c.token for c in content) == out.choices[0].message.content == " Hi 😀!"
    assert b"".join(bytes(c.bytes) for c in content).decode() == " Hi 😀!"
    assert [c.token for c in content] == [" Hi", " ", "", "", "", "😀", "!"]


def test_property_c_echo_offsets_for_random_token_sequences(server, llama2):
    """Random token-id prompts (byte tokens, pieces, BOS/EOS/UNK in between): the slice rule always holds."""
    rng = random.Random(0)
    for _ in range(40):
        ids = [llama2.bos_id] + [rng.choice([rng.randrange(3, 259), rng.randrange(259, 32000), 0, 2, 29871])
                                 for _ in range(rng.randint(1, 30))]
        choice = completion(server["base"], prompt=ids, echo=True, logprobs=3, max_tokens=rng.choice([0, 1, 3]))
        check_openai_logprobs(choice["text"], choice["logprobs"])


# -- fault 9: default lengths --------------------------------------------------------------------------------------


def test_fault_9_chat_default_max_tokens_is_the_rest_of_the_context(client):
    out = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}], temperature=0)
    assert out.usage.prompt_tokens == 2  # BOS, "▁a"
    assert out.usage.completion_tokens == 64 - 2 and out.choices[0].finish_reason == "length"


# -- fault 10: malformed requests are 400 with OpenAI's error object, never 500 -------------------------------------


def assert_openai_400(r: httpx.Response) -> None:
    assert r.status_code == 400, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"


MALFORMED = [
    ("/v1/completions", b'{"prompt": "x \\ud83e"}'),  # a lone surrogate
    ("/v1/completions", b'{"prompt": ["ok", "\\udc00"]}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud83e"}]}'),
    ("/v1/completions", b'{"prompt": "\xff\xfe"}'),  # invalid UTF-8
    ("/v1/completions", b'\xef\xbb\xbf{"prompt": "x"'),
    ("/v1/completions", b'[1, 2]'),
    ("/v1/completions", b'"prompt"'),
    ("/v1/completions", b'null'),
    ("/v1/completions", b''),
    ("/v1/completions", b'{"prompt": [1, "a"]}'),
    ("/v1/completions", b'{"prompt": [[1, 2], [3, "x"]]}'),
    ("/v1/completions", b'{"prompt": [-1]}'),
    ("/v1/completions", b'{"prompt": [32010]}'),  # a padded row: no token of the tokenizer
    ("/v1/completions", b'{"prompt": [1180591620717411303424]}'),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 1e400}'),
    ("/v1/completions", b'{"prompt": "x", "temperature": NaN}'),
    ("/v1/completions", b'{"prompt": "x", "stop": 5}'),
    ("/v1/completions", b'{"prompt": "x", "stop": [null]}'),
    ("/v1/completions", b'{"prompt": "x", "n": 1000}'),
    ("/v1/completions", b'{"prompt": "x", "stream_options": 1}'),
    ("/v1/completions", b'{"prompt": "x", "seed": "1"}'),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 63}'),  # prompt + max_tokens past the context
    ("/v1/completions", b'{"prompt": "' + b"word " * 400 + b'"}'),  # cannot fit the context
    ("/v1/chat/completions", b'{"messages": "hi"}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": ["a"]}]}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 99}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "' + b"word " * 400 + b'"}]}'),
    ("/tokenize", b'{"prompt": 5}'),
    ("/tokenize", b'{"prompt": "\\ud800"}'),
    ("/tokenize", b'{nope'),
    ("/detokenize", b'{"tokens": [32010]}'),  # past the tokenizer
    ("/detokenize", b'{"tokens": [-5]}'),
    ("/detokenize", b'{"tokens": "1 2"}'),
]


@pytest.mark.parametrize("path,body", MALFORMED)
def test_fault_10_malformed_requests_are_400(server, path, body):
    r = httpx.post(server["base"] + path, content=body, headers={"content-type": "application/json"}, timeout=30)
    assert_openai_400(r)


def test_fault_10_server_still_serves_after_malformed(client):
    assert client.completions.create(model="m", prompt="Hello", max_tokens=2, temperature=0).choices[0].text


# -- fault 10: a client cannot stall the server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_slot_server(llama2):
    """1 slot, 4096 positions, a decode step slowed to >= 3 ms, so 3000 tokens take >= 9 s."""
    model = bigram_model(llama2.vocab_size, {A: [A], HELLO: [A]}, max_seq_len=4096)
    engine = Engine(model, llama2, max_batch=1, max_seq_len=4096)
    decode = engine.decode

    def slow_decode(tokens, pos):
        time.sleep(0.003)
        return decode(tokens, pos)

    engine.decode = slow_decode
    srv, thread, base = start_server(engine, chat_template=USER_TEXT)
    yield base
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize("stream", [False, True], ids=["non-streamed", "streamed"])
def test_fault_10_a_gone_client_frees_its_slot(one_slot_server, stream):
    body = {"prompt": "a", "max_tokens": 3000, "temperature": 0, "stream": stream}
    if stream:  # read a few events, then hang up
        with httpx.stream("POST", one_slot_server + "/v1/completions", json=body, timeout=30) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i == 5:
                    break
    else:  # give up waiting after 1 s, as a client with a timeout does
        with pytest.raises(httpx.TimeoutException):
            httpx.post(one_slot_server + "/v1/completions", json=body, timeout=1.0)
    start = time.perf_counter()
    r = httpx.post(one_slot_server + "/v1/completions", json={"prompt": "a", "max_tokens": 3, "temperature": 0},
                   timeout=60)
    assert r.status_code == 200
    assert time.perf_counter() - start < 4.0  # not the ~9 s the abandoned request still had to go


def test_fault_10_a_huge_prompt_does_not_stall_the_event_loop(one_slot_server):
    """A 5 MB prompt is refused without tokenizing it all; meanwhile /health answers at once."""
    result = {}

    def big():
        start = time.perf_counter()
        r = httpx.post(one_slot_server + "/v1/completions", json={"prompt": "Hello world. " * 400_000}, timeout=60)
        result["r"], result["s"] = r, time.perf_counter() - start

    thread = threading.Thread(target=big)
    thread.start()
    worst = 0.0
    while thread.is_alive():
        t = time.perf_counter()
        assert httpx.get(one_slot_server + "/health", timeout=10).status_code == 200
        worst = max(worst, time.perf_counter() - t)
    thread.join()
    assert_openai_400(result["r"])
    assert result["r"].json()["error"]["code"] == "context_length_exceeded"
    assert worst < 1.0 and result["s"] < 5.0
    # the same for a chat dialog
    r = httpx.post(one_slot_server + "/v1/chat/completions", timeout=60,
                   json={"messages": [{"role": "user", "content": "Hello world. " * 400_000}]})
    assert_openai_400(r)
    assert r.json()["error"]["code"] == "context_length_exceeded"
    # a long prompt that does need tokenizing (under the byte bound) is tokenized off the event loop
    r = httpx.post(one_slot_server + "/v1/completions", json={"prompt": "é" * 8000}, timeout=60)
    assert_openai_400(r)
    assert json.loads(r.text)["error"]["param"] == "prompt"
