"""`llamaforge convert SRC DST --to native|hf|meta|llama2c|gguf [--shards N] [--dtype D] [--tokenizer PATH]`.

The source format is detected from SRC. DST is written under a temporary name and renamed at the end, so a
failed conversion leaves nothing behind.

The tokenizer travels with the model: `--tokenizer FILE`, else the one in SRC's folder, else the one embedded in a
GGUF file. Folders get it under its standard name (`tokenizer.model` ...), GGUF embeds it, llama2.c gets a
`tokenizer.bin` beside the file. With none of those, convert refuses unless `--no-tokenizer` says a model without
one is what is wanted (token ids in, token ids out).
"""

from __future__ import annotations

from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16", "q8_0")  # q8_0: llama.cpp's 8-bit blocks, gguf only


def add_arguments(parser) -> None:
    """SRC, DST, --to FORMAT, and --shards (meta only), --dtype (float32 default; q8_0 gguf only), --max-shard-size (hf
    only), --tokenizer, --no-tokenizer, --saturate."""
    from llamaforge.formats import FORMATS

    parser.add_argument("src", help="a checkpoint in any known format")
    parser.add_argument("dst", help="where to write the converted checkpoint")
    parser.add_argument("--to", required=True, choices=FORMATS, help="the output format")
    parser.add_argument("--shards", type=int, default=1, help="model-parallel files (meta only)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="tensor type to compute and store (default float32: exact for every source)")
    parser.add_argument("--max-shard-size", default=None, help="hf only: split into files of at most this size "
                        "(e.g. 5GB, 500MB) with model.safetensors.index.json; default 5GB")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer file to copy along (default: the one in SRC's folder or GGUF file)")
    parser.add_argument("--saturate", action="store_true",
                        help="with a narrower --dtype: clamp values beyond its range to its largest value instead "
                             "of refusing (fp16: 65504)")
    parser.add_argument("--no-tokenizer", action="store_true",
                        help="write the model without a tokenizer (otherwise a missing tokenizer is an error)")


def _tokenizer_file(src: Path, fmt: str, given, scratch: Path):
    """The tokenizer to carry over: the given file, the one in the source folder, or a GGUF's embedded vocabulary
    (written to `scratch` as a SentencePiece model); None when there is none."""
    from llamaforge.errors import UserError
    from llamaforge.tokenizer import TOKENIZER_FILES, load_tokenizer

    if given is not None:
        if not Path(given).is_file():
            raise UserError(f"{given}: --tokenizer: no such file")
        return Path(given)
    if src.is_dir():
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                return src / name
    if fmt == "llama2c" and (src.parent / "tokenizer.bin").is_file():  # llama2.c's convention (run.c's -z)
        return src.parent / "tokenizer.bin"
    if fmt == "gguf":
        from llamaforge.formats.gguf import load_tokenizer

        tok = load_tokenizer(src)
        if tok is not None:
            path = scratch / "tokenizer.model"
            path.write_bytes(tok.sp.serialized_model_proto())
            return path
    return None


def run(args) -> int:
    """Convert SRC (format detected) to DST in `--to`'s format with its tokenizer, loading in float32 and narrowing on
    write. Returns 0. Raises UserError, before anything is written, for DST == SRC, an option the target format does
    not take, no tokenizer found without --no-tokenizer, or a tokenizer with more ids than the model has embedding
    rows."""
    import tempfile

    import torch

    from llamaforge.commands.args import parse_bytes
    from llamaforge.errors import UserError
    from llamaforge.formats import check_tokenizer_fits, detect_format, load_model, save_model
    from llamaforge.tokenizer import TOKENIZER_FILES, load_tokenizer

    src, dst = Path(args.src), Path(args.dst)
    if src.resolve() == dst.resolve():
        raise UserError(f"{dst}: destination is the source; choose another path")
    if args.shards != 1 and args.to != "meta":
        raise UserError(f"--shards: only the meta format is split into model-parallel files, not {args.to}")
    if args.dtype == "q8_0" and args.to != "gguf":
        raise UserError(f"--dtype q8_0: only the gguf format stores it, not {args.to}")
    if args.max_shard_size is not None and args.to != "hf":
        raise UserError(f"--max-shard-size: only the hf format is split by size, not {args.to}")
    if args.no_tokenizer and args.tokenizer is not None:
        raise UserError("--no-tokenizer: cannot be given with --tokenizer")
    fmt = detect_format(src)
    dtype = getattr(torch, args.dtype) if args.dtype != "q8_0" else torch.float32
    options = {"dtype": args.dtype if args.dtype == "q8_0" else dtype, "saturate": args.saturate}
    if args.max_shard_size is not None:
        options["max_shard_size"] = parse_bytes(args.max_shard_size, "--max-shard-size")
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = None if args.no_tokenizer else _tokenizer_file(src, fmt, args.tokenizer, Path(scratch))
        if tokenizer is None and not args.no_tokenizer:
            looked = {"gguf": "in the GGUF file", "llama2c": "beside the file (tokenizer.bin)"}.get(
                fmt, "in the folder (" + ", ".join(TOKENIZER_FILES) + ")")
            raise UserError(f"{src}: no tokenizer found {looked}; give --tokenizer FILE (the model's tokenizer), "
                            "or --no-tokenizer for a model without one")
        if tokenizer is not None:
            options["tokenizer_path"] = tokenizer
        # Loaded in float32 and narrowed on write, after the range check (loading as fp16 would already be inf).
        model = load_model(src, dtype=torch.float32, format=fmt)
        if tokenizer is not None:  # a tokenizer with more ids than the model has rows is not its own: refuse
            check_tokenizer_fits(load_tokenizer(tokenizer), model)
        save_model(model, dst, format=args.to, shards=args.shards, **options)
    print(f"{src} ({fmt}) -> {dst} ({args.to}{f', {args.shards} shards' if args.shards != 1 else ''})")
    return 0
