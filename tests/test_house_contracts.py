"""Typed contracts between rooms: the loaders implement `train.loader.Loader`, `train()` returns a `TrainSummary`."""

from __future__ import annotations

import inspect

import pytest

from llamaforge.data.mixture import MixtureLoader
from llamaforge.train.finetune import InstructionLoader
from llamaforge.train.loader import Loader
from llamaforge.train.synthetic import SyntheticLoader

PROTOCOL_METHODS = [name for name, v in vars(Loader).items() if inspect.isfunction(v) and not name.startswith("_")]


@pytest.mark.parametrize("cls", [MixtureLoader, SyntheticLoader, InstructionLoader])
def test_loaders_implement_the_protocol(cls):
    """Every protocol method exists and takes the protocol's positional parameters (extra ones need defaults)."""
    assert set(PROTOCOL_METHODS) == {"next_batch", "val_batches", "val_bytes_per_token", "stats", "state_dict",
                                     "load_state_dict"}
    for name in PROTOCOL_METHODS:
        method = getattr(cls, name, None)
        assert callable(method), f"{cls.__name__} lacks {name}"
        want = list(inspect.signature(getattr(Loader, name)).parameters)
        have = inspect.signature(method).parameters
        assert list(have)[: len(want)] == want, f"{cls.__name__}.{name}{inspect.signature(method)}"
        assert all(p.default is not inspect.Parameter.empty for p in list(have.values())[len(want):])


def test_synthetic_loader_is_a_loader():
    loader = SyntheticLoader(vocab_size=32, seq_len=8, batch_size=2, seed=0)
    assert isinstance(loader, Loader) and loader.val_bytes_per_token() is None
    x, y = loader.next_batch()
    assert x.shape == y.shape == (2, 8)


def test_a_source_refuses_an_option_it_does_not_take(tmp_path):
    """API: build_source names the option and the sources that take it (it used to vanish into `**_`)."""
    from llamaforge.data.sources import SOURCES, build_source, source_options
    from llamaforge.errors import UserError

    with pytest.raises(UserError, match=r"^max_sites: the github source does not take this option; "
                                        r"only stackexchange takes it$"):
        build_source("github", [str(tmp_path)], max_sites=3)
    with pytest.raises(UserError, match=r"^lang_threshold: the books source .* only commoncrawl, c4 take it$"):
        build_source("books", [str(tmp_path)], lang_threshold=0.5)
    # every source's options are its build() keywords: none swallows unknown ones
    assert all("_" not in source_options(s) for s in SOURCES)


@pytest.mark.parametrize("flag, message", [
    (["--badwords", "words.txt"], "error: --badwords: the books source does not take this option; only c4 takes it"),
    (["--lang-threshold=0.3"], "error: --lang-threshold: the books source does not take this option; "
                               "only commoncrawl, c4 take it"),
])
def test_prepare_cli_names_the_sources_that_take_a_flag(tmp_path, capsys, flag, message):
    from llamaforge.cli import main

    (tmp_path / "a.txt").write_text("text\n")
    rc = main(["prepare", "books", str(tmp_path / "a.txt"), "--out", str(tmp_path / "out"), *flag])
    err = capsys.readouterr().err
    assert rc == 2 and err == message + "\n" and not (tmp_path / "out").exists()


def test_every_warning_for_the_user_is_a_user_notice():
    """`warnings.warn` in the package names `errors.UserNotice`, which the CLI prints as one `warning: ...` line; a
    bare call is a Python UserWarning printed with a source path and line (llama2c's eps, the engine's eager
    fallback were)."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "src" / "llamaforge"
    bare = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "warn" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "warnings":
                category = node.args[1] if len(node.args) > 1 else next(
                    (k.value for k in node.keywords if k.arg == "category"), None)
                if not (isinstance(category, ast.Name) and category.id == "UserNotice"):
                    bare.append(f"{path.relative_to(package)}:{node.lineno}")
    assert not bare, f"warnings.warn without UserNotice: {bare}"
