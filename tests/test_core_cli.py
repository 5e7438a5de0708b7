"""The CLI: presets, convert between every format, generate; bad input gives one `error:` line, writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import assert_one_error_line, shared_path
from llamaforge.cli import main
from llamaforge.formats import load_model, save_model
from llamaforge.model import ModelArgs, Transformer

ARGS = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16, max_seq_len=32,
                 norm_eps=1e-5)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def hf_folder(tmp_path):
    save_model(Transformer(ARGS), tmp_path / "hf", format="hf")
    return tmp_path / "hf"


def test_presets_prints_paper_counts(capsys):
    rc, out, _ = run_cli(capsys, "presets")
    assert rc == 0
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert (rows["llama-7b"], rows["llama-13b"], rows["llama-33b"], rows["llama-65b"]) == (
        "6.74B", "13.02B", "32.53B", "65.29B")


def test_convert_through_every_writable_format(tmp_path, capsys, hf_folder):
    ref = load_model(hf_folder)
    rc, _, err = run_cli(capsys, "convert", hf_folder, tmp_path / "meta", "--to", "meta", "--shards", "2",
                         "--no-tokenizer")
    assert rc == 0, err
    for src, dst, to in (("meta", "m.bin", "llama2c"), ("m.bin", "native", "native"), ("native", "hf2", "hf")):
        assert run_cli(capsys, "convert", tmp_path / src, tmp_path / dst, "--to", to, "--no-tokenizer")[0] == 0
    back = load_model(tmp_path / "hf2")
    for k, v in ref.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    rc, _, _ = run_cli(capsys, "convert", hf_folder, tmp_path / "bf16", "--to", "native", "--dtype", "bfloat16",
                       "--no-tokenizer")
    assert rc == 0 and load_model(tmp_path / "bf16", dtype=torch.bfloat16).output.weight.dtype == torch.bfloat16


def test_convert_copies_tokenizer(tmp_path, capsys):
    tok = shared_path("llama2-tokenizer/tokenizer.model")
    # the model has the tokenizer's 32000 rows: convert refuses a tokenizer larger than the model (not its own)
    save_model(Transformer(ModelArgs(**{**ARGS.__dict__, "vocab_size": 32000})), tmp_path / "hf", format="hf")
    rc, _, err = run_cli(capsys, "convert", tmp_path / "hf", tmp_path / "n", "--to", "native", "--tokenizer", tok)
    assert rc == 0, err
    assert (tmp_path / "n" / "tokenizer.model").read_bytes() == tok.read_bytes()


def test_generate_command_stories260k(capsys):
    rc, out, err = run_cli(capsys, "generate", shared_path("stories260K/stories260K.bin"), "--tokenizer",
                           shared_path("stories260K/tok512.bin"), "--prompt", "", "--max-new-tokens", "30")
    assert rc == 0, err
    assert out.startswith("Once upon a time, there was a little girl named Lily.")


def test_truncated_safetensors(tmp_path, capsys, hf_folder):
    f = hf_folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-500])
    rc, _, err = run_cli(capsys, "convert", hf_folder, tmp_path / "out", "--to", "native", "--no-tokenizer")
    assert_one_error_line(rc, err, "model.safetensors")
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path) == ["hf"]


def test_wrong_shapes(tmp_path, capsys, hf_folder):
    cfg = json.loads((hf_folder / "config.json").read_text())
    cfg["intermediate_size"] += 16
    (hf_folder / "config.json").write_text(json.dumps(cfg))
    rc, _, err = run_cli(capsys, "convert", hf_folder, tmp_path / "out", "--to", "meta", "--no-tokenizer")
    assert_one_error_line(rc, err, "shape")
    assert not (tmp_path / "out").exists()


def test_unknown_format(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "weights.txt").write_text("hello")
    rc, _, err = run_cli(capsys, "convert", tmp_path / "junk", tmp_path / "out", "--to", "hf")
    assert_one_error_line(rc, err, "unknown checkpoint format")
    (tmp_path / "x.bin").write_bytes(b"\x01\x02\x03" * 100)
    rc, _, err = run_cli(capsys, "convert", tmp_path / "x.bin", tmp_path / "out", "--to", "hf")
    assert_one_error_line(rc, err, "x.bin")
    assert not (tmp_path / "out").exists()


def test_missing_params_json(tmp_path, capsys):
    save_model(Transformer(ARGS), tmp_path / "meta", format="meta")
    (tmp_path / "meta" / "params.json").unlink()
    rc, _, err = run_cli(capsys, "convert", tmp_path / "meta", tmp_path / "out", "--to", "hf", "--no-tokenizer")
    assert_one_error_line(rc, err, "params.json", "missing")
    assert not (tmp_path / "out").exists()


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > PWNED",))


def test_pickle_with_code(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_model(Transformer(ARGS), tmp_path / "meta", format="meta")
    torch.save({"tok_embeddings.weight": torch.zeros(3), "evil": Exploit()}, tmp_path / "meta/consolidated.00.pth")
    rc, _, err = run_cli(capsys, "convert", tmp_path / "meta", tmp_path / "out", "--to", "hf", "--no-tokenizer")
    assert_one_error_line(rc, err, "consolidated.00.pth", "refusing")
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "out").exists()


def test_real_entry_point_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "llamaforge", "convert", str(tmp_path / "nope"),
                           str(tmp_path / "out"), "--to", "hf"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: no such file or folder"]


@pytest.mark.parametrize("command", ["generate", "chat"])
@pytest.mark.parametrize("flag,value", [("--temperature", "nan"), ("--temperature", "-1"), ("--top-p", "0"),
                                        ("--top-p", "1.5"), ("--top-k", "-2"), ("--max-new-tokens", "-1")])
def test_sampling_flag_out_of_range_is_named(capsys, tmp_path, command, flag, value):
    """The flag that is out of range is named, before any model is loaded (the model path does not exist)."""
    argv = [command, tmp_path / "no-model", flag, value] + (["--prompt", "x"] if command == "generate" else [])
    rc, _, err = run_cli(capsys, *argv)
    assert_one_error_line(rc, err, f"{flag}: expected")
