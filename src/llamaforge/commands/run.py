"""`llamaforge run FLOW [--until STAGE] [--from STAGE] [--dry-run] [--section.key=value ...]`: the whole main job
from one config (prepare -> tokenizer -> tokenize -> train -> eval -> export -> report); see `llamaforge.run`.

FLOW is a .toml file or the name of a shipped flow (`demo`: the built-in corpus; `seven-sources`: the paper's seven
sources over ../shared/data)."""

from __future__ import annotations

ACCEPTS_EXTRA_ARGS = True  # --section.key=value overrides of the flow config


def add_arguments(parser) -> None:
    """FLOW, --until STAGE (report), --from STAGE, --dry-run, --no-progress; flow overrides (--section.key=value) arrive
    in `args.extra`."""
    from llamaforge.run.flow import STAGES

    parser.add_argument("flow", metavar="FLOW", help="a flow .toml file, or a shipped flow name (demo, seven-sources)")
    parser.add_argument("--until", choices=STAGES, default="report", help="stop after this stage")
    parser.add_argument("--from", dest="start", choices=STAGES, default=None,
                        help="redo this stage and the ones after it (their markers and outputs are removed)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the inputs found per source, the stages to run, estimated tokens and steps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.epilog = ("Any flow key can be overridden: --run.out=runs/x --train.set.training.steps=100 "
                     "--sources.books.inputs='[\"my/books\"]' --eval.limit=50")


def run(args) -> int:
    """Load FLOW with the overrides and run its stages from --from (or the first unfinished) to --until; with --dry-run
    print the plan instead (inputs found, stages to run, estimated tokens and steps). Returns 0; a config mistake is
    a UserError before any stage runs."""
    from llamaforge.run import Flow, describe, load_flow

    cfg = load_flow(args.flow, args.extra, dry_run=args.dry_run)
    flow = Flow(cfg, progress=not args.no_progress)
    if args.dry_run:
        print(describe(flow, until=args.until, start=args.start))
        return 0
    flow.run(until=args.until, start=args.start)
    return 0
