"""Streaming text: token ids -> bytes -> complete UTF-8, on every surface (issue #13 fault 1).

The reference for the text of a sequence is SentencePiece's own decode of Meta's Llama-2 tokenizer."""

from __future__ import annotations

import io
import random
import sys

import pytest
from conftest import shared_path
from infer_helpers import ScriptedModel, bigram_model

from llamaforge.infer import Engine, Request, SamplingParams
from llamaforge.infer.detok import Detokenizer, cut_at_stop, decode_text, token_strings

pytestmark = pytest.mark.usefixtures("one_thread")

HELLO = 15043  # "▁Hello" in Llama 2's vocabulary
COLON = 29901  # ":"


@pytest.fixture(scope="module")
def llama2():
    from llamaforge.tokenizer import load_tokenizer

    return load_tokenizer(shared_path("llama2-tokenizer/tokenizer.model"))


def test_hi_emoji_ids_are_byte_fallback(llama2):
    ids = llama2.encode("Hi 😀!")
    assert [llama2.id_to_piece(i) for i in ids] == ["▁Hi", "▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "!"]


def _stream(tok, prompt, ids, stop=()):
    d = Detokenizer(tok, prompt, stop)
    pieces = [d.add(t) for t in ids]
    pieces.append(d.finish())
    return pieces, d.text


def test_detokenizer_fault_1(llama2):
    """The ids of "Hi 😀!" then EOS after "Hello": the stream is " Hi 😀!" exactly, as SentencePiece decodes."""
    prompt = llama2.encode("Hello", bos=True)
    ids = llama2.encode("Hi 😀!") + [llama2.eos_id]
    expected = llama2.sp.decode(prompt + ids)[len(llama2.sp.decode(prompt)):]
    assert expected == " Hi 😀!"
    pieces, text = _stream(llama2, prompt, ids)
    assert "".join(pieces) == text == expected
    assert all("\ufffd" not in p for p in pieces)


def test_engine_streams_fault_1(llama2):
    """Through the engine (the server's and the commands' path) with a model that says exactly those ids."""
    prompt = llama2.encode("Hello", bos=True)
    chain = [HELLO] + llama2.encode("Hi 😀!") + [llama2.eos_id]
    model = bigram_model(llama2.vocab_size, {a: [b] for a, b in zip(chain, chain[1:])})
    engine = Engine(model, llama2, max_batch=1, max_seq_len=64)
    pieces = []
    (r,) = [engine.submit(Request(prompt, SamplingParams(), on_update=lambda _, p: pieces.append(p)))]
    while engine.busy:
        engine.step()
    assert r.text == "".join(pieces) == " Hi 😀!" and r.finish_reason == "stop"


def test_llamaforge_generate_streams_fault_1(llama2):
    import llamaforge

    chain = [HELLO] + llama2.encode("Hi 😀!") + [llama2.eos_id]
    model = bigram_model(llama2.vocab_size, {a: [b] for a, b in zip(chain, chain[1:])})
    pieces = []
    text = llamaforge.generate(model, llama2, "Hello", 20, on_text=pieces.append)
    assert text == "".join(pieces) == " Hi 😀!"


def _saved_bigram(tmp_path, llama2, start):
    from llamaforge.formats import save_model

    chain = [start] + llama2.encode("Hi 😀!") + [llama2.eos_id]
    path = tmp_path / "bigram"
    save_model(bigram_model(llama2.vocab_size, {a: [b] for a, b in zip(chain, chain[1:])}), path)
    return path


def test_generate_and_chat_commands_stream_fault_1(tmp_path, llama2, capsys, monkeypatch):
    from llamaforge.cli import main

    tok = str(shared_path("llama2-tokenizer/tokenizer.model"))
    path = _saved_bigram(tmp_path, llama2, HELLO)
    assert main(["generate", str(path), "--tokenizer", tok, "--prompt", "Hello"]) == 0
    assert capsys.readouterr().out == "Hello Hi 😀!\n"
    # chat: the plain template's prompt ends with "Assistant:", so the model's chain starts after ":"
    path = _saved_bigram(tmp_path, llama2, COLON)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Tell me\n"))
    assert main(["chat", str(path), "--tokenizer", tok, "--temperature", "0"]) == 0
    assert capsys.readouterr().out == " Hi 😀!\n"


# -- property tests: random byte-fallback-heavy outputs ------------------------------------------------------------

ALPHABETS = [
    "abcdefghij klmnop",  # ASCII in the vocabulary
    "😀🦙🚀👩‍👩‍👧🏳️‍🌈",  # emoji: 4-byte characters, ZWJ sequences, variation selectors (byte fallback)
    "漢字仮名交じり文鑫龘",  # CJK, some outside the vocabulary
    "e\u0301a\u0308o\u0302\u0327\u20dd",  # combining marks
    "\n\t ",
]


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(rng.choice(ALPHABETS)) for _ in range(n))


