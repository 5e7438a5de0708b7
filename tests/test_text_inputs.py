"""Inputs that are text by nature (`tokenizer train --input FILE`, `eval --text FILE`, a Jinja chat-template file)
are read by one strict reader, `io.read_text`: a binary file is refused in one line naming the first byte that is
not UTF-8 text, exit 2, nothing written. Before, a tokenizer .model or a PNG was read with replacement characters
(a tokenizer trained on it; a perplexity printed for it)."""

from __future__ import annotations

import gzip
import shutil

import pytest

from conftest import one_error_line, shared_path
from llamaforge import cli
from llamaforge.errors import UserError
from llamaforge.io import read_text

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))  # a PNG signature: 0x89 is no UTF-8 lead byte
GZIP_OF_BINARY = gzip.compress(b"text at first\x00\x01\x02 then a NUL")  # decompressed by magic: NUL at byte 13


@pytest.fixture
def binaries(tmp_path):
    (tmp_path / "picture.txt").write_bytes(PNG)
    (tmp_path / "packed.txt.gz").write_bytes(GZIP_OF_BINARY)
    return {"picture.txt": 0, "packed.txt.gz": 13}


def test_read_text_names_the_first_binary_byte(tmp_path, binaries):
    for name, byte in binaries.items():
        with pytest.raises(UserError, match=rf"{name}: expected UTF-8 text, found binary data at byte {byte}$"):
            read_text(tmp_path / name)
    (tmp_path / "bad.txt").write_bytes("naïve".encode() + b"\xff and more")  # valid until the 0xff
    with pytest.raises(UserError, match="at byte 6$"):
        read_text(tmp_path / "bad.txt")
    (tmp_path / "ok.txt.gz").write_bytes(gzip.compress("ünïcode\ttext\n".encode()))
    assert read_text(tmp_path / "ok.txt.gz") == "ünïcode\ttext\n"


def test_tokenizer_train_refuses_binary_input(tmp_path, binaries, capsys):
    for name, byte in binaries.items():
        out = tmp_path / f"tok-{byte}"
        rc = cli.main(["tokenizer", "train", "--input", str(tmp_path / name), "--vocab-size", "300",
                       "--out", str(out)])
        one_error_line(capsys, rc, f"{name}: expected UTF-8 text, found binary data at byte {byte}")
        assert not list(tmp_path.glob("tok-*")), "nothing written"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from llamaforge.formats import save_model
    from llamaforge.model import ModelArgs, Transformer

    root = tmp_path_factory.mktemp("text_inputs")
    save_model(Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=32000, multiple_of=16,
                                     max_seq_len=64)), root / "m", format="native")
    shutil.copy(shared_path("llama2-tokenizer/tokenizer.model"), root / "m" / "tokenizer.model")
    return root / "m"


def test_eval_text_refuses_binary_input(tmp_path, binaries, model_dir, capsys, one_thread):
    (tmp_path / "fine.txt").write_text("Some plain text to score.\n")
    for name, byte in binaries.items():
        out = tmp_path / "r.json"
        rc = cli.main(["eval", str(model_dir), "--text", str(tmp_path / "fine.txt"), "--text", str(tmp_path / name),
                       "--out", str(out)])
        one_error_line(capsys, rc, f"{name}: expected UTF-8 text, found binary data at byte {byte}")
        assert not out.exists() and not out.with_suffix(".md").exists()
    # the same model file as text: the case a new user hit (`--text tokenizer.model`)
    rc = cli.main(["eval", str(model_dir), "--text", str(model_dir / "tokenizer.model")])
    one_error_line(capsys, rc, "tokenizer.model: expected UTF-8 text, found binary data at byte")


def test_chat_template_file_refuses_binary_data(tmp_path, binaries):
    from llamaforge.infer.templates import load_chat_format
    from llamaforge.tokenizer import load_tokenizer

    tok = load_tokenizer(shared_path("llama2-tokenizer/tokenizer.model"))
    with pytest.raises(UserError, match="picture.txt: expected UTF-8 text, found binary data at byte 0$"):
        load_chat_format(str(tmp_path / "picture.txt"), tok)


def test_eval_reads_texts_before_loading_the_model(tmp_path, binaries, capsys):
    """A binary --text costs nothing: it is refused before MODEL is even looked at."""
    rc = cli.main(["eval", str(tmp_path / "no-such-model"), "--text", str(tmp_path / "picture.txt")])
    one_error_line(capsys, rc, "picture.txt: expected UTF-8 text, found binary data at byte 0")
