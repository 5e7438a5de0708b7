"""The neutral I/O room: the one strict JSONL reader and atomic writes."""

from __future__ import annotations

import gzip

import pytest

from llamaforge.errors import UserError
from llamaforge.io import atomic_file, read_jsonl


def test_gzip_is_recognized_by_its_bytes_not_its_name(tmp_path):
    path = tmp_path / "docs.jsonl"  # gzipped, but named like plain JSONL
    path.write_bytes(gzip.compress(b'{"text": "a"}\n\n{"text": "b"}\n'))
    assert list(read_jsonl(path)) == [(1, {"text": "a"}), (3, {"text": "b"})]  # blank line 2 skipped, numbered


@pytest.mark.parametrize("lines, message", [
    ([b'{"text": "a"}', b'{"text": '], r":2: not valid JSON"),
    ([b'{"text": "a"}', b'["a"]'], r":2: expected a JSON object, got list"),
    ([b'{"text": "a"}', b'{"text": "\xff\xfe"}'], r":2: expected UTF-8 JSON text, found binary data at byte 10 "),
])
def test_a_bad_line_names_file_and_line(tmp_path, lines, message):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(UserError, match=message) as e:
        list(read_jsonl(path))
    assert str(e.value).startswith(f"{path}:2: ") and "\n" not in str(e.value)


def test_a_cut_short_gzip_is_one_error(tmp_path):
    data = gzip.compress(b'{"text": "a"}\n' * 1000)
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cannot read"):
        list(read_jsonl(path))


def test_atomic_file_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_file(target, "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_named_toml_by_name_or_path(tmp_path):
    from llamaforge.io import named_toml

    (tmp_path / "a.toml").write_text("")
    assert named_toml("a", tmp_path, "recipe", "--recipe") == tmp_path / "a.toml"
    assert named_toml(str(tmp_path / "a.toml"), tmp_path / "elsewhere", "flow", "FLOW") == tmp_path / "a.toml"
    with pytest.raises(UserError, match=r"^--recipe: unknown recipe 'b'; known: a or a \.toml path$"):
        named_toml("b", tmp_path, "recipe", "--recipe")
    with pytest.raises(UserError, match=r"b\.toml: no such flow file$"):
        named_toml(str(tmp_path / "b.toml"), tmp_path, "flow", "FLOW")


@pytest.mark.parametrize("make,message", [
    (lambda p: None, r"x\.json: missing$"),
    (lambda p: p.mkdir(), r"x\.json: cannot read \(Is a directory\)$"),  # was an IsADirectoryError traceback
    (lambda p: p.write_bytes(b'{"a": '), r"x\.json: not valid JSON"),
    (lambda p: p.write_bytes(b'{"a": "\xff"}'), r"x\.json: not valid JSON .*utf-8"),
    (lambda p: p.write_text("[1, 2]"), r"x\.json: expected a JSON object, got list$"),
])
def test_one_json_object_reader_names_the_file(tmp_path, make, message):
    """`io.read_json` is what formats (config.json, params.json, tokenizer_config.json), token shard headers,
    checkpoint state and adapter configs read with: each mistake is one UserError naming the file."""
    from llamaforge.formats import read_tokenizer_config
    from llamaforge.io import read_json

    path = tmp_path / "x.json"
    make(path)
    for read in (read_json, read_tokenizer_config):
        with pytest.raises(UserError, match=message):
            read(path)
