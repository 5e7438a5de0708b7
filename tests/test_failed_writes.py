"""A command that writes an output folder leaves nothing behind that was not there before when it stops on a user
error, and says so in one line (exit 2): prepare, tokenize, tokenizer train, train, finetune, convert and run.
(`run` keeps the stages that finished before the error, as after a kill, so a rerun resumes; the failed stage's
own new folder goes.)"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import shared_path
from llamaforge import cli


def _one_error(capsys, rc) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    return err[0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny native model with Llama 2's tokenizer, JSONL documents, Alpaca records."""
    from llamaforge.formats import save_model
    from llamaforge.model import ModelArgs, Transformer

    tok = shared_path("llama2-tokenizer/tokenizer.model")
    root = tmp_path_factory.mktemp("writes")
    torch.manual_seed(0)
    save_model(Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=32000, multiple_of=16,
                                     max_seq_len=64)), root / "m", format="native")
    shutil.copy(tok, root / "m" / "tokenizer.model")
    (root / "d.jsonl").write_text("".join(json.dumps({"text": f"Doc {i}: the cat sat on the mat."}) + "\n"
                                          for i in range(300)))
    (root / "a.json").write_text(json.dumps([{"instruction": f"Say {i}", "input": "", "output": f"{i} " * 8}
                                             for i in range(20)]))
    return root


def _argv(command: str, inputs, out: str) -> list[str]:
    book = shared_path("gutenberg/pg11_alice_in_wonderland.txt")
    tok = shared_path("llama2-tokenizer/tokenizer.model")
    flow = inputs / "f.toml"
    flow.write_text(f'[run]\nout = "{out}"\n[sources.books]\nkind = "books"\ninputs = ["{book}"]\n')
    return {
        "prepare": ["prepare", "books", str(book), "--out", out, "--no-progress"],
        "tokenize": ["tokenize", "--tokenizer", str(tok), "--input", str(inputs / "d.jsonl"), "--out", out],
        "tokenizer train": ["tokenizer", "train", "--input", str(inputs / "d.jsonl"), "--vocab-size", "300",
                            "--out", out + "/tok"],
        "train": ["train", "--recipe", "debug", "--out", out, "--training.steps=1"],
        "finetune": ["finetune", str(inputs / "m"), "--data", str(inputs / "a.json"), "--out", out,
                     "--training.steps=1", "--data.seq_len=32"],
        "convert": ["convert", str(inputs / "m"), out, "--to", "hf"],
        "run": ["run", str(flow), "--until", "prepare", "--no-progress"],
    }[command]


