"""The bad-input sweep (issue #18 item 3): every field of each model format's header and of the training config,
given 0, -1, a string and a huge number, is refused by the CLI with exit 2, exactly one `error:` line naming the
file and field, no traceback, and nothing written. In-process (`cli.main`), so it stays fast enough for CI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import one_error_line
from llamaforge import cli
from llamaforge.formats import save_model
from llamaforge.model import ModelArgs, Transformer

ARGS = ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16, max_seq_len=32,
                 norm_eps=1e-5)
BAD = [0, -1, "x", 10**15]
FLOAT_BAD = [0, -1.0, "x", 1e300, float("nan")]


def assert_refused(capsys, argv: list[str], *, names: str, nothing_at: Path | None = None):
    """cli.main(argv) exits 2 with one `error:` line that contains `names`; no exception escapes."""
    capsys.readouterr()
    rc = cli.main(argv)
    line = one_error_line(capsys, rc, names)
    if nothing_at is not None:
        assert not nothing_at.exists() and not list(nothing_at.parent.glob(f".{nothing_at.name}*"))
    return line


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = Transformer(ARGS).eval()
    root = tmp_path_factory.mktemp("formats")
    for fmt in ("native", "hf", "meta", "gguf"):
        save_model(model, root / (f"m.{fmt}" if fmt == "gguf" else fmt), format=fmt)
    return root


def _convert(src: Path, tmp_path: Path) -> tuple[list[str], Path]:
    dst = tmp_path / "out"
    return ["convert", str(src), str(dst), "--to", "native", "--no-tokenizer"], dst


HF_FIELDS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
             "intermediate_size", "max_position_embeddings"]
HF_FLOATS = ["rms_norm_eps", "rope_theta"]


@pytest.mark.parametrize("field", HF_FIELDS + HF_FLOATS)
def test_hf_config_fields(tiny, tmp_path, capsys, field):
    import shutil

    for value in (FLOAT_BAD if field in HF_FLOATS else BAD):
        src = tmp_path / "hf"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(tiny / "hf", src)
        config = json.loads((src / "config.json").read_text())
        config[field] = value
        config.pop("rope_parameters", None) if field == "rope_theta" else None
        (src / "config.json").write_text(json.dumps(config))
        argv, dst = _convert(src, tmp_path)
        assert_refused(capsys, argv, names=field, nothing_at=dst)


def test_hf_config_that_is_a_json_list(tiny, tmp_path, capsys):
    import shutil

    src = tmp_path / "hf"
    shutil.copytree(tiny / "hf", src)
    (src / "config.json").write_text("[1, 2]")
    argv, dst = _convert(src, tmp_path)
    assert_refused(capsys, argv, names="config.json: expected a JSON object", nothing_at=dst)


@pytest.mark.parametrize("fmt,file", [("native", "config.json"), ("meta", "params.json")])
def test_native_and_meta_header_fields(tiny, tmp_path, capsys, fmt, file):
    import shutil

    original = json.loads((tiny / fmt / file).read_text())
    fields = [k for k, v in original.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert {"dim", "n_layers", "n_heads", "vocab_size"} <= set(fields) or fmt == "meta"
    for field in fields:
        for value in (FLOAT_BAD if isinstance(original[field], float) else BAD):
            if fmt == "meta" and field == "vocab_size" and value == -1:
                continue  # Meta's own "take it from the embedding"
            src = tmp_path / fmt
            shutil.rmtree(src, ignore_errors=True)
            shutil.copytree(tiny / fmt, src)
            (src / file).write_text(json.dumps({**original, field: value}))
            argv, dst = _convert(src, tmp_path)
            assert_refused(capsys, argv, names=field, nothing_at=dst)


def rewrite_gguf(src: Path, dst: Path, key: str, value) -> None:
    """A copy of a GGUF file with metadata `key` set to `value` (its type follows the value: int, float, str)."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), "llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        val = field.contents()
        if field.name == key:
            vtype = {int: gguf.GGUFValueType.INT64, float: gguf.GGUFValueType.FLOAT64,
                     str: gguf.GGUFValueType.STRING}[type(value)]
            val, sub = value, None
        writer.add_key_value(field.name, val, vtype, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


GGUF_INTS = ["embedding_length", "block_count", "attention.head_count", "attention.head_count_kv",
             "feed_forward_length", "context_length"]
GGUF_FLOATS = ["attention.layer_norm_rms_epsilon", "rope.freq_base"]


@pytest.mark.parametrize("key", GGUF_INTS + GGUF_FLOATS)
def test_gguf_header_fields(tiny, tmp_path, capsys, key):
    for value in (FLOAT_BAD if key in GGUF_FLOATS else BAD):
        src = tmp_path / f"bad-{abs(hash(str(value)))}.gguf"
        rewrite_gguf(tiny / "m.gguf", src, f"llama.{key}", value)
        argv, dst = _convert(src, tmp_path)
        assert_refused(capsys, argv, names=f"llama.{key}", nothing_at=dst)


def test_gguf_rewrite_control(tiny, tmp_path, capsys):
    """The sweep's copier is faithful: an unchanged copy converts."""
    src = tmp_path / "same.gguf"
    rewrite_gguf(tiny / "m.gguf", src, "llama.block_count", 1)
    argv, dst = _convert(src, tmp_path)
    assert cli.main(argv) == 0 and dst.is_dir()


def test_truncated_gguf(tiny, tmp_path, capsys):
    data = (tiny / "m.gguf").read_bytes()
    for cut in (10, 200, len(data) // 2, len(data) - 7):
        src = tmp_path / "cut.gguf"
        src.write_bytes(data[:cut])
        argv, dst = _convert(src, tmp_path)
        assert_refused(capsys, argv, names=str(src), nothing_at=dst)


def test_convert_destination_whose_parent_is_a_file(tiny, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for to in ("native", "hf", "meta", "gguf", "llama2c"):
        dst = blocker / ("out.gguf" if to == "gguf" else "out")
        assert_refused(capsys, ["convert", str(tiny / "native"), str(dst), "--to", to, "--no-tokenizer"],
                       names=str(blocker))


@pytest.mark.parametrize("index,name", list(enumerate(
    ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len"])))
def test_llama2c_header_fields(tiny, tmp_path, capsys, index, name):
    import struct

    src_model = tmp_path / "m.bin"
    save_model(Transformer(ARGS).eval(), src_model, format="llama2c")
    data = bytearray(src_model.read_bytes())
    header_at = 8 if struct.unpack_from("<I", data)[0] == 0x616B3432 else 0  # v1: after magic and version
    for value in (0, -1, 2**31 - 1):
        if name == "vocab_size" and value == -1:
            continue  # llama2.c's "unshared classifier" sign
        bad = bytearray(data)
        struct.pack_into("<i", bad, header_at + 4 * index, value)
        src = tmp_path / "bad.bin"
        src.write_bytes(bytes(bad))
        argv, dst = _convert(src, tmp_path)
        assert_refused(capsys, argv, names=str(src), nothing_at=dst)


# ---------------------------------------------------------------------------------------------- training config


def _train_refused(capsys, tmp_path, override: str, names: str):
    out = tmp_path / "run"
    assert_refused(capsys, ["train", "--recipe", "debug", "--out", str(out), override], names=names, nothing_at=out)


def test_every_training_config_field_is_range_checked(tmp_path, capsys):
    """Each numeric field: 0, -1, a string, a huge number; refused in one line unless inside its stated range."""
    import dataclasses

    from llamaforge.errors import UserError
    from llamaforge.train.config import CHOICES, RANGES, TrainConfig, load_config

    numeric = set()
    for section in dataclasses.fields(TrainConfig):
        for f in dataclasses.fields(section.type if isinstance(section.type, type) else
                                    type(getattr(TrainConfig(), section.name))):
            if f.type in ("int", "float", int, float):
                numeric.add((section.name, f.name))
            else:
                assert f.type in ("str", "bool", "dict", str, bool, dict) or section.name == "model", f
    assert numeric == set(RANGES), numeric ^ set(RANGES)  # every numeric field has a stated range
    assert all(k[0] != "model" for k in CHOICES)
    for (section, key), (kind, low, high, bounds) in RANGES.items():
        for value in (0, -1, "x", 10**15, 1e300) + ((0.5, float("nan")) if kind is float else ()):
            shown = value if not isinstance(value, float) or value == value else "nan"
            override = f"--{section}.{key}={shown}"
            inside = not isinstance(value, str) and value == value and (
                (low < value if bounds[0] == "(" else low <= value)
                and (value < high if bounds[1] == ")" else value <= high)) and (kind is float or value == int(value))
            if inside:
                try:
                    load_config("debug", [override])
                except UserError as e:  # accepted by the field's range, refused by a cross-field rule: one line
                    assert "\n" not in str(e)
            else:
                _train_refused(capsys, tmp_path, override, names=f"{section}.{key}")


@pytest.mark.parametrize("override,names", [
    ("--optim.lr=-1", "optim.lr"), ("--optim.beta1=1.5", "optim.beta1"), ("--model.n_heads=0", "n_heads"),
    ("--model.n_heads=3", "n_heads"), ("--model.dim=-64", "dim"), ("--metrics.log_every=0", "metrics.log_every"),
    ("--training.batch_tokens=0", "training.batch_tokens"), ("--optim.warmup_steps=-5", "optim.warmup_steps"),
    ("--checkpoint.every=-1", "checkpoint.every"), ("--training.batch_tokens=64", "training.batch_tokens"),
    ("--optim.grad_clip=0", "optim.grad_clip"), ("--metrics.val_batches=0", "metrics.val_batches"),
    ("--parallel.dp_shard=0", "parallel.dp_shard"), ("--model.vocab_size=-1", "vocab_size"),
    ("--model.norm_eps=0", "norm_eps"), ("--model.n_layers=100000000", "n_layers"),
    ("--model.rope_theta=x", "rope_theta"),
])
def test_the_probed_training_mistakes(tmp_path, capsys, override, names):
    _train_refused(capsys, tmp_path, override, names)


def test_every_model_field_in_the_training_config(tmp_path, capsys):
    from llamaforge.formats.weights import MODEL_RANGES

    for name in MODEL_RANGES:
        for value in (0, -1, "x", 10**15):
            _train_refused(capsys, tmp_path, f"--model.{name}={value}", names=name)


def test_recipe_that_is_not_utf8(tmp_path, capsys):
    recipe = tmp_path / "bad.toml"
    recipe.write_bytes(b"[optim]\nlr = 1e-3 # caf\xe9\n")
    out = tmp_path / "run"
    assert_refused(capsys, ["train", "--recipe", str(recipe), "--out", str(out)], names="UTF-8", nothing_at=out)


def test_spike_guard_default_follows_the_paper():
    """Off by default except for non-finite values: an outlier z-score alone skips nothing."""
    from llamaforge.train.config import TrainConfig
    from llamaforge.train.trainer import SpikeGuard

    t = TrainConfig().training
    guard = SpikeGuard(t.spike_window, t.spike_zscore)
    for i in range(30):
        assert guard.check(3.0 - 0.01 * i, 1.0) is None
    assert guard.check(2.5, 50.0) is None  # z ~ inf against a flat window: still applied
    assert guard.check(float("nan"), 1.0) and guard.check(2.0, float("inf")) and guard.skipped == 2
    opt_in = SpikeGuard(50, 6.0)
    for i in range(30):
        opt_in.check(3.0 - 0.01 * i, 1.0 + 0.01 * (i % 3))
    assert opt_in.check(2.5, 50.0) is not None and opt_in.skipped == 1


# ---------------------------------------------------------------------------------------------- narrowing (#13.8)


@pytest.fixture(scope="module")
def big_weight(tmp_path_factory):
    """A native model with one weight of 1e5 (beyond fp16's 65504) and one of 1e7 (beyond q8_0's fp16 scale)."""
    torch.manual_seed(0)
    model = Transformer(ARGS).eval()
    with torch.no_grad():
        model.layers[0].attention.wq.weight[3, 5] = 1e5
        model.layers[0].feed_forward.w2.weight[1, 2] = -1e7
    path = tmp_path_factory.mktemp("big") / "native"
    save_model(model, path, format="native")
    return path


@pytest.mark.parametrize("to,dtype", [("native", "float16"), ("hf", "float16"), ("meta", "float16"),
                                      ("gguf", "float16"), ("gguf", "q8_0")])
def test_narrowing_that_overflows_is_refused_in_one_line(big_weight, tmp_path, capsys, to, dtype):
    dst = tmp_path / ("out.gguf" if to == "gguf" else "out")
    # fp16: the first tensor beyond 65504 (wq, 1e5); q8_0: only w2 (1e7 > 65504 * 127) breaks its fp16 scale
    named = "layers.0.feed_forward.w2.weight: max |value| 1e+07" if dtype == "q8_0" else \
        "layers.0.attention.wq.weight: max |value| 100000"
    assert_refused(capsys, ["convert", str(big_weight), str(dst), "--to", to, "--dtype", dtype, "--no-tokenizer"],
                   names=named, nothing_at=dst)


@pytest.mark.parametrize("to", ["native", "hf", "gguf"])
def test_saturate_clamps_and_the_logits_stay_finite(big_weight, tmp_path, capsys, to):
    from llamaforge.formats import load_model

    dst = tmp_path / ("out.gguf" if to == "gguf" else "out")
    assert cli.main(["convert", str(big_weight), str(dst), "--to", to, "--dtype", "float16", "--no-tokenizer",
                     "--saturate"]) == 0
    assert "saturated layers.0.attention.wq.weight" in capsys.readouterr().out
    model = load_model(dst).requires_grad_(False)
    assert float(model.layers[0].attention.wq.weight[3, 5]) == 65504.0
    assert float(model.layers[0].feed_forward.w2.weight[1, 2]) == -65504.0
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]]))).all()


def test_values_in_range_convert_unchanged(tmp_path, capsys):
    from llamaforge.formats import load_model

    model = Transformer(ARGS).eval()
    src, dst = tmp_path / "src", tmp_path / "dst"
    save_model(model, src, format="native")
    assert cli.main(["convert", str(src), str(dst), "--to", "hf", "--dtype", "float16", "--no-tokenizer"]) == 0
    back = load_model(dst)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v.half().float()), k


def test_truncated_gguf_read_for_its_tokenizer(tmp_path, capsys):
    """`convert` of a GGUF reads its embedded vocabulary first: a cut file is one line there too."""
    from llamaforge.errors import UserError
    from llamaforge.formats.gguf import load_tokenizer

    src = shared_gguf = None
    try:
        from conftest import shared_path

        shared_gguf = next(shared_path("llama-2-tiny-random-gguf").glob("*.gguf"))
    except (StopIteration, pytest.skip.Exception):
        pytest.skip("needs ../shared/data/llama-2-tiny-random-gguf")
    data = shared_gguf.read_bytes()
    assert load_tokenizer(shared_gguf) is not None  # the control: the whole file has a vocabulary
    for cut in (16, 1000, len(data) // 3):
        src = tmp_path / "cut.gguf"
        src.write_bytes(data[:cut])
        with pytest.raises(UserError) as e:
            load_tokenizer(src)
        assert str(src) in str(e.value) and "\n" not in str(e.value)
        dst = tmp_path / "out"
        assert_refused(capsys, ["convert", str(src), str(dst), "--to", "native"], names=str(src), nothing_at=dst)
