"""GGUF: write with the gguf package, read back into the same model; read llama.cpp-made files; llama.cpp parity."""

from __future__ import annotations

import pytest
import torch
from conftest import shared_path

from llamaforge.formats import detect_format, load_model, save_model
from llamaforge.infer import Engine, SamplingParams
from llamaforge.model import ModelArgs, Transformer
from llamaforge.run.evaluate import llama_cpp_greedy


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one thread


def tiny(vocab=320) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab, hidden_dim=96,
                                  max_seq_len=128, norm_eps=1e-5, rope_theta=5000.0))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("dtype,tol", [("f32", 0.0), ("f16", 1e-3), ("bf16", 8e-3), ("q8_0", 2e-2)])
def test_round_trip(tmp_path, dtype, tol):
    model = tiny()
    path = save_model(model, tmp_path / "m.gguf", format="gguf", dtype=dtype)
    assert detect_format(path) == "gguf"
    back = load_model(path)
    assert back.args == model.args
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        err = (a - b).abs().max().item()
        assert err <= tol * a.abs().max().item() + 1e-12, (k, err)
    tokens = torch.tensor([[1, 5, 9, 200, 3]])
    if dtype in ("f32", "f16"):
        torch.testing.assert_close(back(tokens), model(tokens), atol=5e-3 if tol else 0, rtol=0)


def test_tokenizer_metadata_from_sentencepiece(tmp_path):
    import gguf

    tok = shared_path("llama2-tokenizer/tokenizer.model")
    path = save_model(tiny(vocab=32000), tmp_path / "m.gguf", format="gguf", dtype="f16", tokenizer_path=tok)
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == 32000 and tokens[15043] == "\u2581Hello"
    assert reader.fields["tokenizer.ggml.bos_token_id"].contents() == 1
    assert reader.fields["tokenizer.ggml.token_type"].contents()[3] == gguf.TokenType.BYTE  # <0x00>


def test_reads_shared_tiny_llama2_gguf():
    """A file made by llama.cpp's own converter (f16): shapes, metadata and finite outputs."""
    import gguf

    path = shared_path("llama-2-tiny-random-gguf/llama-2-tiny-random.gguf")
    model = load_model(path)
    a = model.args
    assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size, a.ffn_hidden_dim) == (8, 1, 2, 2, 32000, 32)
    assert a.max_seq_len == 4096 and a.norm_eps == pytest.approx(1e-5)
    reader = gguf.GGUFReader(str(path))
    raw = {t.name: t for t in reader.tensors}["blk.0.attn_q.weight"].data
    torch.testing.assert_close(model.layers[0].attention.wq.weight, torch.from_numpy(raw.astype("float32")))
    logits = model(torch.tensor([[1, 15043, 3186]]))
    assert logits.shape == (1, 3, 32000) and torch.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_llama_cpp_greedy_tokens_match(tmp_path, dtype):
    """The same GGUF decoded greedily by llama.cpp (llama-cpp-python, built from source) and by llamaforge
    (which reads the file back, so both run the same rounded weights)."""
    pytest.importorskip("llama_cpp")
    path = save_model(load_model(shared_path("stories260K/stories260K.bin")), tmp_path / "s.gguf", format="gguf",
                      dtype=dtype)
    prompt = [1, 403, 407, 261, 378]  # BOS and four tokens of tok512
    ours = Engine(load_model(path), max_seq_len=128).generate([prompt], SamplingParams(max_new_tokens=40,
                                                                                       stop_token_ids=()))[0]
    assert llama_cpp_greedy(path, prompt, 40) == ours.tokens


def test_convert_command_writes_q8_0_gguf(tmp_path, capsys):
    from llamaforge.cli import main

    model = tiny()
    model.args.hidden_dim = 80  # w2 then has 80 inputs: not whole 32-wide q8_0 blocks, so it is stored f16
    for layer in model.layers:
        layer.feed_forward = type(layer.feed_forward)(64, 80)
    src = save_model(model, tmp_path / "native")
    assert main(["convert", str(src), str(tmp_path / "m.gguf"), "--to", "gguf", "--dtype", "q8_0",
                 "--no-tokenizer"]) == 0
    import gguf

    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.ffn_up.weight"] == "Q8_0" and types["blk.0.ffn_down.weight"] == "F16"
    assert load_model(tmp_path / "m.gguf").args == model.args
    assert main(["convert", str(src), str(tmp_path / "x"), "--to", "native", "--dtype", "q8_0"]) == 2


