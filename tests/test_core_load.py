"""`formats.load_model_and_tokenizer`: the one lookup of a model's tokenizer, for every format."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import shared_path

from llamaforge.errors import UserError
from llamaforge.formats import load_model_and_tokenizer, save_model
from llamaforge.model import ModelArgs, Transformer


def tiny(vocab: int) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=vocab, multiple_of=16, max_seq_len=32))


def test_every_format_finds_its_tokenizer(tmp_path):
    sp = shared_path("llama2-tokenizer/tokenizer.model")
    model = tiny(32000)
    folder = save_model(model, tmp_path / "native")
    shutil.copy(sp, folder / "tokenizer.model")  # inside a model folder
    _, tok = load_model_and_tokenizer(folder)
    assert tok.encode("Hello world") == [15043, 3186]
    gguf = save_model(model, tmp_path / "m.gguf", format="gguf", tokenizer_path=sp)  # embedded vocabulary
    loaded, tok = load_model_and_tokenizer(gguf)
    assert tok.encode("Hello world") == [15043, 3186] and loaded.args.vocab_size == 32000
    (tmp_path / "c").mkdir()
    bin_path = save_model(model, tmp_path / "c" / "m.bin", format="llama2c")
    with pytest.raises(UserError, match="no tokenizer found"):
        load_model_and_tokenizer(bin_path)
    shutil.copy(shared_path("llama2-tokenizer/tokenizer.bin"), tmp_path / "c" / "tokenizer.bin")  # beside a file
    _, tok = load_model_and_tokenizer(bin_path)
    assert tok.encode("Hello world") == [15043, 3186]
    _, tok = load_model_and_tokenizer(bin_path, tokenizer=sp)  # an explicit one wins
    assert type(tok).__name__ == "SentencePieceTokenizer"


def test_a_tokenizer_larger_than_the_model_is_refused(tmp_path):
    folder = save_model(tiny(512), tmp_path / "small")
    with pytest.raises(UserError, match="32000 tokens, the model only 512"):
        load_model_and_tokenizer(folder, tokenizer=shared_path("llama2-tokenizer/tokenizer.model"))
