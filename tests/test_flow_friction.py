"""Issue #11's friction points, one test each: the tokenizer travels with every model the project writes (under a
name `load_tokenizer` finds), `convert` refuses to drop it silently, model-shape mistakes and nested overrides in a
recipe are one `error:` line, `prepare SOURCE --help` says the input layout."""

from __future__ import annotations

import shutil
import pytest
import torch

from conftest import one_error_line, shared_path
from llamaforge import load_tokenizer
from llamaforge.cli import main
from llamaforge.formats import load_model, save_model
from llamaforge.model import ModelArgs, Transformer

TEXT = "The quick brown fox jumps over the lazy dog. It was 1984; def f(x): return x + 1"


@pytest.fixture
def renamed_tokenizer(tmp_path):
    """Meta's LLaMA tokenizer under a trainer's own name, as `final/` used to receive it."""
    path = tmp_path / "llama8k.model"
    shutil.copy(shared_path("llama2-tokenizer/tokenizer.model"), path)
    return path


def tiny(vocab_size=32000):
    return Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=vocab_size, multiple_of=16,
                                 max_seq_len=32))


@pytest.mark.parametrize("fmt", ["native", "hf", "meta"])
def test_model_folder_carries_tokenizer_under_standard_name(tmp_path, renamed_tokenizer, fmt):
    import sentencepiece as spm

    folder = save_model(tiny(), tmp_path / fmt, format=fmt, tokenizer_path=renamed_tokenizer)
    assert (folder / "tokenizer.model").is_file() and not (folder / "llama8k.model").exists()
    ref = spm.SentencePieceProcessor(model_file=str(renamed_tokenizer))
    assert load_tokenizer(folder).encode(TEXT) == ref.encode(TEXT)


def test_llama2c_export_writes_llama2c_tokenizer_bin(tmp_path, renamed_tokenizer):
    """SentencePiece .model -> llama2.c's tokenizer.bin, byte for byte what llama2.c's own exporter wrote."""
    save_model(tiny(), tmp_path / "out" / "model.bin", format="llama2c", tokenizer_path=renamed_tokenizer)
    reference = shared_path("llama2-tokenizer/tokenizer.bin").read_bytes()
    assert (tmp_path / "out" / "tokenizer.bin").read_bytes() == reference


def test_convert_refuses_without_tokenizer(tmp_path, capsys):
    save_model(tiny(64), tmp_path / "bare", format="native")
    for to, dst in (("hf", "hf"), ("gguf", "m.gguf"), ("llama2c", "m.bin")):
        rc = main(["convert", str(tmp_path / "bare"), str(tmp_path / dst), "--to", to])
        one_error_line(capsys, rc, "no tokenizer", "--no-tokenizer")
        assert not (tmp_path / dst).exists()
    assert main(["convert", str(tmp_path / "bare"), str(tmp_path / "hf"), "--to", "hf", "--no-tokenizer"]) == 0


def test_convert_carries_tokenizer_in_every_format(tmp_path, renamed_tokenizer, capsys):
    """The folder's tokenizer goes to hf / meta / native folders, into GGUF, and back out of GGUF."""
    import sentencepiece as spm

    ref = spm.SentencePieceProcessor(model_file=str(renamed_tokenizer)).encode(TEXT)
    src = save_model(tiny(), tmp_path / "src", format="native", tokenizer_path=renamed_tokenizer)
    for to, dst in (("hf", "hf"), ("meta", "meta"), ("gguf", "m.gguf"), ("llama2c", "l2c/m.bin")):
        assert main(["convert", str(src), str(tmp_path / dst), "--to", to]) == 0, capsys.readouterr().err
    for folder in ("hf", "meta"):
        assert load_tokenizer(tmp_path / folder).encode(TEXT) == ref
    assert (tmp_path / "l2c" / "tokenizer.bin").is_file()
    # GGUF -> HF: the embedded vocabulary becomes the folder's tokenizer.model
    assert main(["convert", str(tmp_path / "m.gguf"), str(tmp_path / "hf_from_gguf"), "--to", "hf"]) == 0
    assert load_tokenizer(tmp_path / "hf_from_gguf").encode(TEXT) == ref
    # llama2.c -> native: tokenizer.bin beside the file is llama2.c's convention
    assert main(["convert", str(tmp_path / "l2c" / "m.bin"), str(tmp_path / "n2"), "--to", "native"]) == 0
    assert (tmp_path / "n2" / "tokenizer.bin").is_file()


