"""Weight-only quantization: int8 keeps stories260K's greedy text and perplexity; int4 is close on CPU."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import shared_path
from torch import nn

from llamaforge.formats import load_model
from llamaforge.infer import Engine, SamplingParams
from llamaforge.infer.quantize import WeightOnlyInt4Linear, WeightOnlyInt8Linear, quantize
from llamaforge.tokenizer import load_tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one thread


# Written for this test (not from TinyStories' training data), in the simple style the model knows.
HELD_OUT = (
    "One day, a little boy named Tom went to the park with his mom. He saw a big tree and a small dog. "
    "The dog was sad because it lost its ball. Tom wanted to help, so he looked under the tree and found the "
    "red ball. The dog was very happy and they played together all day. At the end of the day, Tom said "
    "goodbye to the dog and went home with his mom. He was happy that he helped his new friend."
)


@pytest.fixture(scope="module")
def stories():
    model = load_model(shared_path("stories260K/stories260K.bin"))
    tok = load_tokenizer(shared_path("stories260K/tok512.bin"))
    return model, tok


def perplexity(model, ids) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0, :-1]
    return math.exp(torch.nn.functional.cross_entropy(logits.double(), torch.tensor(ids[1:])).item())


def test_int8_linear_is_close_and_smaller():
    lin = nn.Linear(64, 48, bias=False)
    q = WeightOnlyInt8Linear.from_linear(lin)
    x = torch.randn(5, 64)
    # per-channel rounding error: at most half a step (scale / 2) per weight
    bound = (q.scales[None, :] / 2 * x.abs().sum(-1, keepdim=True)).detach()
    assert ((q(x) - lin(x)).abs() <= bound + 1e-6).all()
    assert q.weight.dtype == torch.int8 and q.weight.element_size() * 4 == lin.weight.element_size()


def test_int8_stories260k_greedy_and_perplexity(stories):
    model, tok = stories
    q = quantize(copy.deepcopy(model), "int8")
    assert isinstance(q.layers[0].attention.wq, WeightOnlyInt8Linear) and isinstance(q.output, WeightOnlyInt8Linear)
    params = SamplingParams(max_new_tokens=60)
    (ref,) = Engine(model, tok, max_seq_len=128).generate([[tok.bos_id]], params)
    (got,) = Engine(q, tok, max_seq_len=128).generate([[tok.bos_id]], params)
    model.clear_cache(), q.clear_cache()
    assert ref.text.startswith("Once upon a time")
    assert len(ref.tokens) >= 40 and got.tokens[:40] == ref.tokens[:40]
    ids = tok.encode(HELD_OUT, bos=True)
    p32, p8 = perplexity(model, ids), perplexity(q, ids)
    assert abs(p8 / p32 - 1) < 0.01, (p32, p8)


@pytest.mark.slow
def test_int8_compiled_decode_keeps_stories260k_text(stories):
    """The compiled CPU decode step (inductor's weight-only int8 GEMMs, frozen weights) keeps the greedy text."""
    model, tok = stories
    params = SamplingParams(max_new_tokens=60)
    (ref,) = Engine(copy.deepcopy(model), tok, max_seq_len=128).generate([[tok.bos_id]], params)
    engine = Engine(quantize(copy.deepcopy(model), "int8"), tok, max_seq_len=128, compile=True)
    (got,) = engine.generate([[tok.bos_id]], params)
    assert engine.compiled  # it did compile (no fallback to eager)
    assert len(ref.tokens) >= 40 and got.tokens[:40] == ref.tokens[:40]


@pytest.mark.skipif(not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"), reason="no CPU int4 kernel")
def test_int4_cpu_linear_matches_its_dequantized_weights():
    from llamaforge.infer.quantize import _int4_params

    lin = nn.Linear(128, 32, bias=False)
    q4 = WeightOnlyInt4Linear.from_linear(lin, group_size=32)
    codes, scales, zeros = _int4_params(lin.weight, 32)
    deq = ((codes.float().reshape(32, -1, 32) - 8) * scales[..., None] + zeros[..., None]).reshape(32, 128)
    x = torch.randn(3, 128)
    torch.testing.assert_close(q4(x), x @ deq.T, atol=1e-4, rtol=1e-4)
    assert (deq - lin.weight).abs().max() <= scales.max() / 2 + 1e-6  # round to nearest of 16 levels


def test_int4_stories260k_perplexity_close(stories):
    model, tok = stories
    q = quantize(copy.deepcopy(model), "int4", group_size=32)
    # dim 64 fits the kernel; the FFN's 172 does not and stays fp32
    assert isinstance(q.layers[0].attention.wq, WeightOnlyInt4Linear)
    assert isinstance(q.layers[0].feed_forward.w1, nn.Linear)
    ids = tok.encode(HELD_OUT, bos=True)
    p32, p4 = perplexity(model, ids), perplexity(q, ids)
    assert abs(p4 / p32 - 1) < 0.1, (p32, p4)  # 4 bits on a 260K-parameter model: a looser bound
