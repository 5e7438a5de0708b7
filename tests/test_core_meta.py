"""Meta checkpoints (params.json + consolidated.NN.pth): resharding, fairscale split dims, RoPE layout, bad input."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from llamaforge.errors import UserError
from llamaforge.formats import detect_format, load_model, save_model
from llamaforge.formats.meta import params_from_args
from llamaforge.model import ModelArgs, Transformer

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=96, multiple_of=32, max_seq_len=64,
                 norm_eps=1e-5)


def random_model(args=ARGS) -> Transformer:
    model = Transformer(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.15 + ("norm" in name))
    return model.eval()


def assert_same_tensors(a: Transformer, b: Transformer):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def meta_reference_logits(state: dict, params: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Meta's LLaMA forward, re-written here independently in float64: RoPE as a complex product on
    interleaved pairs (`view_as_complex` of [..., head_dim/2, 2]), attention with an explicit causal mask."""
    w = {k: v.double() for k, v in state.items()}
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv = params.get("n_kv_heads", n_heads)
    hd, eps, theta = dim // n_heads, params["norm_eps"], params.get("rope_theta", 10000.0)
    bsz, seqlen = tokens.shape
    freqs = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    freqs_cis = torch.polar(torch.ones(seqlen, hd // 2, dtype=torch.float64),
                            torch.outer(torch.arange(seqlen, dtype=torch.float64), freqs))

    def norm(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

    def rope(x):
        xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * freqs_cis[None, :, None, :]).flatten(3)

    h = w["tok_embeddings.weight"][tokens]
    mask = torch.full((seqlen, seqlen), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        x = norm(h, w[p + "attention_norm.weight"])
        q = rope((x @ w[p + "attention.wq.weight"].T).view(bsz, seqlen, n_heads, hd))
        k = rope((x @ w[p + "attention.wk.weight"].T).view(bsz, seqlen, n_kv, hd))
        v = (x @ w[p + "attention.wv.weight"].T).view(bsz, seqlen, n_kv, hd)
        k, v = k.repeat_interleave(n_heads // n_kv, dim=2), v.repeat_interleave(n_heads // n_kv, dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        scores = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(hd) + mask, dim=-1)
        out = (scores @ v).transpose(1, 2).reshape(bsz, seqlen, dim)
        h = h + out @ w[p + "attention.wo.weight"].T
        x = norm(h, w[p + "ffn_norm.weight"])
        ff = torch.nn.functional.silu(x @ w[p + "feed_forward.w1.weight"].T) * (x @ w[p + "feed_forward.w3.weight"].T)
        h = h + ff @ w[p + "feed_forward.w2.weight"].T
    return norm(h, w["norm.weight"]) @ w["output.weight"].T


def test_reshard_1_to_2_and_4_to_back(tmp_path):
    model = random_model()
    tokens = torch.randint(0, ARGS.vocab_size, (2, 13))
    with torch.no_grad():
        ref = model(tokens)
    save_model(model, tmp_path / "mp1", format="meta")
    assert detect_format(tmp_path / "mp1") == "meta"
    save_model(load_model(tmp_path / "mp1"), tmp_path / "mp2", format="meta", shards=2)
    save_model(model, tmp_path / "mp4", format="meta", shards=4)
    save_model(load_model(tmp_path / "mp4"), tmp_path / "back", format="meta", shards=1)
    assert sorted(os.listdir(tmp_path / "mp2")) == ["consolidated.00.pth", "consolidated.01.pth", "params.json"]
    for name in ("mp1", "mp2", "mp4", "back"):
        loaded = load_model(tmp_path / name)
        assert_same_tensors(model, loaded)
        with torch.no_grad():
            assert torch.equal(loaded(tokens), ref), name
    one = torch.load(tmp_path / "mp1/consolidated.00.pth", weights_only=True)
    back = torch.load(tmp_path / "back/consolidated.00.pth", weights_only=True)
    assert one.keys() == back.keys() and all(torch.equal(one[k], back[k]) for k in one)


def test_shards_follow_fairscale_dims(tmp_path):
    save_model(random_model(), tmp_path / "mp2", format="meta", shards=2)
    s0 = torch.load(tmp_path / "mp2/consolidated.00.pth", weights_only=True)
    hd = ARGS.head_dim
    assert s0["layers.0.attention.wq.weight"].shape == (ARGS.dim // 2, ARGS.dim)  # column-parallel: heads split
    assert s0["layers.0.attention.wk.weight"].shape == (ARGS.n_kv_heads // 2 * hd, ARGS.dim)
    assert s0["layers.0.attention.wo.weight"].shape == (ARGS.dim, ARGS.dim // 2)  # row-parallel
    assert s0["layers.0.feed_forward.w2.weight"].shape == (ARGS.dim, ARGS.ffn_hidden_dim // 2)
    assert s0["tok_embeddings.weight"].shape == (ARGS.vocab_size, ARGS.dim // 2)  # ParallelEmbedding splits dim
    assert s0["output.weight"].shape == (ARGS.vocab_size // 2, ARGS.dim)
    assert s0["norm.weight"].shape == (ARGS.dim,)  # replicated


def test_layout_matches_metas_complex_rope(tmp_path):
    """Our model on a Meta checkpoint equals an independent float64 re-computation of Meta's forward,
    fed with the shards merged by hand."""
    model = random_model()
    save_model(model, tmp_path / "mp2", format="meta", shards=2)
    params = json.loads((tmp_path / "mp2/params.json").read_text())
    shards = [torch.load(tmp_path / f"mp2/consolidated.0{i}.pth", weights_only=True) for i in range(2)]
    dims = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}
    state = {}
    for k in shards[0]:
        dim = dims.get(k.split(".")[-2])
        state[k] = shards[0][k] if dim is None else torch.cat([s[k] for s in shards], dim)
    tokens = torch.randint(0, ARGS.vocab_size, (2, 11))
    ref = meta_reference_logits(state, params, tokens)
    ours = load_model(tmp_path / "mp2")
    with torch.no_grad():
        assert (ours(tokens) - ref).abs().max() < 1e-5  # fp32 against fp64
    # Negative control: swapping the pair layout of wq (HF's halves) is visible to the reference.
    from llamaforge.formats.hf import meta_to_hf_rows

    bad = dict(state)
    bad["layers.0.attention.wq.weight"] = meta_to_hf_rows(state["layers.0.attention.wq.weight"], ARGS.n_heads)
    assert (meta_reference_logits(bad, params, tokens) - ref).abs().max() > 1e-3


@pytest.mark.parametrize("hidden", [40, 200, 171])
def test_params_json_reproduces_explicit_ffn_width(hidden):
    args = ModelArgs(dim=64, n_layers=1, n_heads=4, vocab_size=32, hidden_dim=hidden)
    params = params_from_args(args)
    assert "hidden_dim" not in params
    meta_args = ModelArgs(**params)  # Meta's rule, as Meta's ModelArgs applies it
    assert meta_args.ffn_hidden_dim == hidden


def test_llama1_params_with_vocab_minus_one(tmp_path):
    model = random_model(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=50, multiple_of=16))
    save_model(model, tmp_path / "m", format="meta")
    params = json.loads((tmp_path / "m/params.json").read_text())
    params["vocab_size"] = -1  # as in LLaMA-1's released params.json
    (tmp_path / "m/params.json").write_text(json.dumps(params))
    state = torch.load(tmp_path / "m/consolidated.00.pth", weights_only=True)
    state["rope.freqs"] = torch.zeros(4)  # LLaMA-1 files carry this buffer
    torch.save(state, tmp_path / "m/consolidated.00.pth")
    assert load_model(tmp_path / "m").args.vocab_size == 50


def test_shards_must_divide_heads(tmp_path):
    with pytest.raises(UserError, match="does not divide"):
        save_model(random_model(), tmp_path / "m", format="meta", shards=3)
    assert not (tmp_path / "m").exists()


def test_missing_params_json(tmp_path):
    save_model(random_model(), tmp_path / "m", format="meta")
    (tmp_path / "m/params.json").unlink()
    with pytest.raises(UserError, match="params.json: missing"):
        load_model(tmp_path / "m")


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    save_model(random_model(), tmp_path / "m", format="meta")
    torch.save({"tok_embeddings.weight": torch.zeros(2), "x": Exploit()}, tmp_path / "m/consolidated.00.pth")
    with pytest.raises(UserError, match="refusing to load"):
        load_model(tmp_path / "m")
