"""Llama 3.x (#16): RoPE scaling of type llama3, large rope_theta, tied embeddings and GQA against transformers;
Meta's layout with resharding; the tiktoken tokenizer against its exported tokenizer.json and llama.cpp; GGUF with
llama.cpp's greedy tokens; the chat format against transformers' apply_chat_template."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import shared_path
from llamaforge.errors import UserError
from llamaforge.formats import load_model, save_model
from llamaforge.model import ModelArgs, Transformer
from llamaforge.run.evaluate import llama_cpp_greedy

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

# head_dim 16 (8 pairs): with theta 500000 and an original context of 64, pair 0 keeps its speed (wavelength 6.3 <
# 64/4), pair 1 is blended (32.5), pairs 2-7 turn 8x slower: all three bands of the scaling are exercised.
TINY = ModelArgs(dim=128, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=256, hidden_dim=192, max_seq_len=128,
                 norm_eps=1e-5, rope_theta=500000.0, rope_scaling_factor=8.0, rope_low_freq_factor=1.0,
                 rope_high_freq_factor=4.0, rope_original_max_seq_len=64, tie_embeddings=True)
SEQ = 100  # positions past the original 64


def random_model(args: ModelArgs = TINY, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.2 if "norm" in name else 0.15) + ("norm" in name))
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_presets_have_the_released_parameter_counts():
    from llamaforge.presets import PRESETS, count_params

    counts = {name: count_params(PRESETS[name])[0] for name in ("llama3.1-8b", "llama3.2-1b", "llama3.2-3b")}
    assert counts == {"llama3.1-8b": 8_030_261_248, "llama3.2-1b": 1_235_814_400, "llama3.2-3b": 3_212_749_824}
    assert PRESETS["llama3.2-1b"].tie_embeddings and not PRESETS["llama3.1-8b"].tie_embeddings
    assert {PRESETS[n].n_kv_heads for n in counts} == {8}


def test_rope_frequencies_equal_transformers_llama3():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from llamaforge.model import apply_scaling, rope_frequencies

    config = transformers.LlamaConfig(hidden_size=4096, num_attention_heads=32, max_position_embeddings=131072,
                                      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                       "original_max_position_embeddings": 8192})
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    from llamaforge.presets import PRESETS

    a = PRESETS["llama3.1-8b"]  # the scaling numbers of Meta's apply_scaling: factor 8, low 1, high 4, 8192
    assert (a.rope_scaling_factor, a.rope_low_freq_factor, a.rope_high_freq_factor,
            a.rope_original_max_seq_len) == (8.0, 1.0, 4.0, 8192)
    ours = apply_scaling(rope_frequencies(128, 500000.0), 8.0, 1.0, 4.0, 8192)
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-6, atol=0)
    assert not torch.allclose(ours, rope_frequencies(128, 500000.0))  # the scaling changes something


def test_export_to_transformers_matches_past_the_original_context(tmp_path):
    model = random_model()
    save_model(model, tmp_path / "hf", format="hf")
    config = json.loads((tmp_path / "hf/config.json").read_text())
    assert config["tie_word_embeddings"] and config["rope_parameters"]["rope_type"] == "llama3"
    assert config["rope_scaling"]["original_max_position_embeddings"] == 64
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    tokens = torch.randint(0, TINY.vocab_size, (2, SEQ))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
        assert max_diff(ours, theirs) <= 1e-5
        # negative control: the same weights without the scaling differ past the original context
        plain = random_model(dataclasses.replace(TINY, rope_scaling_factor=None))
        assert max_diff(plain(tokens)[:, 64:], theirs[:, 64:]) > 1e-3


def test_import_from_transformers_matches_past_the_original_context(tmp_path):
    torch.manual_seed(1)
    config = transformers.LlamaConfig(
        hidden_size=128, intermediate_size=192, num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=2,
        vocab_size=256, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # logits of a few units: fp32 rounding differences stay ~2e-6 of their size
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    assert model.args == dataclasses.replace(TINY, rope_theta=500000.0)
    assert model.output.weight is model.tok_embeddings.weight
    tokens = torch.randint(0, 256, (2, SEQ))
    with torch.no_grad():
        assert max_diff(model(tokens), hf(tokens).logits) <= 1e-5
    # transformers 4.x spelling: rope_theta and rope_scaling apart
    cfg = json.loads((tmp_path / "hf/config.json").read_text())
    scaling = {k: v for k, v in cfg.pop("rope_parameters").items() if k != "rope_theta"}
    cfg.update(rope_theta=500000.0, rope_scaling=scaling)
    (tmp_path / "hf/config.json").write_text(json.dumps(cfg))
    assert load_model(tmp_path / "hf").args == model.args


def test_tied_embeddings_stay_tied(tmp_path):
    """Training (one parameter, gradients of both uses summed), native/HF round trips and int8 quantization."""
    from llamaforge.infer.quantize import quantize

    model = random_model().train()
    names = [n for n, _ in model.named_parameters()]
    assert "output.weight" not in names and "tok_embeddings.weight" in names
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, 256, (2, 16))
    F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
    opt.step()
    assert model.output.weight is model.tok_embeddings.weight
    for fmt in ("native", "hf"):
        back = load_model(save_model(model, tmp_path / fmt, format=fmt))
        assert back.output.weight is back.tok_embeddings.weight and back.args == model.args, fmt
        assert torch.equal(back.tok_embeddings.weight, model.tok_embeddings.weight)
    embedding = model.tok_embeddings.weight.detach().clone()
    with torch.no_grad():
        full = model.eval()(tokens)
        quantize(model, "int8")  # the output becomes an int8 copy of the shared matrix; the lookup keeps fp32
        assert torch.equal(model.tok_embeddings.weight, embedding)
        assert (model(tokens) - full).abs().max() < 0.05 * full.abs().max()


def test_meta_layout_reshard_and_params_round_trip(tmp_path):
    from llamaforge.formats.meta import load_shard

    args = dataclasses.replace(TINY, rope_original_max_seq_len=8192, hidden_dim=None, multiple_of=64)  # Meta: 1/4/8192
    model = random_model(args)
    save_model(model, tmp_path / "mp1", format="meta")
    params = json.loads((tmp_path / "mp1/params.json").read_text())
    assert params["use_scaled_rope"] is True and params["rope_scaling_factor"] == 8.0
    assert params["n_kv_heads"] == 2 and params["rope_theta"] == 500000.0
    assert "output.weight" in load_shard(tmp_path / "mp1/consolidated.00.pth")  # Meta's code loads it
    one = load_model(tmp_path / "mp1")
    save_model(one, tmp_path / "mp2", format="meta", shards=2)
    assert sorted(p.name for p in (tmp_path / "mp2").glob("*.pth")) == ["consolidated.00.pth", "consolidated.01.pth"]
    two = load_model(tmp_path / "mp2")
    assert one.args == two.args == model.args and two.output.weight is two.tok_embeddings.weight
    assert json.loads((tmp_path / "mp2/params.json").read_text()) == params
    tokens = torch.randint(0, 256, (2, SEQ))
    with torch.no_grad():
        assert torch.equal(one(tokens), two(tokens)) and torch.equal(one(tokens), model(tokens))
    with pytest.raises(UserError, match="cannot be written to params.json"):
        save_model(random_model(), tmp_path / "bad", format="meta")  # original context 64: Meta's code fixes 8192


def test_params_json_of_meta_releases():
    from llamaforge.formats.meta import args_from_params, params_from_args
    from llamaforge.presets import PRESETS

    # Llama 3.1 8B's params.json as released; without rope_scaling_factor Meta's code uses 8
    released = {"dim": 4096, "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "n_heads": 32, "n_kv_heads": 8,
                "n_layers": 32, "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": True,
                "vocab_size": 128256}
    assert args_from_params(released, -1, "params.json") == PRESETS["llama3.1-8b"]
    small = dict(released, dim=2048, n_layers=16, ffn_dim_multiplier=1.5, multiple_of=256)
    assert args_from_params(small, -1, "params.json", tied=True) == PRESETS["llama3.2-1b"]  # 3.2: factor 32
    for name in ("llama3.1-8b", "llama3.2-1b", "llama3.2-3b"):
        args = PRESETS[name]
        assert args_from_params(params_from_args(args), -1, "p", tied=args.tie_embeddings) == args


# ------------------------------------------------------------------------------------------ the tokenizer

TEXTS = {
    "numbers": "In 1969, 3.14159 and 2,718,281 were 12345678901234567890; 0x1F, 1e-5, -42.",
    "cjk": "日本語のテキストと中文文本，한국어 텍스트。",
    "emoji": "emoji 🦙🔥👍🏽 family 👨‍👩‍👧 flags 🇫🇷 done",
    "whitespace": "a  b   c    d\t\te\n\n\nf \n \n g     \r\n h  ",
    "specials": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|> <s></s> <|reserved_special_token_7|>",
    "contractions": "I'm sure they'll say it's what we'd've DONE'S",
}


def corpus() -> dict[str, str]:
    texts = dict(TEXTS)
    texts["book"] = shared_path("gutenberg/pg1080_modest_proposal.txt").read_text(encoding="utf-8")[:50000]
    from llamaforge import tokenizer as tokenizer_module

    texts["code"] = open(tokenizer_module.__file__, encoding="utf-8").read()
    return texts


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny Llama 3 model written as HF (tokenizer.json built from tokenizer.model, the staged Instruct
    tokenizer_config.json's chat template carried over) and as GGUF with the vocabulary."""
    root = tmp_path_factory.mktemp("llama3")
    src = root / "src"
    src.mkdir()
    shutil.copy(shared_path("llama3-tokenizer/tokenizer.model"), src / "tokenizer.model")
    shutil.copy(shared_path("llama3-tokenizer/hf-Meta-Llama-3-8B-Instruct-webr/tokenizer_config.json"), src)
    model = random_model(dataclasses.replace(TINY, vocab_size=128256, dim=64, n_heads=4, n_kv_heads=2,
                                             hidden_dim=96, n_layers=1))
    save_model(model, root / "hf", format="hf", tokenizer_path=src / "tokenizer.model")
    save_model(model, root / "m.gguf", format="gguf", tokenizer_path=src / "tokenizer.model")
    return root


