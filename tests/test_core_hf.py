"""HF LlamaForCausalLM interop: logits parity both ways against transformers, bit-identical round trips."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from llamaforge.formats import detect_format, load_model, save_model
from llamaforge.formats.hf import hf_to_meta_rows, meta_to_hf_rows
from llamaforge.model import ModelArgs, Transformer

transformers = pytest.importorskip("transformers")

CONFIGS = {
    "mha": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=97, multiple_of=16, max_seq_len=64),
    "gqa": ModelArgs(dim=96, n_layers=3, n_heads=6, n_kv_heads=2, vocab_size=101, hidden_dim=150, max_seq_len=64,
                     norm_eps=1e-5, rope_theta=500000.0),
    "odd": ModelArgs(dim=40, n_layers=1, n_heads=5, n_kv_heads=1, vocab_size=33, hidden_dim=37, max_seq_len=32),
}


def random_model(args: ModelArgs) -> Transformer:
    model = Transformer(args)
    with torch.no_grad():  # non-trivial norm gains too, so a swapped norm cannot pass
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.15 if "norm" not in name else 0.2) + ("norm" in name))
    return model.eval()


def compare(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    """max |logit difference| and the largest per-position KL(ours || theirs), computed in fp64."""
    diff = (ours - theirs).abs().max().item()
    p, q = F.log_softmax(ours.double(), -1), F.log_softmax(theirs.double(), -1)
    kl = (p.exp() * (p - q)).sum(-1).max()
    return diff, kl.item()


@pytest.mark.parametrize("name", CONFIGS)
def test_export_to_hf_matches_transformers(tmp_path, name):
    args = CONFIGS[name]
    model = random_model(args)
    save_model(model, tmp_path / "hf", format="hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tokens = torch.randint(0, args.vocab_size, (2, 17))
    with torch.no_grad():
        diff, kl = compare(model(tokens), hf(tokens).logits)
    assert diff <= 1e-5 and kl <= 1e-9, (diff, kl)


@pytest.mark.parametrize("name", CONFIGS)
def test_import_from_hf_matches_transformers(tmp_path, name):
    args = CONFIGS[name]
    torch.manual_seed(1)
    config = transformers.LlamaConfig(
        hidden_size=args.dim, intermediate_size=args.ffn_hidden_dim, num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads, num_hidden_layers=args.n_layers, vocab_size=args.vocab_size,
        max_position_embeddings=args.max_seq_len, rms_norm_eps=args.norm_eps,
        rope_parameters={"rope_theta": args.rope_theta, "rope_type": "default"},
    )
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    hf.save_pretrained(tmp_path / "hf")
    assert detect_format(tmp_path / "hf") == "hf"
    model = load_model(tmp_path / "hf")
    assert model.args.ffn_hidden_dim == args.ffn_hidden_dim and model.args.rope_theta == args.rope_theta
    tokens = torch.randint(0, args.vocab_size, (2, 19))
    with torch.no_grad():
        diff, kl = compare(model(tokens), hf(tokens).logits)
    assert diff <= 1e-5 and kl <= 1e-9, (diff, kl)


def test_missing_permutation_would_be_caught(tmp_path):
    """Negative control: without the q/k permutation the same check fails."""
    args = CONFIGS["mha"]
    model = random_model(args)
    save_model(model, tmp_path / "hf", format="hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        for i, layer in enumerate(hf.model.layers):
            layer.self_attn.q_proj.weight.copy_(model.layers[i].attention.wq.weight)
            layer.self_attn.k_proj.weight.copy_(model.layers[i].attention.wk.weight)
        tokens = torch.randint(0, args.vocab_size, (1, 16))
        diff, _ = compare(model(tokens), hf(tokens).logits)
    assert diff > 1e-4


def test_permutation_round_trip():
    w = torch.randn(6 * 8, 10)
    assert torch.equal(hf_to_meta_rows(meta_to_hf_rows(w, 6), 6), w)
    assert not torch.equal(meta_to_hf_rows(w, 6), w)


def test_hf_native_hf_bit_identical(tmp_path):
    from safetensors.torch import load_file

    model = random_model(CONFIGS["gqa"])
    save_model(model, tmp_path / "a", format="hf")
    save_model(load_model(tmp_path / "a"), tmp_path / "native", format="native")
    assert detect_format(tmp_path / "native") == "native"
    save_model(load_model(tmp_path / "native"), tmp_path / "b", format="hf")
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((tmp_path / "a/config.json").read_text()) == json.loads((tmp_path / "b/config.json").read_text())


def test_sharded_save_has_index_and_loads(tmp_path):
    args = CONFIGS["mha"]
    model = random_model(args)
    save_model(model, tmp_path / "hf", format="hf", max_shard_size=20_000)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and not (tmp_path / "hf" / "model.safetensors").exists()
    back = load_model(tmp_path / "hf")
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tokens = torch.randint(0, args.vocab_size, (1, 12))
    with torch.no_grad():
        diff, kl = compare(model(tokens), hf(tokens).logits)
    assert diff <= 1e-5 and kl <= 1e-9


def test_legacy_rope_theta_is_read(tmp_path):
    model = random_model(CONFIGS["mha"])
    save_model(model, tmp_path / "hf", format="hf")
    cfg = json.loads((tmp_path / "hf/config.json").read_text())
    del cfg["rope_parameters"]
    cfg["rope_theta"] = 1234.0
    (tmp_path / "hf/config.json").write_text(json.dumps(cfg))
    assert load_model(tmp_path / "hf").args.rope_theta == 1234.0


def test_bf16_save(tmp_path):
    model = random_model(CONFIGS["mha"])
    save_model(model, tmp_path / "hf", format="hf", dtype=torch.bfloat16)
    back = load_model(tmp_path / "hf", dtype=torch.bfloat16)
    assert back.output.weight.dtype == torch.bfloat16
    assert torch.equal(back.output.weight, model.output.weight.to(torch.bfloat16))


def test_tied_embeddings_and_pytorch_bin(tmp_path):
    """An HF model with tied embeddings, saved as pickled pytorch_model.bin (older exports)."""
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                      num_hidden_layers=1, vocab_size=40, tie_word_embeddings=True)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(state, tmp_path / "hf" / "pytorch_model.bin")
    model = load_model(tmp_path / "hf")
    assert torch.equal(model.output.weight, hf.model.embed_tokens.weight)
    tokens = torch.randint(0, 40, (1, 9))
    with torch.no_grad():
        diff, kl = compare(model(tokens), hf(tokens).logits)
    assert diff <= 1e-5 and kl <= 1e-9


def test_sentencepiece_export_loads_in_autotokenizer_with_the_same_ids(tmp_path):
    """The exported folder's tokenizer.json (built offline from tokenizer.model) gives sentencepiece's ids in
    transformers' AutoTokenizer: books, code, runs of spaces ("with  x"), digits, emoji."""
    import sentencepiece as spm

    from conftest import shared_path

    tok = shared_path("llama2-tokenizer/tokenizer.model")
    save_model(random_model(CONFIGS["mha"]), tmp_path / "hf", format="hf", tokenizer_path=tok)
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == tok.read_bytes()
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    assert auto("Hello world").input_ids == [1, 15043, 3186]
    assert auto("with  x", add_special_tokens=False).input_ids == sp.encode("with  x") == [411, 29871, 921]
    book = shared_path("gutenberg/pg11_alice_in_wonderland.txt").read_text(encoding="utf-8")[:60000]
    texts = [book, "def f(x):\n    return x ** 2  # square\n\tif x:\n\t\tpass\n", "  two  spaces   three    four ",
             "digits 0 12 345 6789 3.14159 1,000,000", "emoji 🦙🔥👍🏽 and 日本語 naïve", "\n\n\nlines\n \n"]
    for text in texts:
        assert auto(text, add_special_tokens=False).input_ids == sp.encode(text), text[:40]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)


def test_unsupported_hf_features_are_refused(tmp_path):
    from llamaforge.errors import UserError

    save_model(random_model(CONFIGS["mha"]), tmp_path / "hf", format="hf")
    cfg = json.loads((tmp_path / "hf/config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 8.0}
    (tmp_path / "hf/config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="rope_type 'yarn'"):
        load_model(tmp_path / "hf")
    cfg["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}  # fields missing
    (tmp_path / "hf/config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="llama3 scaling needs"):
        load_model(tmp_path / "hf")
