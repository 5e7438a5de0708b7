"""The CPU decode layout (infer/layout.py) computes what the model's nn.Linear layers compute, keeps the weights
(names, values, sharing), and the engine with it still matches full-recompute greedy decoding."""

from __future__ import annotations

import copy

import pytest
import torch
from test_infer_engine import PROMPTS, recompute_greedy, tiny_model
from torch import nn

from llamaforge.infer import Engine, SamplingParams
from llamaforge.infer.layout import SplitKInt8Linear, SplitKLinear, decode_layout, is_column_major
from llamaforge.infer.quantize import WeightOnlyInt8Linear, quantize


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one thread


@pytest.mark.parametrize("splits", [1, 2, 3, 4])
@pytest.mark.parametrize("rows", [1, 3, 20])  # 20 rows (prefill) take the plain F.linear path
def test_split_k_linear_matches_linear(splits, rows):
    torch.manual_seed(0)
    lin = nn.Linear(48, 40, bias=True).double()
    ref = copy.deepcopy(lin)
    m = SplitKLinear.from_linear(lin, splits)
    assert m.weight is lin.weight and is_column_major(m.weight) and m.weight.shape == (40, 48)
    assert torch.equal(m.weight, ref.weight)
    x = torch.randn(2, rows, 48, dtype=torch.float64)
    torch.testing.assert_close(m(x), ref(x), rtol=0, atol=1e-12)


def test_split_k_falls_back_when_input_does_not_divide():
    lin = nn.Linear(10, 6, bias=False)
    assert SplitKLinear.from_linear(lin, 4).splits == 1
    x = torch.randn(1, 10)
    torch.testing.assert_close(SplitKLinear.from_linear(copy.deepcopy(lin), 4)(x), lin(x))


def test_decode_layout_keeps_weights_and_logits():
    model = tiny_model(torch.float32)
    model.output.weight = model.tok_embeddings.weight  # tied, as some checkpoints are: must stay tied
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.tensor([[5, 17, 3, 42, 7, 7, 8]])
    with torch.no_grad():
        ref = model(tokens)
        decode_layout(model, splits=2)
        got = model(tokens)
        got_step = torch.cat([model(tokens[:, : i + 1])[:, -1:] for i in range(tokens.shape[1])], 1)
    assert isinstance(model.layers[0].feed_forward.w2, SplitKLinear) and model.layers[0].feed_forward.w2.splits == 2
    assert model.output.weight is model.tok_embeddings.weight
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_step, ref, rtol=0, atol=1e-5)  # one row at a time: the split-K path


def test_engine_decode_logits_match_eager():
    model = tiny_model(torch.float32)
    eager = copy.deepcopy(model)
    engine = Engine(decode_layout(model, splits=2), max_batch=1, max_seq_len=32)
    prompt = PROMPTS[2]
    engine.prefill([prompt])
    pos = torch.tensor([len(prompt)])
    logits = engine.decode(torch.tensor([11]), pos)
    with torch.no_grad():
        ref = eager(torch.tensor([prompt + [11]]))[:, -1]
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_engine_with_split_k_layout_matches_recompute(dtype):
    model = tiny_model(dtype)
    refs = [recompute_greedy(model, p, 12) for p in PROMPTS]
    engine = Engine(decode_layout(model, splits=2), max_batch=2, max_seq_len=32, cpu_layout=True)
    out = engine.generate(PROMPTS, SamplingParams(max_new_tokens=12, stop_token_ids=()))
    assert [r.tokens for r in out] == refs


def test_engine_cpu_layout_flag():
    assert isinstance(Engine(tiny_model(), max_seq_len=16).model.output, SplitKLinear)  # CPU default: on
    assert type(Engine(tiny_model(), max_seq_len=16, cpu_layout=False).model.output) is nn.Linear


def test_int8_split_k_matches_int8():
    model = quantize(tiny_model(torch.float32), "int8")
    ref = copy.deepcopy(model)
    decode_layout(model, splits=2)
    wq = model.layers[0].attention.wq
    assert isinstance(wq, SplitKInt8Linear) and wq.weight.dtype == torch.int8 and is_column_major(wq.weight)
    assert isinstance(wq, WeightOnlyInt8Linear)
    tokens = torch.tensor([[5, 17, 3, 42]])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens[:, :1]), ref(tokens[:, :1]), rtol=0, atol=1e-5)
        torch.testing.assert_close(model(tokens), ref(tokens), rtol=0, atol=1e-5)
    refs = [recompute_greedy(ref, p, 8) for p in PROMPTS]
    out = Engine(model, max_batch=2, max_seq_len=32).generate(PROMPTS, SamplingParams(max_new_tokens=8, stop_token_ids=()))
    assert [r.tokens for r in out] == refs
