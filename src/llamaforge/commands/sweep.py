"""`llamaforge sweep`: small pretraining runs that fit your own scaling law or tune lr against batch size.

    llamaforge sweep --out runs/iso --recipe debug --shapes 32x1,48x2,64x2,96x2 --budgets 3e10,1e11
    llamaforge sweep --out runs/lrb --recipe debug --mode lr-batch --lrs 1e-3,3e-3,1e-2 --batches 256,512,1024 \\
        --tokens 2e5
    Any recipe key can be overridden as in `train`: --data.seq_len=128 --training.micro_batch_size=2

Rerunning the same command after a kill skips finished runs and resumes the rest.
"""

from __future__ import annotations

ACCEPTS_EXTRA_ARGS = True  # --section.key=value overrides for the recipe arrive in args.extra


def add_arguments(p) -> None:
    """--out, --recipe (debug), --mode isoflop|lr-batch, the model family --shapes (DIMxLAYERS), IsoFLOP's --budgets,
    --min-steps, --target-budget, --inference-tokens, --bootstrap (100), lr-batch's --lrs, --batches, --tokens,
    --keep-preset-shape; recipe overrides arrive in `args.extra`."""
    p.add_argument("--out", required=True, help="sweep folder: grid.json, runs/, fit.json, plots")
    p.add_argument("--recipe", default="debug", help="the pretraining recipe every run starts from")
    p.add_argument("--mode", default="isoflop", choices=["isoflop", "lr-batch"])
    p.add_argument("--shapes", default="32x1,48x2,64x2,96x2,128x3",
                   help="model family, DIMxLAYERS items (head_dim 16); lr-batch uses the first")
    p.add_argument("--budgets", default="1e10,3e10,1e11", help="isoflop: training FLOPs per IsoFLOP curve")
    p.add_argument("--min-steps", type=int, default=4, help="isoflop: skip runs shorter than this")
    p.add_argument("--target-budget", default=None, help="isoflop: budget to recommend (N, D) for (default: largest)")
    p.add_argument("--inference-tokens", default="0", help="isoflop: tokens to serve, for the inference-aware choice")
    p.add_argument("--bootstrap", type=int, default=100, help="isoflop: bootstrap resamples for the uncertainty")
    p.add_argument("--lrs", default="1e-3,3e-3,1e-2,3e-2", help="lr-batch: peak learning rates")
    p.add_argument("--batches", default="256,512,1024", help="lr-batch: batch sizes in tokens")
    p.add_argument("--tokens", default="2e5", help="lr-batch: training tokens of every run")
    p.add_argument("--keep-preset-shape", action="store_true", help="lr-batch: the recipe's model, not --shapes")


def run(args) -> int:
    """Run the sweep (`plan.sweep.isoflop_sweep` or `lr_batch_sweep`; finished runs are skipped on a rerun) and print
    the fit: the law's constants with bootstrap intervals and the recommended (N, D), or the best lr per batch size
    and its exponent. Returns 0; UserError for an unparsable list or count."""
    from llamaforge.commands.args import parse_count, parse_counts, parse_shapes
    from llamaforge.plan import sweep

    shapes = parse_shapes(args.shapes)
    if args.mode == "lr-batch":
        result = sweep.lr_batch_sweep(
            args.out, args.recipe, args.extra, None if args.keep_preset_shape else shapes[0],
            parse_counts(args.lrs, "--lrs"), [int(b) for b in parse_counts(args.batches, "--batches")],
            parse_count(args.tokens, "--tokens"),
        )
        for batch, v in result["per_batch"].items():
            print(f"batch {batch:>8} tokens: best lr {v['best_lr']:.3g} (val loss {v['best_loss']:.4f})")
        print(f"best lr ∝ batch^{result['exponent']:.2f}: should the lr scale with the batch? {result['answer']}")
        print(f"wrote {args.out}/lr_batch.json and lr_batch.png")
        return 0

    target = parse_count(args.target_budget, "--target-budget") if args.target_budget else None
    result = sweep.isoflop_sweep(
        args.out, args.recipe, args.extra, shapes, parse_counts(args.budgets, "--budgets"), target,
        parse_count(args.inference_tokens, "--inference-tokens"), args.bootstrap, args.min_steps,
    )
    c, se = result["constants"], result["stderr"]
    print(f"fitted over {result['n_runs']} runs: L(N, D) = E + A/N^alpha + B/D^beta")
    for k in ("E", "A", "B", "alpha", "beta"):
        lo, hi = result["interval_95"][k]
        print(f"  {k:<6} {c[k]:>12.4g} ± {se[k]:.3g}   (95% bootstrap interval {lo:.4g} .. {hi:.4g})")
    rec = result.get("recommended")
    if rec:
        shown = rec if parse_count(args.inference_tokens, "--inference-tokens") > 0 else {"compute-optimal": rec["compute-optimal"]}
        for name, a in shown.items():
            print(f"{name:<16} at {result['target_budget']:.3g} FLOPs: N = {a['n_params']:.4g} parameters, "
                  f"D = {a['n_tokens']:.4g} tokens, predicted loss {a['loss']:.4f}")
    else:
        print(f"no recommendation: the fitted law is degenerate ({result.get('recommended_error')})")
    print(f"wrote {args.out}/fit.json, isoflop.png and frontier.png (use it: llamaforge plan --budget C "
          f"--constants {args.out}/fit.json)")
    return 0
