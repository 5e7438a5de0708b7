"""`llamaforge train --recipe NAME_OR_TOML [--out DIR] [--resume auto|PATH] [--section.key=value ...]`.

Also runs under `torchrun --nproc_per_node N -m llamaforge train ...` (FSDP2 / tensor parallel)."""

from __future__ import annotations

from llamaforge.commands.args import add_resume_arguments, check_out_free

ACCEPTS_EXTRA_ARGS = True  # --section.key=value overrides arrive in args.extra


def add_arguments(parser) -> None:
    """--recipe (a name or a .toml), --out (runs/<recipe>), --resume auto|PATH, --trust-checkpoint; config overrides
    (--section.key=value) arrive in `args.extra`."""
    parser.add_argument("--recipe", required=True, help="a recipe name (debug, demo, llama-7b ...) or a .toml file")
    parser.add_argument("--out", default=None, help="output folder (default runs/<recipe>)")
    add_resume_arguments(parser)
    parser.epilog = "Any config key can be overridden: --optim.lr=1e-3 --training.steps=100 --parallel.tp=2"


def run(args) -> int:
    """Load the recipe with the overrides and train (`train.train`, also under torchrun), with the `[eval]` section as
    the evaluation callback; rank 0 prints the final metrics and the model folder. Returns 0; a config or data
    mistake, or an OUT holding a previous run without --resume, is a UserError before training starts."""
    from pathlib import Path

    from llamaforge.eval import evaluator_from_section
    from llamaforge.train import load_config, train

    cfg = load_config(args.recipe, args.extra)
    out = Path(args.out) if args.out else Path("runs") / Path(args.recipe).stem
    check_out_free(out, args.resume)  # a new run over an old one would truncate its metrics
    on_eval = evaluator_from_section(cfg.eval, cfg.data.tokenizer)  # train/ does not import eval/: injected here
    summary = train(cfg, out, resume=args.resume, trust_checkpoint=args.trust_checkpoint, on_eval=on_eval)
    if summary.metrics:  # rank 0
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.metrics.items()}
        print(f"done: {shown}; final model in {summary.final}")
    return 0

