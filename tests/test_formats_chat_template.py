"""The chat template beside a tokenizer travels into every export through one reader (`formats.chat_template_of`),
in both of HF's spellings: a string, or the list of named templates transformers writes (the "default" one)."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import shared_path
from llamaforge.errors import UserError
from llamaforge.formats import chat_template_of, save_model
from llamaforge.model import ModelArgs, Transformer

SOURCE = "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"


@pytest.mark.parametrize("spelling", ["string", "named list"])
def test_template_beside_the_tokenizer_reaches_hf_and_gguf(tmp_path, spelling):
    from gguf import GGUFReader

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(shared_path("llama2-tokenizer/tokenizer.model"), src / "tokenizer.model")
    template = SOURCE if spelling == "string" else [{"name": "tool_use", "template": "{{ tools }}"},
                                                    {"name": "default", "template": SOURCE}]
    (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    assert chat_template_of(src / "tokenizer.model") == SOURCE

    model = Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=32000, multiple_of=16))
    save_model(model, tmp_path / "hf", format="hf", tokenizer_path=src / "tokenizer.model")
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["chat_template"] == SOURCE
    save_model(model, tmp_path / "m.gguf", format="gguf", tokenizer_path=src / "tokenizer.model")
    field = GGUFReader(tmp_path / "m.gguf").fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode() == SOURCE


def test_no_config_or_no_template_is_none(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"")
    assert chat_template_of(tmp_path / "tokenizer.model") is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    assert chat_template_of(tmp_path / "tokenizer.model") is None


@pytest.mark.parametrize("config, match", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"chat_template": [{"name": "rag", "template": "x"}]}), "chat_template: expected"),
    (json.dumps({"chat_template": 3}), "chat_template: expected"),
])
def test_one_rule_for_exports_and_serving(tmp_path, config, match):
    """A broken tokenizer_config.json is the same one-line error whether a model is exported (which used to drop
    the template silently) or served with its template."""
    from llamaforge.infer.templates import load_chat_format
    from llamaforge.tokenizer import load_tokenizer

    shutil.copy(shared_path("llama2-tokenizer/tokenizer.model"), tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(config)
    with pytest.raises(UserError, match=match) as exported:
        chat_template_of(tmp_path / "tokenizer.model")
    tok = load_tokenizer(tmp_path / "tokenizer.model")
    for name in ("auto", str(tmp_path / "tokenizer_config.json")):
        with pytest.raises(UserError, match=match) as served:
            load_chat_format(name, tok)
        assert str(served.value) == str(exported.value)


@pytest.mark.parametrize("spelling", ["string", "named list"])
def test_template_beside_the_tokenizer_is_served(tmp_path, spelling):
    """`infer.templates` reads the template through the same reader, in both spellings."""
    from llamaforge.infer.templates import load_chat_format
    from llamaforge.tokenizer import load_tokenizer

    shutil.copy(shared_path("llama2-tokenizer/tokenizer.model"), tmp_path / "tokenizer.model")
    template = SOURCE if spelling == "string" else [{"name": "tool_use", "template": "{{ tools }}"},
                                                    {"name": "default", "template": SOURCE}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "bos_token": "<s>"}))
    tok = load_tokenizer(tmp_path / "tokenizer.model")
    dialog = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    want = [tok.bos_id] + tok.encode("user: hi\nassistant: yo\n")
    for name in ("auto", str(tmp_path / "tokenizer_config.json")):
        assert load_chat_format(name, tok).render(dialog).ids == want