def test_tiktoken_ids_equal_exported_tokenizer_json_and_llama_cpp(exported):
    from tokenizers import Tokenizer

    from llamaforge.formats.gguf import load_tokenizer as gguf_tokenizer
    from llamaforge.tokenizer import load_tokenizer

    ours = load_tokenizer(exported / "hf")  # tokenizer.model first: the tiktoken file itself
    assert type(ours).__name__ == "TiktokenTokenizer"
    assert ours.encode("Hello world") == [9906, 1917]
    hf_json = Tokenizer.from_file(str(exported / "hf/tokenizer.json"))
    hf_json.encode_special_tokens = True  # special-token strings as text, as ours
    auto = transformers.AutoTokenizer.from_pretrained(exported / "hf")
    from_gguf = gguf_tokenizer(exported / "m.gguf")
    try:
        import llama_cpp

        llm = llama_cpp.Llama(str(exported / "m.gguf"), vocab_only=True, verbose=False)
    except ImportError:
        llm = None
    for name, text in corpus().items():
        ids = ours.encode(text)
        assert not set(ids) & ours.control_ids, name
        assert hf_json.encode(text, add_special_tokens=False).ids == ids, name
        assert from_gguf.encode(text) == ids, name
        # AutoTokenizer splits special-token strings out of text unless told not to
        assert auto(text, add_special_tokens=False, split_special_tokens=True).input_ids == ids, name
        if llm is not None:
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids, name
        assert ours.decode(ids) == text and auto.decode(ids) == text, name
    assert auto("Hello world").input_ids == [128000, 9906, 1917]
    if llm is None:
        pytest.skip("llama-cpp-python is not installed: the llama.cpp half of this check did not run")