@pytest.mark.parametrize("command", ["prepare", "tokenize", "tokenizer train", "train", "finetune", "convert", "run"])
def test_an_output_under_a_file_is_one_line(inputs, tmp_path, capsys, command):
    """`--out FILE/sub` was a NotADirectoryError traceback in prepare, train, finetune and run."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    capsys.readouterr()
    line = _one_error(capsys, cli.main(_argv(command, inputs, str(a_file / "sub"))))
    assert str(a_file) in line and ("cannot write" in line or "not a folder" in line), line
    assert a_file.read_text() == "x" and sorted(tmp_path.iterdir()) == [a_file]


def test_prepare_with_a_wikipedia_that_is_no_dump_leaves_no_out(tmp_path, capsys):
    """`prepare commoncrawl ... --wikipedia BOOK --out OUT` failed after creating OUT/models (an empty folder left)."""
    crawl = shared_path("commoncrawl/dolma-tests/multiple_files_cc_en_head-0091.jsonl.gz")
    book = shared_path("gutenberg/pg11_alice_in_wonderland.txt")
    out = tmp_path / "out"
    capsys.readouterr()
    rc = cli.main(["prepare", "commoncrawl", str(crawl), "--wikipedia", str(book), "--out", str(out), "--no-progress"])
    assert str(book) in _one_error(capsys, rc)
    assert not out.exists()


@pytest.mark.parametrize("flags, words", [(["--langid", "fasttext:/nonexist/lid.bin"], ["--langid", "no such file"]),
                                          (["--lang-threshold", "2"], ["--lang-threshold", "[0, 1]"])])
def test_prepare_language_id_settings_are_checked_before_any_output(tmp_path, capsys, flags, words):
    """`--langid fasttext:/nonexist` was a ValueError traceback from a worker after OUT/_work was written;
    `--lang-threshold 2` dropped every document, exit 0."""
    crawl = shared_path("commoncrawl/dolma-tests/multiple_files_cc_en_head-0091.jsonl.gz")
    out = tmp_path / "out"
    capsys.readouterr()
    line = _one_error(capsys, cli.main(["prepare", "c4", str(crawl), *flags, "--out", str(out), "--no-progress"]))
    assert all(w in line for w in words), line
    assert not out.exists()


def _flow(tmp_path, body: str) -> str:
    path = tmp_path / "f.toml"
    book = shared_path("gutenberg/pg11_alice_in_wonderland.txt")
    path.write_text(f'[run]\nout = "{tmp_path / "run"}"\n[sources.books]\nkind = "books"\ninputs = ["{book}"]\n'
                    + body)
    return str(path)


def test_run_refuses_a_source_of_the_wrong_kind_before_any_stage(tmp_path, capsys):
    """A flow whose second source is a book given to c4 prepared the first source, then failed (flow.json and the
    first source's output left). Every source's inputs are now checked before any stage; the dry run flags it."""
    book = shared_path("gutenberg/pg11_alice_in_wonderland.txt")
    flow = _flow(tmp_path, f'[sources.web]\nkind = "c4"\ninputs = ["{book}"]\n')
    capsys.readouterr()
    line = _one_error(capsys, cli.main(["run", flow, "--until", "prepare", "--no-progress"]))
    assert line.startswith(f"error: {book}: c4: this is a text file"), line
    assert not (tmp_path / "run").exists()
    assert cli.main(["run", flow, "--dry-run"]) == 0
    flagged = [x for x in capsys.readouterr().out.splitlines() if "WRONG INPUTS" in x]
    assert len(flagged) == 1 and flagged[0].split()[:2] == ["web", "c4"] and "(the run refuses)" in flagged[0]


@pytest.mark.parametrize("body, words", [
    ('[tokenizer]\npath = "BOOK"\n', ["tokenizer.path", "expected a .model, .tiktoken, .json or .bin"]),
    ('[eval]\ntasks = ["piqa"]\ndata_dir = "/nonexist"\n', ["eval.data_dir", "no such folder"]),
])
def test_run_checks_tokenizer_and_eval_data_before_any_stage(tmp_path, capsys, body, words):
    """A text file as `tokenizer.path` failed after prepare; a missing `eval.data_dir` after training."""
    book = shared_path("gutenberg/pg11_alice_in_wonderland.txt")
    flow = _flow(tmp_path, body.replace("BOOK", str(book)))
    capsys.readouterr()
    line = _one_error(capsys, cli.main(["run", flow, "--until", "eval", "--no-progress"]))
    assert all(w in line for w in words), line
    assert not (tmp_path / "run").exists()


def test_run_keeps_finished_stages_but_not_the_failed_stage_folder(tmp_path, capsys):
    """A tokenizer vocabulary too large for the sample fails in the tokenizer stage, after prepare: prepare's output
    stays (a rerun resumes from it), the empty tokenizer/ folder that stage made went with it."""
    flow = _flow(tmp_path, "[tokenizer]\nvocab_size = 200000\n")
    capsys.readouterr()
    line = _one_error(capsys, cli.main(["run", flow, "--until", "tokenizer", "--no-progress"]))
    assert "vocab_size=200000" in line, line
    run = tmp_path / "run"
    assert (run / "prepare" / "books" / "stats.json").is_file() and (run / ".done" / "prepare.books.json").is_file()
    assert not (run / "tokenizer").exists()


def test_a_shipped_flow_run_from_elsewhere_names_the_directory(tmp_path, monkeypatch, capsys):
    """`run seven-sources` from another folder blamed the first source and suggested
    `--sources.commoncrawl.inputs=...`, though every input was missing because of the current directory."""
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    line = _one_error(capsys, cli.main(["run", "seven-sources", "--until", "prepare", "--no-progress"]))
    assert f"none of the inputs exist from the current directory {tmp_path}" in line, line
    assert "repository root" in line and "--sources.commoncrawl.inputs" not in line, line
    assert list(tmp_path.iterdir()) == []
