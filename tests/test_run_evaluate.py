"""The flow's per-source validation loss is the trainer's validation function (`train.trainer.evaluate` with a
`source`), not a loop of its own: checked against cross-entropy computed here from the raw batches."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llamaforge.data.mixture import MixtureLoader
from llamaforge.data.shards import ShardWriter
from llamaforge.model import ModelArgs, Transformer
from llamaforge.run.evaluate import validation_per_source
from llamaforge.train.trainer import evaluate

VOCAB, BOS, EOS = 97, 1, 2


def write_source(folder, n_docs, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 40, size=n_docs)
    with ShardWriter(folder, VOCAB, BOS, EOS) as w:
        w.add(rng.integers(3, VOCAB, size=int(lengths.sum())), lengths, n_bytes=3 * int(lengths.sum()))
    return folder


@pytest.fixture
def model_and_loader(tmp_path):
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=VOCAB, multiple_of=8, max_seq_len=16))
    sources = {"a": write_source(tmp_path / "a", 60, 0), "b": write_source(tmp_path / "b", 40, 1),
               "one": write_source(tmp_path / "one", 1, 2)}  # a single document: nothing held out
    loader = MixtureLoader(sources, {"a": 0.7, "b": 0.3, "one": 0.0}, seq_len=12, batch_size=3, val_fraction=0.2)
    return model, loader


def reference_loss(model, batches) -> float:
    """Token-weighted mean next-token cross-entropy of the batches, in nats."""
    with torch.no_grad():
        logits = torch.cat([model(x).flatten(0, 1) for x, _ in batches])
        targets = torch.cat([y.flatten() for _, y in batches])
    return F.cross_entropy(logits.double(), targets).item()


def test_per_source_validation_is_the_trainers_evaluate(model_and_loader):
    model, loader = model_and_loader
    assert loader.has_val("a") and loader.has_val("b") and not loader.has_val("one")
    got = validation_per_source(model, loader, 4)
    assert sorted(got) == ["a", "b"]  # the source with no held-out document is left out
    for name in ("a", "b"):
        want = reference_loss(model, loader.val_batches(4, source=name))
        assert got[name]["val_loss"] == pytest.approx(want, rel=1e-6)
        assert evaluate(model, loader, 4, "cpu", contextlib.nullcontext, source=name) == got[name]["val_loss"]
        assert got[name]["val_bpb"] == pytest.approx(want / np.log(2) / loader.val_bytes_per_token(name))
    # without a source: the whole weighted validation mixture, as during training
    assert evaluate(model, loader, 4, "cpu", contextlib.nullcontext) == pytest.approx(
        reference_loss(model, loader.val_batches(4)), rel=1e-6)
    assert validation_per_source(model, loader, 0) == {}


def test_evaluate_keeps_the_models_mode(model_and_loader):
    model, loader = model_and_loader
    model.eval()
    evaluate(model, loader, 1, "cpu", contextlib.nullcontext)
    assert not model.training


@pytest.mark.parametrize("progress", [True, False])
def test_hf_parity_draws_transformers_bar_only_with_progress(tmp_path, capfd, progress):
    """`run --no-progress` reaches the export stage's parity check: transformers' "Loading weights" bar is not
    drawn (it was), and transformers' process-wide switch is left as it was."""
    pytest.importorskip("transformers")
    from transformers.utils import logging as hf_logging

    from conftest import shared_path
    from llamaforge.formats import save_model
    from llamaforge.run.evaluate import hf_parity

    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=32000, multiple_of=8, max_seq_len=16))
    save_model(model, tmp_path / "hf", format="hf", tokenizer_path=shared_path("llama2-tokenizer/tokenizer.model"))
    capfd.readouterr()
    before = hf_logging.is_progress_bar_enabled()
    result = hf_parity(model.eval(), tmp_path / "hf", [1, 450, 4996, 17354, 1701, 29916], progress=progress)
    err = capfd.readouterr().err
    assert result["status"] == "passed" and result["tokenizer_ids_equal"] is True
    assert ("Loading weights" in err) == (progress and before), err
    assert hf_logging.is_progress_bar_enabled() == before


def test_gguf_parity_compares_llama_cpp_greedy_text_with_the_engine(tmp_path):
    """The export stage's GGUF check through the one llama.cpp driver (`llama_cpp_greedy`): the file's own model
    passes, another model fails; the driver ends before a stop id."""
    pytest.importorskip("llama_cpp")
    from conftest import shared_path
    from llamaforge import load_tokenizer
    from llamaforge.formats import load_model, save_model
    from llamaforge.run.evaluate import GREEDY_TOKENS, gguf_parity, llama_cpp_greedy

    tok = load_tokenizer(shared_path("stories260K/tok512.bin"))
    path = save_model(load_model(shared_path("stories260K/stories260K.bin")), tmp_path / "s.gguf", format="gguf",
                      dtype="f32")
    model = load_model(path)
    prompt = [1, 403, 407, 261, 378]  # BOS and four tokens of tok512
    result = gguf_parity(model, tok, path, prompt)
    assert result["status"] == "passed" and result["native"] == result["llama_cpp"] != "", result
    with torch.no_grad():
        model.output.weight.mul_(-1.0)  # the most likely token becomes the least likely: other greedy text
    assert gguf_parity(model, tok, path, prompt)["status"] == "failed"
    free = llama_cpp_greedy(path, prompt, GREEDY_TOKENS)
    assert llama_cpp_greedy(path, prompt, GREEDY_TOKENS, stop_ids=(free[2],)) == free[:free.index(free[2])]
