"""Checkpoint interop: one module per format, each with `detect(path) -> bool`, `load(path, device, dtype)`
and `save(model, path, **options)`. The format is detected from the path.

| format  | on disk                                                         |
|---------|-----------------------------------------------------------------|
| native  | folder: config.json (ModelArgs) + model.safetensors (Meta names) |
| hf      | folder: config.json (LlamaForCausalLM) + safetensors (sharded)   |
| meta    | folder: params.json + consolidated.NN.pth (model parallel)       |
| llama2c | file: .bin, v0 (7-int header) or v1 (magic 0x616b3432)           |
| gguf    | file: .gguf (llama.cpp)                                          |
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from llamaforge.errors import UserError
from llamaforge.tokenizer import TOKENIZER_FILES

FORMATS = ("native", "hf", "meta", "llama2c", "gguf")
# A model folder carries its tokenizer under the name `load_tokenizer(folder)` looks for, whatever the file was
# called before (a trainer's `llama8k.model` becomes `tokenizer.model`): the same names Meta's and HF's folders use.
TOKENIZER_NAMES = {Path(name).suffix: name for name in TOKENIZER_FILES}  # .model -> tokenizer.model ...
# A `.tiktoken` BPE file is what Meta ships for Llama 3 as `tokenizer.model`; `load_tokenizer` tells it from a
# SentencePiece `.model` by content, so it travels under that name (the only name the folder lookup finds it by).
TOKENIZER_NAMES[".tiktoken"] = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"  # travels with the tokenizer file when it sits beside it


def copy_tokenizer(tokenizer_path, folder) -> Path:
    """Copy a tokenizer file into a model folder under its standard name (`TOKENIZER_NAMES`); returns the copy.
    A `.tiktoken` file becomes `tokenizer.model` (Meta's Llama 3 name; the loader reads it by content).

    A `tokenizer_config.json` beside the file (special tokens, chat template) is copied along.
    Raises UserError for a file that is missing or of a type no loader reads."""
    import shutil

    src = Path(tokenizer_path)
    if not src.is_file():
        raise UserError(f"{src}: tokenizer: no such file")
    name = TOKENIZER_NAMES.get(src.suffix)
    if name is None:
        raise UserError(f"{src}: tokenizer: expected a .model, .tiktoken, .json or .bin file")
    dst = Path(folder) / name
    shutil.copy(src, dst)
    config = src.parent / TOKENIZER_CONFIG  # HF's companion file: special tokens, the chat template
    if config.is_file() and config.resolve() != (Path(folder) / TOKENIZER_CONFIG).resolve():
        shutil.copy(config, Path(folder) / TOKENIZER_CONFIG)
    return dst


def read_tokenizer_config(path) -> dict:
    """The JSON object of a tokenizer_config.json (HF's companion of a tokenizer: special tokens, chat template).
    Raises UserError naming the file when it is missing, not JSON, or not an object."""
    from llamaforge.io import read_json

    return read_json(path)


def chat_template_in(config: dict, path) -> str | None:
    """The Jinja `chat_template` of a tokenizer_config.json's object `config` (read from `path`, named in errors);
    None when the config has no `chat_template` key.

    HF's list form (`[{"name": "default", "template": ...}, ...]`, transformers' named templates) gives the one
    named "default", as `apply_chat_template` does without a name. Raises UserError when the field is neither a
    string nor such a list with a "default" string: the one rule for serving (`infer.templates`) and exports."""
    template = config.get("chat_template")
    if template is None:
        return None
    if isinstance(template, list):
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    if not isinstance(template, str):
        raise UserError(f"{path}: chat_template: expected a Jinja template string or a list of named templates "
                        "with one named 'default'")
    return template


def chat_template_of(tokenizer_path) -> str | None:
    """The Jinja `chat_template` of the tokenizer_config.json beside a tokenizer file (a finetuned model's
    template, `llamaforge finetune`; an HF Instruct model's), or None when there is no such file or template.

    The exports (hf_tokenizer, gguf) carry the template through this one reader; the rule is `chat_template_in`'s.
    Raises UserError when the config is not a JSON object or its chat_template is malformed (an export does not
    drop a broken template silently)."""
    config = Path(tokenizer_path).parent / TOKENIZER_CONFIG
    if not config.is_file():
        return None
    return chat_template_in(read_tokenizer_config(config), config)


def _module(fmt: str):
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return importlib.import_module(f"llamaforge.formats.{fmt}")


def _adapter_message(path: Path) -> str:
    """What to do with a LoRA adapter folder (PEFT's adapter_config.json + adapter_model.safetensors, as PEFT and
    `llamaforge finetune --method lora` write it) given where a model is expected: it is not a model; merge it onto
    its base (named from the config's `base_model_name_or_path` when it says) with the Python API the README shows."""
    import json

    try:
        base = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        base = None
    base = base if isinstance(base, str) and base else "BASE"
    return (f"{path}: a LoRA adapter (PEFT adapter_config.json + adapter_model.safetensors), not a model; merge it onto "
            f"its base {base} first: python -c \"import llamaforge; from llamaforge.train.lora import load_adapter, "
            f"merge_lora; m = llamaforge.load_model('{base}'); load_adapter(m, '{path}'); "
            f"llamaforge.save_model(merge_lora(m), 'merged')\" (a finetune run's final/ is that merged model already)")


def detect_format(path) -> str:
    """The format of the checkpoint at `path`: one of FORMATS, asked of each format's `detect` in order.

    Raises UserError when `path` does not exist, when a native/HF folder's config.json is unreadable, or when no
    format recognizes it (the message lists what each format looks like on disk).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if (path / "config.json").is_file() and not (path / "params.json").is_file():
        from llamaforge.io import read_json

        read_json(path / "config.json")  # a native or HF folder: an unreadable config is named as such
    for fmt in FORMATS:
        try:
            mod = _module(fmt)
        except ModuleNotFoundError:
            continue
        if mod.detect(path):
            return fmt
    if (path / "adapter_config.json").is_file():
        raise UserError(_adapter_message(path))
    raise UserError(
        f"{path}: unknown checkpoint format; expected a native or HF folder (config.json + safetensors), "
        "a Meta folder (params.json + consolidated.NN.pth), a llama2.c .bin or a .gguf file"
    )


def check_device(device) -> torch.device:
    """`device` (a string like "cpu", "cuda", "cuda:1", or a torch.device) as a torch.device that exists here.

    Raises UserError naming the device when torch cannot parse it, or when it names a CUDA / MPS device this
    machine or this torch build does not have (torch would raise AssertionError or RuntimeError deep inside the
    first tensor move)."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"--device: expected a torch device such as cpu, cuda or cuda:0, got {device!r}") from None
    if d.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
            raise UserError(f"--device: {device!r}: {why}; expected cpu")
        if d.index is not None and d.index >= count:
            raise UserError(f"--device: {device!r}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})")
    elif d.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device: {device!r}: MPS is not available here; expected cpu")
    return d


def load_model(path, device="cpu", dtype=torch.float32, format: str | None = None):
    """Load a checkpoint of any known format into a `Transformer` (weights only, never code).
    Raises UserError for an unknown format or a `device` this machine lacks (`check_device`)."""
    device = check_device(device)
    fmt = format or detect_format(path)
    model = _module(fmt).load(Path(path), device=device, dtype=dtype)
    model.eval()
    return model


def find_tokenizer(path, fmt: str | None = None):
    """The tokenizer that belongs to the checkpoint at `path`, or None. In this order: the vocabulary inside a
    GGUF file (`tokenizer.ggml.*`); a tokenizer file (tokenizer.model, tokenizer.json, tokenizer.bin, in that
    order) inside a model folder, beside a model file, or (Meta's download layout) in a Meta folder's parent."""
    from llamaforge.tokenizer import load_tokenizer

    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "gguf":
        from llamaforge.formats.gguf import load_tokenizer as gguf_tokenizer

        embedded = gguf_tokenizer(path)
        if embedded is not None:
            return embedded
    folders = [path] if path.is_dir() else [path.parent]
    if fmt == "meta":
        folders.append(path.parent)
    for folder in folders:
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                return load_tokenizer(folder / name)
    return None


def check_tokenizer_fits(tok, model) -> None:
    """Raise UserError when tokenizer `tok` has more tokens than `model` has embedding rows: it is not the model's
    tokenizer (its ids past the table would index out of range). Fewer is fine (a vocabulary padded to a multiple
    of 64). Used wherever a model is paired with a tokenizer: loading for inference and `convert --tokenizer`."""
    if tok.vocab_size > model.args.vocab_size:
        raise UserError(f"{tok.path}: tokenizer has {tok.vocab_size} tokens, the model only "
                        f"{model.args.vocab_size} embedding rows; expected the model's own tokenizer")


def load_model_and_tokenizer(path, tokenizer=None, device="cpu", dtype=torch.float32, format: str | None = None):
    """A checkpoint of any format and its tokenizer: (Transformer, tokenizer). The one lookup every command uses.

    tokenizer: an explicit tokenizer file or folder (`llamaforge.load_tokenizer`); None: `find_tokenizer`'s rules
    (GGUF's embedded vocabulary, then a tokenizer file inside the model folder or beside the model file).
    Raises UserError when no tokenizer is found, or when the tokenizer has more tokens than the model has
    embedding rows (it is not the model's). A model with more rows than the tokenizer has tokens (a vocabulary
    padded to a multiple of 64) is fine: the engine never samples the extra ids."""
    from llamaforge.tokenizer import load_tokenizer

    path = Path(path)
    fmt = format or detect_format(path)
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    else:
        tok = find_tokenizer(path, fmt)
        if tok is None:
            raise UserError(f"{path}: no tokenizer found (none inside the model, no tokenizer.model, tokenizer.json "
                            "or tokenizer.bin beside it); give the tokenizer file (--tokenizer)")
    model = load_model(path, device=device, dtype=dtype, format=fmt)
    check_tokenizer_fits(tok, model)
    return model, tok


def save_model(model, path, format: str = "native", shards: int = 1, **options) -> Path:
    """Write `model` in `format` at `path` (written under a temporary name, then renamed).

    options: dtype (a narrower type is range-checked first: `formats.weights.check_narrowing` refuses a tensor that
    would overflow, or clamps it with saturate=True), tokenizer_path, and the format's own."""
    mod = _module(format)
    for parent in Path(path).parents:  # checked first, so nothing is half-written under a wrong destination
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{parent}: not a folder; cannot write {path} inside it")
    from llamaforge.formats.weights import check_narrowing

    for note in check_narrowing(model, options.get("dtype"), saturate=options.pop("saturate", False),
                                vectors_stay_f32=format == "gguf"):
        print(note)
    if shards != 1:
        options["shards"] = shards
    mod.save(model, Path(path), **options)
    return Path(path)