def test_property_stream_joins_to_sentencepiece_text(llama2):
    """300 random outputs, with and without stop strings taken from inside them: the pieces join to the
    non-streamed text, which is SentencePiece's decode cut before the earliest stop, and no piece holds a U+FFFD."""
    rng = random.Random(0)
    byte_tokens = 0
    for case in range(300):
        text = random_text(rng, rng.randint(1, 40))
        ids = llama2.encode(text)
        byte_tokens += sum(llama2.sp.is_byte(i) for i in ids)
        prompt = [llama2.bos_id] if case % 2 else llama2.encode("Hello", bos=True)
        full = llama2.sp.decode(prompt + ids)[len(llama2.sp.decode(prompt)):]
        stops = []
        if case % 3 and len(full) > 2:  # a stop string from inside the text
            i = rng.randrange(len(full) - 1)
            stops = [full[i : i + rng.randint(1, 3)], "never there"]
        pieces, streamed = _stream(llama2, prompt, ids, stops)
        assert "".join(pieces) == streamed == cut_at_stop(full, stops), (text, stops)
        assert all("\ufffd" not in p for p in pieces)
    assert byte_tokens > 1000  # the cases really exercised byte fallback


def test_property_invalid_bytes_same_streamed_or_not(llama2):
    """Random byte tokens (mostly invalid UTF-8): streamed or not, the same text, U+FFFD by the maximal-subpart
    rule (Python's errors='replace' on the concatenated bytes)."""
    rng = random.Random(1)
    for _ in range(300):
        ids = [rng.choice([3 + rng.randrange(256), HELLO, 29871]) for _ in range(rng.randint(1, 12))]
        pieces, text = _stream(llama2, [llama2.bos_id, HELLO], ids)
        raw = b"".join(b" Hello" if i == HELLO else b" " if i == 29871 else bytes([i - 3]) for i in ids)
        assert "".join(pieces) == text == raw.decode("utf-8", "replace")
        assert text == decode_text(llama2, [llama2.bos_id, HELLO] + ids)[len("Hello"):]
        assert "".join(token_strings(llama2, ids, at_start=False)) == text


def test_ids_past_the_tokenizer_decode_to_nothing(llama2):
    assert decode_text(llama2, [llama2.bos_id, HELLO, 32010, HELLO]) == "Hello Hello"


@pytest.mark.parametrize("max_batch", [1, 3])
def test_property_engine_streams_join_to_text(llama2, max_batch):
    """Through the engine (several requests sharing decode steps): on_update pieces join to Request.text, which
    equals SentencePiece's decode cut at the stop string."""
    rng = random.Random(2 + max_batch)
    for _ in range(4):
        cases = []
        for _ in range(max_batch):
            text = random_text(rng, rng.randint(3, 25))
            ids = llama2.encode(text)
            full = llama2.sp.decode(ids)
            stop = [full[len(full) // 2 :][:2]] if rng.random() < 0.5 and len(full) > 3 else []
            cases.append((ids, full, stop))
        # one scripted model per request would need one engine each: share one script length instead
        for ids, full, stop in cases:
            model = ScriptedModel(llama2.vocab_size, ids + [llama2.eos_id], prompt_len=1)
            engine = Engine(model, llama2, max_batch=max_batch, max_seq_len=128)
            pieces = {k: [] for k in range(max_batch)}
            reqs = [engine.submit(Request([llama2.bos_id], SamplingParams(stop=stop),
                                          on_update=lambda r, p, k=k: pieces[k].append(p))) for k in range(max_batch)]
            while engine.busy:
                engine.step()
            for k, r in enumerate(reqs):
                assert "".join(pieces[k]) == r.text == cut_at_stop(full, stop)
                assert all("\ufffd" not in p for p in pieces[k])