def test_hf_export_loads_in_transformers_with_sentencepiece_ids(tmp_path, renamed_tokenizer):
    """AutoTokenizer on the exported folder gives SentencePiece's ids, not `[1]` for every text."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    folder = save_model(tiny(), tmp_path / "hf", format="hf", tokenizer_path=renamed_tokenizer)
    hf = AutoTokenizer.from_pretrained(str(folder))
    ref = spm.SentencePieceProcessor(model_file=str(renamed_tokenizer))
    assert hf(TEXT, add_special_tokens=False)["input_ids"] == ref.encode(TEXT)


def test_trainer_final_folder_carries_tokenizer(tmp_path):
    """`eval`/`generate` on runs/x/final need its tokenizer there, whatever data.tokenizer was called."""
    from llamaforge.data.tokenizer_training import train_tokenizer
    from llamaforge.train import load_config, train

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"line {i} of a small corpus about foxes and dogs" for i in range(300)))
    tok = train_tokenizer([corpus], 300, tmp_path / "llama8k")
    cfg = load_config("debug", ["--training.steps=1", "--model.vocab_size=300", f"--data.tokenizer={tok}",
                                "--checkpoint.every=0"])
    train(cfg, tmp_path / "run")
    assert load_tokenizer(tmp_path / "run" / "final").encode(TEXT) == load_tokenizer(tok).encode(TEXT)


def test_model_shape_mistake_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\npreset = "small-17m"\nn_heads = 4\n[data]\nkind = "synthetic"\nseq_len = 32\n')
    rc = main(["train", "--recipe", str(recipe), "--out", str(tmp_path / "out")])
    one_error_line(capsys, rc, str(recipe), "n_kv_heads", "n_heads")
    assert not (tmp_path / "out").exists()


def test_nested_override_of_a_table(tmp_path, capsys):
    from llamaforge.train import load_config

    cfg = load_config("demo", ["--data.sources.code=some/where", "--data.weights.code=0.9"])
    assert cfg.data.sources["code"] == "some/where" and cfg.data.weights["code"] == 0.9
    assert cfg.data.sources["docs"] == "runs/demo/tokens/docs"  # the other entries stay
    rc = main(["train", "--recipe", "demo", "--optim.lr.x=1"])
    one_error_line(capsys, rc, "optim.lr")


def test_prepare_help_says_input_layout(capsys):
    from llamaforge.data.sources import SOURCES

    for source in SOURCES:
        with pytest.raises(SystemExit):
            main(["prepare", source, "--help"])
        out = capsys.readouterr().out
        assert "Inputs" in out, (source, out)
        if source == "wikipedia":
            assert "xml-p" in out and "multistream" in out


def test_prepare_refuses_options_of_other_sources(tmp_path, capsys):
    rc = main(["prepare", "github", str(tmp_path), "--out", str(tmp_path / "o"), "--badwords", "x"])
    one_error_line(capsys, rc, "--badwords", "c4")


def test_tokens_are_finite_after_load(tmp_path, renamed_tokenizer):
    """The exported model folder is enough for load_model + load_tokenizer (what eval/generate/serve call)."""
    folder = save_model(tiny(), tmp_path / "m", format="native", tokenizer_path=renamed_tokenizer)
    ids = torch.tensor([load_tokenizer(folder).encode(TEXT, bos=True)])
    assert torch.isfinite(load_model(folder)(ids)).all()


def test_model_folder_is_enough_for_generate_and_convert(tmp_path, renamed_tokenizer, capsys):
    """`generate` and `convert` on a folder the project wrote, without --tokenizer (the issue's first failure)."""
    folder = save_model(tiny(), tmp_path / "final", format="native", tokenizer_path=renamed_tokenizer)
    assert main(["generate", str(folder), "--prompt", "Hello", "--max-new-tokens", "3"]) == 0, capsys.readouterr().err
    assert main(["convert", str(folder), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert (tmp_path / "hf" / "tokenizer.model").is_file()
