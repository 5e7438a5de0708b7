"""The model itself: the paper's sizes, SwiGLU widths, RMSNorm in fp32, causality, GQA, meta-device build."""

from __future__ import annotations

import pytest
import torch

from llamaforge.model import ModelArgs, RMSNorm, Transformer
from llamaforge.presets import PRESETS, count_params, get_preset

PAPER = {  # preset: (exact parameter count from Meta's checkpoints, FFN width)
    "llama-7b": (6_738_415_616, 11008),
    "llama-13b": (13_015_864_320, 13824),
    "llama-33b": (32_528_943_616, 17920),
    "llama-65b": (65_285_660_672, 22016),
}


@pytest.mark.parametrize("name", PAPER)
def test_paper_sizes(name):
    total, ffn = PAPER[name]
    args = get_preset(name)
    assert args.ffn_hidden_dim == ffn
    assert count_params(args)[0] == total


def test_llama2_70b_shape():
    args = PRESETS["llama2-70b"]
    assert args.ffn_hidden_dim == 28672 and args.n_kv_heads == 8
    assert count_params(args)[0] == 68_976_648_192


def test_small_presets_span_cpu_sizes():
    counts = [count_params(a)[0] for n, a in PRESETS.items() if not n.startswith("llama")]
    assert min(counts) < 2e6 and max(counts) < 1.5e9


def test_rmsnorm_computes_in_fp32():
    norm = RMSNorm(8, eps=1e-6)
    x = (torch.randn(4, 8) * 300).to(torch.bfloat16)
    ref = (x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    assert torch.equal(norm(x), ref)


def tiny(**kw) -> Transformer:
    args = ModelArgs(**{**dict(dim=32, n_layers=2, n_heads=4, vocab_size=50, multiple_of=16, max_seq_len=32), **kw})
    return Transformer(args).eval()


def test_causal_future_tokens_do_not_change_the_past():
    model = tiny()
    a = torch.randint(0, 50, (1, 12))
    b = a.clone()
    b[0, 8:] = torch.randint(0, 50, (4,))
    with torch.no_grad():
        assert torch.allclose(model(a)[0, :8], model(b)[0, :8], atol=1e-6)


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = tiny(n_kv_heads=2)
    mha = tiny()
    state = gqa.state_dict()
    hd = gqa.args.head_dim
    for i in range(2):
        for w in ("wk", "wv"):
            k = state[f"layers.{i}.attention.{w}.weight"].view(2, hd, -1)
            state[f"layers.{i}.attention.{w}.weight"] = k.repeat_interleave(2, dim=0).reshape(-1, 32)
    mha.load_state_dict(state)
    tokens = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        assert torch.allclose(gqa(tokens), mha(tokens), atol=1e-5)


def test_meta_device_build_allocates_nothing():
    with torch.device("meta"):
        model = Transformer(get_preset("llama-65b"))
    assert model.output.weight.is_meta and model.num_params() == PAPER["llama-65b"][0]


def test_init_follows_its_documentation():
    model = Transformer(ModelArgs(dim=256, n_layers=8, n_heads=4, vocab_size=512, multiple_of=32))
    assert abs(model.layers[0].attention.wq.weight.std().item() - 0.02) < 2e-3
    assert abs(model.layers[0].attention.wo.weight.std().item() - 0.02 / 4) < 5e-4
    assert torch.equal(model.norm.weight, torch.ones(256))


def test_bad_args_are_rejected():
    with pytest.raises(ValueError):
        ModelArgs(dim=30, n_heads=4)
    with pytest.raises(ValueError):
        ModelArgs(dim=32, n_heads=4, n_kv_heads=3)