@pytest.mark.slow  # gguf-py's reader (the independent check here) parses the 128k vocabulary for ~15-30 s
def test_gguf_llama3_metadata_and_round_trip(exported):
    import gguf

    reader = gguf.GGUFReader(str(exported / "m.gguf"))
    fields = {k: reader.fields[k].contents() for k in ("tokenizer.ggml.model", "tokenizer.ggml.pre",
                                                       "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eot_token_id")}
    assert fields == {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe",
                      "tokenizer.ggml.bos_token_id": 128000, "tokenizer.ggml.eot_token_id": 128009}
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert tokens[9906] == "Hello" and tokens[1917] == "Ġworld" and tokens[128009] == "<|eot_id|>"
    assert "<|start_header_id|>" in reader.fields["tokenizer.chat_template"].contents()
    names = {t.name for t in reader.tensors}
    assert "rope_freqs.weight" in names and "output.weight" not in names
    back = load_model(exported / "m.gguf")
    hf = load_model(exported / "hf")
    assert back.args == dataclasses.replace(hf.args, max_seq_len=back.args.max_seq_len)
    assert back.output.weight is back.tok_embeddings.weight


@pytest.mark.slow
def test_llama_cpp_greedy_tokens_equal_ours(tmp_path):
    """GGUF of the tiny Llama 3 config (scaled RoPE, tied, GQA), f32: llama.cpp's greedy tokens, past the
    original context, equal llamaforge's."""
    pytest.importorskip("llama_cpp")
    from llamaforge.infer import Engine, SamplingParams

    path = save_model(random_model(), tmp_path / "m.gguf", format="gguf", dtype="f32")
    model = load_model(path)
    assert model.args == TINY
    prompt = list(range(3, 60, 2))  # 29 tokens; 60 more go past position 64
    ours = Engine(model, max_seq_len=128).generate([prompt], SamplingParams(max_new_tokens=60, stop_token_ids=()))[0]
    assert llama_cpp_greedy(path, prompt, 60, type_k=0, type_v=0) == ours.tokens  # f32 KV cache


