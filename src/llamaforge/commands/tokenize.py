"""`llamaforge tokenize`: JSONL documents to memory-mapped token shards (one folder per source)."""

from __future__ import annotations

import json


def add_arguments(parser):
    """--tokenizer, --input (JSONL files or folders), --out DIR, --source NAME, --workers (1)."""
    parser.add_argument("--tokenizer", required=True, help="a tokenizer file or a model folder holding one")
    parser.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_DIR",
                        help='JSONL files ({"text": ...} per line, plain or .gz); a folder means its *.jsonl(.gz)')
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="writes DIR/SOURCE/{header.json,tokens.bin,offsets.bin}")
    parser.add_argument("--source", help="source name (default: the first input's name without extensions)")
    parser.add_argument("--workers", type=int, default=1, help="tokenizer processes (default: %(default)s)")


def run(args) -> int:
    """Tokenize the inputs into OUT/SOURCE (`data.shards.tokenize`) and print the shard's documents, tokens, dtype,
    bytes per token and skipped empty documents. Returns 0; UserError for missing inputs, a bad JSONL line
    (FILE:LINE) or an unusable tokenizer."""
    from llamaforge.data.shards import HEADER, tokenize

    folder = tokenize(args.input, args.tokenizer, args.out, source=args.source, workers=args.workers, progress=True)
    header = json.loads((folder / HEADER).read_text())
    print(f"wrote {folder}: {header['n_docs']} documents, {header['n_tokens']} tokens ({header['dtype']}), "
          f"{header['n_bytes'] / header['n_tokens']:.2f} bytes/token, {header['n_empty_skipped']} empty skipped")
    return 0
