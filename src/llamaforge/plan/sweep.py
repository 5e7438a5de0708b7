"""Sweeps of small pretraining runs: fit your own scaling law, or ask how the learning rate should follow the batch.

IsoFLOP mode (Hoffmann et al. 2022, approaches 2 and 3): for each compute budget C and each model shape in a
family, train for D = C / FLOPs-per-token tokens (the project's one FLOP formula, `train.metrics`), with the
pretraining recipe (`llamaforge.train`), and record the final validation loss. Then
- fit L(N, D) = E + A/N^alpha + B/D^beta to all runs (`scaling.fit`: Huber on log-loss, L-BFGS, bootstrap),
  with N = non-embedding parameters;
- recommend the compute-optimal (N, D) for a target budget from the fitted law (and the inference-aware one
  when a serving volume is given);
- plot the IsoFLOP curves (loss against N per budget, with a parabola in log N through each) and the frontier
  (the fitted law's compute-optimal N against C, with the parabolas' minima).

LR-batch mode: at one model shape and one token budget, train every (learning rate, batch size) pair, take the
best learning rate per batch size (a parabola through the three best points in log lr), and fit
best_lr ∝ batch^k: k ≈ 0 says "keep the learning rate", 0.5 "scale with the square root", 1 "scale linearly".

Resuming: the design is written first (`grid.json`), each run trains in `runs/<name>/` (the trainer's own
checkpoints and `--resume auto`) and is marked done by an atomically written `runs/<name>/result.json`; a
restarted sweep skips finished runs, resumes the others, and refits. Results: `fit.json` / `lr_batch.json`
and the PNG plots, all written atomically.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llamaforge.errors import UserError
from llamaforge.io import atomic_file

# ---------------------------------------------------------------------------------------------------------------
# The design


@dataclass(frozen=True)
class Shape:
    """One model of a sweep's family: `dim` and `n_layers`, with heads of `head_dim` (16) each and no grouped-query
    attention."""
    dim: int
    n_layers: int
    head_dim: int = 16

    @property
    def name(self) -> str:
        """The run's name part, e.g. `d64l2` for dim 64, 2 layers."""
        return f"d{self.dim}l{self.n_layers}"

    def overrides(self) -> dict:
        """The ModelArgs fields this shape sets: dim, n_layers, n_heads = n_kv_heads = dim // head_dim (>= 1)."""
        heads = max(1, self.dim // self.head_dim)
        return {"dim": self.dim, "n_layers": self.n_layers, "n_heads": heads, "n_kv_heads": heads}


def _base_config(recipe: str, overrides: list[str]):
    from llamaforge.train import load_config

    return load_config(recipe, overrides)


def _run_config(base, shape: Shape | None, steps: int, lr: float | None = None, batch_tokens: int | None = None):
    """The recipe with one run's model shape, length and optimizer settings."""
    import copy

    cfg = copy.deepcopy(base)
    if shape is not None:
        cfg.model.overrides.update(shape.overrides())
    cfg.training.steps = steps
    if lr is not None:
        cfg.optim.lr = lr
    if batch_tokens is not None:
        cfg.training.batch_tokens = batch_tokens
    cfg.optim.warmup_steps = min(cfg.optim.warmup_steps, max(1, steps // 4))  # a short run still decays
    cfg.checkpoint.every = max(1, steps // 2)  # a killed run resumes from its last checkpoint
    cfg.checkpoint.keep_last_k = 1
    cfg.checkpoint.export_hf = False
    cfg.metrics.val_every = 0  # validate once, at the end: that is the number the fit uses
    cfg.metrics.progress = False
    cfg.metrics.tensorboard = False
    return cfg


def isoflop_grid(base, shapes: list[Shape], budgets: list[float], min_steps: int = 4) -> list[dict]:
    """One run per (budget, shape) whose token count gives at least `min_steps` optimizer steps."""
    from llamaforge.plan.flops import flops_per_token, non_embedding_params

    runs = []
    for budget in budgets:
        for shape in shapes:
            cfg = _run_config(base, shape, 1)
            try:
                args = cfg.model_args()
            except ValueError as e:
                raise UserError(f"--shapes: {shape.dim}x{shape.n_layers}: {e}") from None
            fpt = flops_per_token(args, cfg.data.seq_len)
            steps = round(budget / fpt / cfg.training.batch_tokens)
            if steps < min_steps:
                continue
            runs.append({
                "name": f"C{budget:.3g}_{shape.name}".replace("+", ""),
                "budget": budget,
                "shape": [shape.dim, shape.n_layers, shape.head_dim],
                "steps": steps,
                "n_params": non_embedding_params(args),
                "tokens": steps * cfg.training.batch_tokens,
                "flops": steps * cfg.training.batch_tokens * fpt,
            })
    if len(runs) < 5:
        raise UserError(
            f"--budgets/--shapes: the grid has {len(runs)} runs of at least {min_steps} steps; a fit needs 5 or more "
            "(raise the budgets or add smaller shapes)"
        )
    return runs


def lr_batch_grid(base, shape: Shape | None, lrs: list[float], batches: list[int], tokens: float) -> list[dict]:
    """One run per (batch, lr): `tokens` rounded to whole steps of `batch` tokens, the same data for every lr at a batch
    size. Raises UserError when a batch is not a multiple of seq_len x micro_batch_size (the trainer accumulates
    whole micro-batches) or gives fewer than 2 steps."""
    runs = []
    for batch in batches:
        per_micro = base.data.seq_len * base.training.micro_batch_size
        if batch % per_micro:
            raise UserError(f"--batches: {batch} is not a multiple of seq_len x micro_batch_size = {per_micro}")
        steps = round(tokens / batch)
        if steps < 2:
            raise UserError(f"--tokens: {tokens:g} tokens give fewer than 2 steps at batch {batch}")
        for lr in lrs:
            runs.append({"name": f"b{batch}_lr{lr:.3g}", "lr": lr, "batch_tokens": batch, "steps": steps,
                         "shape": [shape.dim, shape.n_layers, shape.head_dim] if shape else None,
                         "tokens": steps * batch})
    return runs


# ---------------------------------------------------------------------------------------------------------------
# Running


def _write_json(path: Path, data) -> None:
    with atomic_file(path, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")


def load_or_write_grid(out: Path, design: dict) -> dict:
    """The sweep's design, written once; a restart must ask for the same design."""
    path = out / "grid.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != json.loads(json.dumps(design)):
            raise UserError(f"{path}: this folder holds a different sweep; use another --out or the same arguments")
        return saved
    _write_json(path, design)
    return design


def run_all(out: Path, base, runs: list[dict], log=print) -> list[dict]:
    """Train every run not yet done; return all results (one dict per run, with its final val_loss)."""
    from llamaforge.train import train

    results = []
    for i, run in enumerate(runs):
        run_dir = out / "runs" / run["name"]
        done = run_dir / "result.json"
        if done.exists():
            results.append(json.loads(done.read_text()))
            log(f"[{i + 1}/{len(runs)}] {run['name']}: done earlier, val loss {results[-1]['val_loss']:.4f}")
            continue
        shape = Shape(*run["shape"]) if run.get("shape") else None
        cfg = _run_config(base, shape, run["steps"], run.get("lr"), run.get("batch_tokens"))
        log(f"[{i + 1}/{len(runs)}] {run['name']}: {run['steps']} steps")
        summary = train(cfg, run_dir, resume="auto")
        result = {**run, "val_loss": summary.val_loss,
                  "train_loss": math.nan if summary.loss is None else summary.loss}
        _write_json(done, result)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # done: the result is what the sweep needs
        results.append(result)
    return results


# ---------------------------------------------------------------------------------------------------------------
# Analysis and plots


def _parabola_min(x: np.ndarray, y: np.ndarray):
    """Vertex of the least-squares parabola y = a x^2 + b x + c (None when it opens downwards or is off-grid)."""
    if len(x) < 3:
        return None
    a, b, c = np.polyfit(x, y, 2)
    if a <= 0:
        return None
    xv = -b / (2 * a)
    return (float(xv), float(c - b * b / (4 * a))) if x.min() <= xv <= x.max() else None


def analyze_isoflop(results: list[dict], target_budget: float, inference_tokens: float, n_bootstrap: int) -> dict:
    """Fit the law to the runs' final validation losses (`plan.scaling.fit`, bootstrapped `n_bootstrap` times), find
    each budget's IsoFLOP minimum (vertex of a parabola in log N, Hoffmann et al.'s approach 2), and recommend (N, D)
    at `target_budget` with and without `inference_tokens`. Diverged runs (non-finite loss) are listed and left out;
    raises UserError when fewer than 5 runs remain. A degenerate fit gives `recommended` None with the reason."""
    from llamaforge.plan.scaling import compare, fit

    diverged = [r["name"] for r in results if not math.isfinite(r["val_loss"])]
    results = [r for r in results if math.isfinite(r["val_loss"])]
    if len(results) < 5:
        raise UserError(f"sweep: only {len(results)} runs have a finite validation loss; a fit needs 5 or more")
    n = np.array([r["n_params"] for r in results], dtype=float)
    d = np.array([r["tokens"] for r in results], dtype=float)
    loss = np.array([r["val_loss"] for r in results], dtype=float)
    fitted = fit(n, d, loss, n_bootstrap=n_bootstrap)
    minima = {}
    for budget in sorted({r["budget"] for r in results}):
        rows = [r for r in results if r["budget"] == budget]
        vertex = _parabola_min(np.log([r["n_params"] for r in rows]), np.array([r["val_loss"] for r in rows]))
        if vertex is not None:
            minima[f"{budget:.6g}"] = {"n_params": math.exp(vertex[0]), "loss": vertex[1]}
    out = {**fitted.as_dict(), "isoflop_minima": minima, "target_budget": target_budget, "diverged": diverged}
    try:
        table = compare(fitted.law, target_budget, inference_tokens)
        out["recommended"] = {k: {"n_params": a.n_params, "n_tokens": a.n_tokens, "loss": a.loss,
                                  "train_flops": a.train_flops, "inference_flops": a.inference_flops}
                              for k, a in table.items()}
    except (UserError, ValueError, OverflowError, ZeroDivisionError) as e:  # a degenerate fit (e.g. alpha ~ 0)
        out["recommended"] = None
        out["recommended_error"] = str(e)
    return out


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, path: Path, loglog: bool = False, **title_kw) -> None:
    """Log x axis (and y with `loglog`), labels, grid and legend, then write the PNG atomically."""
    ax.set_xscale("log")
    if loglog:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, **title_kw)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    from llamaforge.train.metrics import save_png  # the one atomic PNG writer

    save_png(fig, path)


def plot_isoflop(results: list[dict], analysis: dict, out: Path) -> None:
    """Write isoflop.png (each budget's runs and the fitted law at their (N, D)) and frontier.png (the compute-optimal N
    against the budget, with the per-budget minima) into `out`, atomically."""
    from llamaforge.plan.scaling import ScalingLaw, compute_optimal

    from llamaforge.train.metrics import pyplot

    plt = pyplot()
    law = ScalingLaw(**analysis["constants"])
    budgets = sorted({r["budget"] for r in results})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, budget in enumerate(budgets):
        rows = sorted((r for r in results if r["budget"] == budget), key=lambda r: r["n_params"])
        ns = np.array([r["n_params"] for r in rows], dtype=float)
        color = plt.cm.viridis(i / max(1, len(budgets) - 1))
        ax.plot(ns, [r["val_loss"] for r in rows], "o", color=color, label=f"C = {budget:.2g}")
        # the fit at each run's own (N, D): D came from the full FLOP formula, not from C / 6N
        ax.plot(ns, law.loss(ns, np.array([r["tokens"] for r in rows], dtype=float)), "--", color=color, alpha=0.6)
    _finish(fig, ax, "non-embedding parameters N", "final validation loss",
            "IsoFLOP curves (points: runs; dashed: the fitted law at the same N, D)", out / "isoflop.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    cs = np.geomspace(min(budgets) / 3, max(budgets + [analysis["target_budget"]]) * 3, 50)
    try:
        ax.plot(cs, [compute_optimal(law, c).n_params for c in cs], "-", label="fitted law: compute-optimal N (C = 6ND)")
    except (UserError, OverflowError, ValueError):
        pass
    minima = analysis["isoflop_minima"]
    if minima:
        ax.plot([float(c) for c in minima], [m["n_params"] for m in minima.values()], "s", label="IsoFLOP minima")
    _finish(fig, ax, "training compute C (FLOPs)", "parameters N", "Fitted compute-optimal frontier",
            out / "frontier.png", loglog=True)


def analyze_lr_batch(results: list[dict]) -> dict:
    """Per batch size, the best learning rate (the vertex of a parabola in log lr through the best run and its
    neighbours when it lies inside them, else the best run's lr; a diverged run counts as worst), then the slope of
    log best-lr against log batch and a one-line verdict: under 0.25 no scaling, under 0.75 about the square root,
    else about linear."""
    per_batch = {}
    for batch in sorted({r["batch_tokens"] for r in results}):
        rows = sorted((r for r in results if r["batch_tokens"] == batch), key=lambda r: r["lr"])
        log_lr = np.log([r["lr"] for r in rows])
        loss = np.array([r["val_loss"] for r in rows])
        loss = np.where(np.isfinite(loss), loss, np.inf)  # a diverged run is the worst possible
        best = int(np.argmin(loss))
        lo, hi = max(0, best - 1), min(len(rows), best + 2)
        vertex = _parabola_min(log_lr[lo:hi], loss[lo:hi]) if np.isfinite(loss[lo:hi]).all() else None
        best_lr = math.exp(vertex[0]) if vertex else rows[best]["lr"]
        per_batch[str(batch)] = {"best_lr": best_lr, "best_loss": float(loss[best]), "lrs": [r["lr"] for r in rows],
                                 "losses": [v if math.isfinite(v) else None for v in loss.tolist()],
                                 "interpolated": vertex is not None}
    batches = np.array([float(b) for b in per_batch])
    best = np.array([v["best_lr"] for v in per_batch.values()])
    slope = float(np.polyfit(np.log(batches), np.log(best), 1)[0]) if len(batches) >= 2 else math.nan
    if not math.isfinite(slope):
        verdict = "need at least two batch sizes"
    elif abs(slope) < 0.25:
        verdict = "no: the best learning rate barely moves with the batch size"
    elif slope < 0.75:
        verdict = "yes, roughly with the square root of the batch size"
    else:
        verdict = "yes, roughly linearly with the batch size"
    return {"per_batch": per_batch, "exponent": slope, "answer": verdict}


def plot_lr_batch(analysis: dict, out: Path) -> None:
    """Write lr_batch.png into `out` (atomically): validation loss against lr for each batch size, the best lr marked,
    the fitted exponent in the title."""
    from llamaforge.train.metrics import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for batch, v in analysis["per_batch"].items():
        losses = [math.nan if x is None else x for x in v["losses"]]  # None: diverged
        (line,) = ax.plot(v["lrs"], losses, "o-", label=f"batch {batch} tokens")
        ax.axvline(v["best_lr"], color=line.get_color(), ls=":", alpha=0.7)
    _finish(fig, ax, "peak learning rate", "final validation loss",
            f"best lr ∝ batch^{analysis['exponent']:.2f}: {analysis['answer']}", out / "lr_batch.png", fontsize=9)


# ---------------------------------------------------------------------------------------------------------------
# Entry points


def isoflop_sweep(out, recipe: str, overrides: list[str], shapes: list[Shape], budgets: list[float],
                  target_budget: float | None = None, inference_tokens: float = 0.0, n_bootstrap: int = 100,
                  min_steps: int = 4, log=print) -> dict:
    """The IsoFLOP sweep end to end: the grid of (budget, shape) runs from `recipe` with `overrides` (grid.json; a rerun
    with another design is refused), every run not yet finished trained under out/runs/, the fit written to fit.json
    with its plots. Returns `analyze_isoflop`'s dict."""
    out = Path(out)
    base = _base_config(recipe, overrides)
    runs = isoflop_grid(base, shapes, budgets, min_steps)
    target = target_budget or max(budgets)
    design = load_or_write_grid(out, {"mode": "isoflop", "recipe": recipe, "overrides": list(overrides),
                                      "runs": runs})
    results = run_all(out, base, design["runs"], log)
    analysis = analyze_isoflop(results, target, inference_tokens, n_bootstrap)
    _write_json(out / "fit.json", analysis)
    plot_isoflop(results, analysis, out)
    return analysis


def lr_batch_sweep(out, recipe: str, overrides: list[str], shape: Shape | None, lrs: list[float],
                   batches: list[int], tokens: float, log=print) -> dict:
    """The learning-rate x batch-size sweep end to end: the grid (grid.json), the runs under out/runs/ (finished ones
    skipped), lr_batch.json and lr_batch.png. Returns `analyze_lr_batch`'s dict."""
    out = Path(out)
    base = _base_config(recipe, overrides)
    runs = lr_batch_grid(base, shape, lrs, batches, tokens)
    design = load_or_write_grid(out, {"mode": "lr-batch", "recipe": recipe, "overrides": list(overrides),
                                      "runs": runs})
    results = run_all(out, base, design["runs"], log)
    analysis = analyze_lr_batch(results)
    _write_json(out / "lr_batch.json", analysis)
    plot_lr_batch(analysis, out)
    return analysis
