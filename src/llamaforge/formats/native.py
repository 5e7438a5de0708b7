"""llamaforge's own format: a folder with config.json (ModelArgs) and model.safetensors (Meta names).

A tokenizer file (tokenizer.model / tokenizer.json / tokenizer.bin) may sit beside them and is found by
`llamaforge.load_tokenizer(folder)`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from llamaforge.formats import copy_tokenizer
from llamaforge.io import atomic_dir, read_json
from llamaforge.formats.weights import args_from_dict, build_model, folder_config, read_safetensors

FORMAT_TAG = "llamaforge"


def detect(path: Path) -> bool:
    """Whether `path` is our native folder: config.json tagged `"format": "llamaforge"`."""
    config = folder_config(path)
    return config is not None and config.get("format") == FORMAT_TAG


def load(path: Path, device: torch.device, dtype: torch.dtype):
    """A `Transformer` from a native folder: config.json (the ModelArgs fields) and model.safetensors with
    Meta's parameter names, in `dtype` on `device`. Raises UserError for unknown config fields or mismatched tensors.
    """
    cfg = read_json(path / "config.json")
    cfg.pop("format", None)
    args = args_from_dict(cfg, path / "config.json")
    return build_model(args, read_safetensors(path / "model.safetensors"), path / "model.safetensors", device, dtype)


def save(model, path: Path, tokenizer_path=None, dtype: torch.dtype | None = None) -> None:
    """Write `model` as a native folder at `path`: config.json (ModelArgs + the format tag), model.safetensors
    (Meta's names, `dtype` if given) and the tokenizer when given. Written under a temporary name, then renamed.
    """
    config = {"format": FORMAT_TAG, **dataclasses.asdict(model.args)}
    # safetensors wants contiguous, unshared tensors.
    state = {k: (v.to(dtype) if dtype else v).detach().contiguous().cpu() for k, v in model.state_dict().items()
             if not (k == "output.weight" and model.args.tie_embeddings)}  # tied: the embedding is the output
    with atomic_dir(path) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer_path is not None:
            copy_tokenizer(tokenizer_path, tmp)
