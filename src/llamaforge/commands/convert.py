"""`llamaforge convert SRC DST --to native|hf|meta|llama2c|gguf [--shards N] [--dtype D] [--tokenizer PATH]`.

The source format is detected from SRC. DST is written under a temporary name and renamed at the end, so a
failed conversion leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16", "q8_0")  # q8_0: llama.cpp's 8-bit blocks, gguf only


def add_arguments(parser) -> None:
    from llamaforge.formats import FORMATS

    parser.add_argument("src", help="a checkpoint in any known format")
    parser.add_argument("dst", help="where to write the converted checkpoint")
    parser.add_argument("--to", required=True, choices=FORMATS, help="the output format")
    parser.add_argument("--shards", type=int, default=1, help="model-parallel files (meta only)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="tensor type to compute and store (default float32: exact for every source)")
    parser.add_argument("--max-shard-size", default=None, help="hf only: split into files of at most this size "
                        "(e.g. 5GB, 500MB) with model.safetensors.index.json; default 5GB")
    parser.add_argument("--tokenizer", default=None, help="tokenizer file to copy along (default: the one in SRC)")


def _tokenizer_file(src: Path, given):
    """The tokenizer to carry over: the given file, or the one in the source folder, if any."""
    from llamaforge.errors import UserError
    from llamaforge.tokenizer import TOKENIZER_FILES

    if given is not None:
        if not Path(given).is_file():
            raise UserError(f"{given}: --tokenizer: no such file")
        return Path(given)
    if src.is_dir():
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                return src / name
    return None


def run(args) -> int:
    import torch

    from llamaforge.errors import UserError
    from llamaforge.formats import detect_format, load_model, save_model

    src, dst = Path(args.src), Path(args.dst)
    if src.resolve() == dst.resolve():
        raise UserError(f"{dst}: destination is the source; choose another path")
    if args.shards != 1 and args.to != "meta":
        raise UserError(f"--shards: only the meta format is split into model-parallel files, not {args.to}")
    if args.dtype == "q8_0" and args.to != "gguf":
        raise UserError(f"--dtype q8_0: only the gguf format stores it, not {args.to}")
    if args.max_shard_size is not None and args.to != "hf":
        raise UserError(f"--max-shard-size: only the hf format is split by size, not {args.to}")
    fmt = detect_format(src)
    dtype = getattr(torch, args.dtype) if args.dtype != "q8_0" else torch.float32
    model = load_model(src, dtype=dtype, format=fmt)
    options = {"dtype": args.dtype if args.dtype == "q8_0" else dtype}
    if args.max_shard_size is not None:
        options["max_shard_size"] = args.max_shard_size
    tokenizer = _tokenizer_file(src, args.tokenizer)
    if tokenizer is not None and args.to != "llama2c":
        options["tokenizer_path"] = tokenizer
    save_model(model, dst, format=args.to, shards=args.shards, **options)
    print(f"{src} ({fmt}) -> {dst} ({args.to}{f', {args.shards} shards' if args.shards != 1 else ''})")
    return 0
