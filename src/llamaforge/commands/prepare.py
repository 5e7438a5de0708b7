"""`llamaforge prepare SOURCE INPUT... --out DIR`: clean one of the paper's seven sources into gzip JSONL shards.

Writes `DIR/<source>-NNNNN.jsonl.gz` (one line per document: `{"text": ..., "meta": {...}}`, one output shard per
input shard) and `DIR/stats.json`, and prints a per-stage table. Rerunning into the same DIR resumes a killed run.
The Python API is `llamaforge.data.sources.prepare(source, inputs, out, **options)`.
"""

from __future__ import annotations

import argparse

# an option of another source arrives in args.extra, to be refused in one line naming the sources that take it
ACCEPTS_EXTRA_ARGS = True


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# which option groups each source takes: a source refuses the options it does not use (argparse: unrecognized)
SOURCE_GROUPS = {
    "commoncrawl": ("langid", "commoncrawl"),
    "c4": ("langid", "c4"),
    "github": (),
    "wikipedia": ("wikipedia",),
    "books": ("books",),
    "arxiv": (),
    "stackexchange": ("stackexchange",),
}


def input_layout(source: str) -> str:
    """The "Inputs:" paragraph of the source module's docstring: the file layout `prepare SOURCE` reads."""
    import importlib

    doc = importlib.import_module(f"llamaforge.data.sources.{source}").__doc__ or ""
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n")]
    return next((p for p in paragraphs if p.startswith("Inputs")), paragraphs[0])


def _add_groups(p: argparse.ArgumentParser, groups: tuple[str, ...]) -> None:
    if "langid" in groups:
        g = p.add_argument_group("language id")
        g.add_argument("--languages", type=_names, help="languages to keep, e.g. en or en,de")
        g.add_argument("--lang-threshold", type=float, help="min language score (commoncrawl 0.5, c4 0.99)")
        g.add_argument("--langid", help="fasttext (lid.176, commoncrawl default), fasttext:PATH, py3langid (c4 "
                                        "default) or resiliparse")
    if "commoncrawl" in groups:
        g = p.add_argument_group("commoncrawl")
        g.add_argument("--min-length", type=int, help="drop documents under this many characters (300)")
        g.add_argument("--dedup-group", type=int, help="line dedup over groups of this many shards (50; 0 = all)")
        g.add_argument("--wikipedia", nargs="+", metavar="PATH",
                       help="Wikipedia to train the CCNet LM and the reference classifier on, once, into OUT/models: "
                            "MediaWiki XML dumps (text + cited URLs) or `prepare wikipedia` output (text); "
                            "not with --models")
        g.add_argument("--models", help="a models folder built by an earlier run (OUT/models) instead of --wikipedia "
                                        "(giving both is refused)")
        g.add_argument("--keep-buckets", type=_names, help="perplexity buckets to keep (head,middle)")
        g.add_argument("--classifier-threshold", type=float, help="keep documents with P(reference) >= this (0.25)")
        g.add_argument("--lm-vocab", type=int, help="SentencePiece vocabulary, an upper bound (CCNet: 65536)")
        g.add_argument("--lm-scorer", choices=("auto", "kenlm", "numpy"),
                       help="perplexity scorer: KenLM's query module (the kenlm extra) or llamaforge's numpy one "
                            "(auto: kenlm when installed)")
        g.add_argument("--cutoff-sample", type=int,
                       help="crawl pages scored, once, to fix the head/middle cut-offs (10000)")
    if "c4" in groups:
        p.add_argument_group("c4").add_argument(
            "--badwords", help="the bad-words file, one entry a line (C4 used LDNOOBW en, e.g. ../shared/data/c4-badwords/en.txt), or none; without it the step is off and the table says so")
    if "wikipedia" in groups:
        p.add_argument_group("wikipedia").add_argument(
            "--languages", type=_names, help="dumps to use by language, e.g. en,de (default: the paper's 20)")
    if "books" in groups:
        p.add_argument_group("books").add_argument(
            "--near-dup-threshold", type=float, help="Jaccard similarity counted as duplicate (0.9)")
    if "stackexchange" in groups:
        p.add_argument_group("stackexchange").add_argument(
            "--max-sites", type=int, help="keep the N largest sites (the paper: 28)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One subcommand per source (`llamaforge prepare SOURCE INPUT... --out DIR`), each with its input layout as the
    description, the pipeline's options (--workers, --executor local|ray, --overwrite, --keep-work, --keep-dropped
    20, --max-doc-bytes, --no-progress) and only its own source options."""
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    for source, groups in SOURCE_GROUPS.items():
        layout = input_layout(source)
        p = sub.add_parser(source, help=layout.split(". ")[0], description=layout)
        p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders, laid out as described above")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
        p.add_argument("--executor", choices=("local", "ray"), default="local")
        p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
        p.add_argument("--overwrite", action="store_true", help="delete a previous run in --out instead of resuming")
        p.add_argument("--keep-work", action="store_true", help="keep intermediate shards under OUT/_work")
        p.add_argument("--keep-dropped", type=int, default=20, metavar="N",
                       help="write up to N dropped documents per stage and reason (and N removed lines per line "
                            "filter) to OUT/dropped/STAGE/REASON.jsonl (default 20; 0 = none)")
        p.add_argument("--max-doc-bytes", type=int, default=None, metavar="N",
                       help="drop documents larger than N bytes of UTF-8 as 'too_large' (default 64 MiB)")
        p.add_argument("--no-progress", action="store_true")
        _add_groups(p, groups)


OPTIONS = ("languages", "lang_threshold", "langid", "min_length", "dedup_group", "wikipedia", "models", "keep_buckets",
           "classifier_threshold", "lm_vocab", "lm_scorer", "cutoff_sample", "badwords", "near_dup_threshold", "max_sites")


def run(args: argparse.Namespace) -> int:
    """Run the source's pipeline (`data.sources.prepare`) over the inputs into --out and print the stage table. Returns
    0. Raises UserError for an option of another source or not of prepare at all, and for what the source refuses
    (missing inputs, files of another kind)."""
    from llamaforge.data.pipeline import format_stats_table
    from llamaforge.data.sources import prepare

    from llamaforge.data.sources import check_options
    from llamaforge.errors import UserError

    if args.extra:
        flag = next((a for a in args.extra if a.startswith("-")), args.extra[0]).partition("=")[0]
        key = flag.lstrip("-").replace("-", "_")
        if not flag.startswith("--") or key not in OPTIONS:
            raise UserError(f"{flag}: not an argument of prepare {args.source}; see llamaforge prepare {args.source} --help")
        check_options(args.source, [key], spell=lambda k: "--" + k.replace("_", "-"))
    options = {k: getattr(args, k) for k in OPTIONS if getattr(args, k, None) is not None}
    if options.get("dedup_group") == 0:
        options["dedup_group"] = None  # one group: every shard
    stats = prepare(args.source, args.inputs, args.out, workers=args.workers, executor=args.executor,
            ray_address=args.ray_address, progress=not args.no_progress, overwrite=args.overwrite,
            keep_work=args.keep_work, keep_dropped=args.keep_dropped, max_doc_bytes=args.max_doc_bytes, **options)
    print(format_stats_table(stats))
    print(f"wrote {len(stats['outputs'])} shards and stats.json to {args.out}")
    return 0
