"""`llamaforge tokenizer train`: a SentencePiece BPE tokenizer with Meta's trainer spec (SPEC.md §3)."""

from __future__ import annotations


def add_arguments(parser):
    """The `train` action: --input, --vocab-size, --out PREFIX, --max-sentences (2,000,000), --seed (0), --verbose."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("train", help="train a SentencePiece BPE model with Meta's LLaMA trainer spec")
    p.add_argument("--input", nargs="+", required=True, metavar="DIR_OR_FILE",
                   help="prepared JSONL shards (plain or .gz) or text files; a folder means the ones in it")
    p.add_argument("--vocab-size", type=int, required=True, help="number of pieces (LLaMA: 32000)")
    p.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--max-sentences", type=int, default=2_000_000,
                   help="train on a uniform sample of at most this many lines (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the line sample (default: %(default)s)")
    p.add_argument("--verbose", action="store_true", help="show SentencePiece's training log")


def run(args) -> int:
    """Train a SentencePiece BPE tokenizer with Meta's trainer spec on the inputs
    (`data.tokenizer_training.train_tokenizer`), writing PREFIX.model and PREFIX.vocab, and print its size. Returns
    0; UserError for counts below 1, missing inputs, binary files given as text, or a vocabulary the sample cannot
    fill."""
    from llamaforge import load_tokenizer
    from llamaforge.data.tokenizer_training import train_tokenizer

    path = train_tokenizer(args.input, args.vocab_size, args.out, max_sentences=args.max_sentences, seed=args.seed,
                           verbose=args.verbose)
    tok = load_tokenizer(path)
    print(f"wrote {path} ({tok.vocab_size} pieces)")
    return 0
