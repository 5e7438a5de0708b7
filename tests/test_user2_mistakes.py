"""Mistakes a second new user made on real input (notes/user2.md, helper "fix3"): each is refused with one `error:`
line naming the flag or file, exit 2, nothing touched, where it used to lose data or say the wrong thing."""

from __future__ import annotations

import json

import pytest

from conftest import shared_path
from llamaforge import cli


def _tree(folder):
    """Every file under `folder` with its bytes: what "nothing touched" compares."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error(capsys, rc) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_train_and_finetune_refuse_to_start_over_a_previous_run(tmp_path, capsys):
    """`finetune M --out EXISTING` (and `train`) without --resume silently started over: metrics.jsonl truncated,
    checkpoints replaced. Now one line naming the folder and both ways on; the old run is left byte for byte."""
    out = tmp_path / "run"
    base = ["train", "--recipe", "debug", "--out", str(out), "--training.steps=2", "--checkpoint.every=2",
            "--metrics.val_every=0", "--metrics.progress=false"]
    assert cli.main(base) == 0
    before = _tree(out)
    assert "metrics.jsonl" in before and any(k.startswith("checkpoints/") for k in before)
    capsys.readouterr()
    line = _error(capsys, cli.main([*base, "--training.steps=3"]))
    assert line.startswith(f"error: {out}: --out: holds a previous run (") and "--resume auto" in line, line
    assert "metrics.jsonl" in line and "checkpoints/" in line
    assert _tree(out) == before
    # finetune into a run folder (here the train run's): refused before the model or data are read
    tok = shared_path("llama2-tokenizer/tokenizer.model")
    data = tmp_path / "a.json"
    data.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "hi"}] * 4))
    line = _error(capsys, cli.main(["finetune", str(out / "final"), "--tokenizer", str(tok), "--data", str(data),
                                    "--out", str(out)]))
    assert line.startswith(f"error: {out}: --out: holds a previous run (") and "--resume auto" in line, line
    assert _tree(out) == before
    # --resume auto continues it; an existing empty folder is a fresh start
    assert cli.main([*base, "--training.steps=3", "--resume", "auto"]) == 0
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(x)] == [1, 2, 3]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["train", "--recipe", "debug", "--out", str(empty), "--training.steps=1",
                     "--metrics.val_every=0", "--metrics.progress=false", "--checkpoint.every=0"]) == 0


def _stories():
    folder = shared_path("stories260K")
    return folder / "stories260K.bin", folder / "tok512.bin"


def test_finetune_template_mistake_names_the_flag_and_help_lists_every_template(tmp_path, capsys):
    """`finetune --template nosuch` said `chat template 'nosuch': ...` (no flag); `finetune --help` listed "plain,
    chatml, llama2, or a Jinja file" while llama3 and auto work too. The help of finetune and chat now comes from the
    registry of built-in formats (`infer.templates.BUILTIN`)."""
    from llamaforge.infer.templates import BUILTIN

    model, tok = _stories()
    data = shared_path("alpaca/alpaca_5000.json")
    out = tmp_path / "ft"
    base = ["finetune", str(model), "--tokenizer", str(tok), "--data", str(data), "--out", str(out)]
    line = _error(capsys, cli.main([*base, "--template", "nosuch"]))
    assert line.startswith("error: --template: chat template 'nosuch': expected one of "), line
    assert all(name in line for name in BUILTIN)
    line = _error(capsys, cli.main([*base, "--finetune.template=nosuch"]))  # set as a config key: named as one
    assert line.startswith("error: finetune.template: chat template 'nosuch'"), line
    assert not out.exists()
    for command in ("finetune", "chat"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        flat = " ".join(capsys.readouterr().out.split())
        assert "auto | plain | llama2 | llama3 | chatml" in flat
        assert all(f" {name} " in flat.replace("|", " ").replace(",", " ") for name in BUILTIN), (command, flat)


def test_binary_file_as_finetune_data_is_called_binary(tmp_path, capsys):
    """`finetune --data stories260K.bin` said `not valid JSON ('utf-32-le' codec can't decode ...)` (json's encoding
    guess on NUL bytes): now, by read_text's rule (`io.first_binary_byte`), "found binary data", as JSONL and as a
    JSON list, and for any JSONL the project reads strictly (`io.read_jsonl`)."""
    from llamaforge.errors import UserError
    from llamaforge.io import read_jsonl
    from llamaforge.train.finetune import read_records

    model, tok = _stories()
    out = tmp_path / "ft"
    line = _error(capsys, cli.main(["finetune", str(model), "--tokenizer", str(tok), "--data", str(model),
                                    "--out", str(out)]))
    assert line.startswith(f"error: {model}:1: expected UTF-8 JSON text, found binary data at byte "), line
    assert "codec" not in line and not out.exists()
    listed = tmp_path / "list.json"
    listed.write_bytes(b'[{"instruction": "a", "output": "b"},\n' + bytes(range(256)) + b"]")
    with pytest.raises(UserError, match=r"list.json: expected UTF-8 text, found binary data at byte 38$"):
        read_records(listed)
    lines = tmp_path / "d.jsonl"
    lines.write_bytes(b'{"text": "ok"}\n\x00\x00\x00\x01\x02\n')
    with pytest.raises(UserError, match=r"d.jsonl:2: expected UTF-8 JSON text, found binary data at byte 0 of"):
        list(read_jsonl(lines))
    lines.write_bytes(b'{"text": "ok"}\n{"text": broken}\n')  # a text mistake is still told as JSON
    with pytest.raises(UserError, match=r"d.jsonl:2: not valid JSON \(Expecting value"):
        list(read_jsonl(lines))