# ------------------------------------------------------------------------------------------ chat

DIALOG = [{"role": "system", "content": "You answer in one line."},
          {"role": "user", "content": "What is the capital of France?"},
          {"role": "assistant", "content": "Paris."},
          {"role": "user", "content": "  And of Italy?  "}]


def test_chat_ids_equal_transformers_apply_chat_template(exported):
    from llamaforge.formats.hf_tokenizer import LLAMA3_TEMPLATE
    from llamaforge.infer.templates import load_chat_format
    from llamaforge.tokenizer import load_tokenizer

    tok = load_tokenizer(exported / "hf")
    auto = transformers.AutoTokenizer.from_pretrained(exported / "hf")
    theirs = auto.apply_chat_template(DIALOG, tokenize=True, add_generation_prompt=True)
    theirs = theirs["input_ids"] if isinstance(theirs, dict) or hasattr(theirs, "keys") else theirs
    jinja = load_chat_format("auto", tok)  # the folder's tokenizer_config.json: the staged Instruct template
    assert jinja.name.endswith("tokenizer_config.json")
    assert jinja.render(DIALOG).ids == list(theirs)
    assert load_chat_format("llama3", tok).render(DIALOG).ids == list(theirs)  # Meta's ChatFormat
    assert load_chat_format(LLAMA3_TEMPLATE, tok).render(DIALOG).ids == list(theirs)  # the one we write
    assert jinja.stop_ids >= {128009, 128001}


def test_llama2c_refuses_llama3_features(tmp_path):
    with pytest.raises(UserError, match="RoPE scaling"):
        save_model(random_model(dataclasses.replace(TINY, rope_theta=10000.0)), tmp_path / "m.bin", format="llama2c")
    plain = random_model(dataclasses.replace(TINY, rope_scaling_factor=None, rope_theta=10000.0))
    with pytest.raises(UserError, match="tiktoken"):
        save_model(plain, tmp_path / "m.bin", format="llama2c",
                   tokenizer_path=shared_path("llama3-tokenizer/tokenizer.model"))


def test_server_chat_on_a_llama3_checkpoint(exported):
    """/v1/chat/completions renders the dialog with the folder's chat template as tokens and stops at <|eot_id|>."""
    import copy

    from fastapi.testclient import TestClient

    from llamaforge.infer import Engine, SamplingParams
    from llamaforge.infer.server import create_app
    from llamaforge.tokenizer import load_tokenizer

    tok = load_tokenizer(exported / "hf")
    model = load_model(exported / "hf")
    app = create_app(Engine(model, tok, max_batch=1, max_seq_len=128), model_name="tiny3", chat_template="auto")
    ids = load_chat_format_ids(tok, DIALOG)
    with TestClient(app) as client:
        r = client.post("/v1/chat/completions", json={"messages": DIALOG, "max_tokens": 6, "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        stream = client.post("/v1/chat/completions", json={"messages": DIALOG, "max_tokens": 6, "temperature": 0,
                                                             "stream": True})
        pieces = [json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                  for line in stream.text.splitlines() if line.startswith("data: {")]
        bad = client.post("/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]})
        assert bad.status_code == 400 and "role" in bad.text
    assert body["usage"]["prompt_tokens"] == len(ids)
    reference = Engine(copy.deepcopy(model), tok, max_batch=1, max_seq_len=128)
    (expected,) = reference.generate([ids], SamplingParams(max_new_tokens=6, stop_token_ids=[128009, 128001]))
    assert body["choices"][0]["message"]["content"] == expected.text == "".join(pieces) and len(pieces) > 1
    assert expected.text and len(expected.tokens) == 6


def load_chat_format_ids(tok, dialog) -> list[int]:
    from llamaforge.infer.templates import load_chat_format

    return load_chat_format("auto", tok).render(dialog).ids