def test_tokenizer_rebuilt_from_gguf_metadata(tmp_path):
    """tokenizer.model -> GGUF metadata -> SentencePiece again: same ids; and the shared llama.cpp-made file."""
    from llamaforge.formats.gguf import load_tokenizer
    from llamaforge.tokenizer import SentencePieceTokenizer

    original = SentencePieceTokenizer(shared_path("llama2-tokenizer/tokenizer.model"))
    path = save_model(tiny(vocab=32000), tmp_path / "m.gguf", format="gguf", tokenizer_path=original.path)
    rebuilt = load_tokenizer(path)
    texts = ["Hello world", "  two  spaces\nand a newline", "naïve café 東京 🙂", "x=1; y = [2, 3]"]
    for text in texts:
        assert rebuilt.encode(text, bos=True) == original.encode(text, bos=True)
        assert rebuilt.decode(original.encode(text)) == text
    shared = load_tokenizer(shared_path("llama-2-tiny-random-gguf/llama-2-tiny-random.gguf"))
    assert shared.encode("Hello world") == [15043, 3186]
    assert load_tokenizer(save_model(tiny(), tmp_path / "nv.gguf", format="gguf")) is None


STORY_TEXTS = ["Once upon a time, there was a little girl named Lily.", "  two  spaces\nnew line", "naïve café 東京"]


def test_llama2c_tokenizer_goes_into_gguf(tmp_path):
    from llamaforge.formats.gguf import load_tokenizer
    from llamaforge.tokenizer import Llama2cTokenizer

    tok_bin = shared_path("stories260K/tok512.bin")
    path = save_model(load_model(shared_path("stories260K/stories260K.bin")), tmp_path / "s.gguf", format="gguf",
                      tokenizer_path=tok_bin)
    original, rebuilt = Llama2cTokenizer(tok_bin), load_tokenizer(path)
    for text in STORY_TEXTS:
        assert rebuilt.encode(text, bos=True) == original.encode(text, bos=True)


@pytest.mark.slow
def test_llama_cpp_tokenizes_and_writes_like_llamaforge(tmp_path):
    """A self-contained GGUF (weights + vocabulary): llama.cpp's tokens and greedy text equal ours."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from llamaforge.tokenizer import Llama2cTokenizer

    tok = Llama2cTokenizer(shared_path("stories260K/tok512.bin"))
    model = load_model(shared_path("stories260K/stories260K.bin"))
    path = save_model(model, tmp_path / "s.gguf", format="gguf", tokenizer_path=tok.path)
    llm = llama_cpp.Llama(str(path), n_ctx=128, n_threads=1, verbose=False)
    for text in STORY_TEXTS:
        assert llm.tokenize(text.encode(), add_bos=True) == tok.encode(text, bos=True)
    theirs = llm("Once upon a time", max_tokens=30, temperature=0.0, top_k=1)["choices"][0]["text"]
    llm.close()
    engine = Engine(model, tok, max_seq_len=128)
    (ours,) = engine.generate([tok.encode("Once upon a time", bos=True)], SamplingParams(max_new_tokens=30))
    assert theirs == ours.text


def test_fast_metadata_reader_equals_gguf_py():
    """formats.gguf.GGUFFile (one struct pass) reads llama.cpp's own file exactly as gguf-py's GGUFReader does."""
    import gguf
    import numpy as np

    from llamaforge.formats.gguf import GGUFFile

    path = shared_path("llama-2-tiny-random-gguf/llama-2-tiny-random.gguf")
    ours, theirs = GGUFFile(path), gguf.GGUFReader(str(path))
    assert ours.fields.keys() == {k for k in theirs.fields if not k.startswith("GGUF.")}
    for key in ours.fields:
        expected = theirs.fields[key].contents()
        if isinstance(expected, list) and expected and isinstance(expected[0], float):
            assert np.allclose(ours.fields[key], expected), key
        else:
            assert ours.fields[key] == expected, key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        assert a.tensor_type == b.tensor_type and a.data.shape == b.data.shape and np.array_equal(a.data, b.data)


def test_export_removes_what_a_killed_export_left(tmp_path):
    """A GGUF export killed mid-write leaves `.NAME.tmp-PID` (as large as the model); the next export removes it
    when that process is gone, and leaves a live writer's temporary alone."""
    import os

    stale = tmp_path / f".m.gguf.tmp-{2**22 + 1}"  # above Linux's largest pid_max: no such process, ever
    live = tmp_path / f".m.gguf.tmp-{os.getppid()}"
    stale.write_bytes(b"GGUF" + bytes(100))
    live.write_bytes(b"GGUF")
    save_model(Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=32, multiple_of=16)),
               tmp_path / "m.gguf", format="gguf")
    assert (tmp_path / "m.gguf").is_file() and not stale.exists() and live.exists()
