"""Scaling laws: how loss depends on model size N and training tokens D, and what to buy with a budget.

The parametric law of Hoffmann et al. 2022 (Chinchilla, "approach 3"):

    L(N, D) = E + A / N^alpha + B / D^beta

Defaults are Besiroglu et al. 2024's refit of Chinchilla's own data (E 1.82, A 482.01, B 2085.43, alpha 0.3478,
beta 0.3658): unlike Hoffmann's published constants (E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28, kept as an
option) they agree with Chinchilla's 70B-parameter / 1.4T-token choice at 5.76e23 FLOPs.

Two questions answered here:
- compute-optimal (Chinchilla): with training compute C = 6·N·D, minimize L. Setting dL/dN = 0 along D = C/(6N)
  gives N* = G·(C/6)^(beta/(alpha+beta)), G = (alpha·A / (beta·B))^(1/(alpha+beta)), D* = C / (6·N*).
- inference-aware (LLaMA's choice; Sardana et al. 2023): to also serve I tokens, each costing 2N FLOPs, reach the
  same loss l* for the least training + inference compute: minimize 6·N·D + 2·N·I subject to L(N, D) = l*,
  where D(N) = (B / (l* - E - A/N^alpha))^(1/beta). A smaller model trained on more tokens wins once I is large.

Fitting follows Hoffmann et al.: Huber loss (delta 1e-3) between log L_pred and log L_observed, with
log L_pred = logsumexp(a - alpha·log N, b - beta·log D, e) (A = e^a, B = e^b, E = e^e), minimized by L-BFGS
from a grid of starting points; uncertainty comes from a bootstrap over the runs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from llamaforge.errors import UserError


@dataclass(frozen=True)
class ScalingLaw:
    """The parametric law L(N, D) = E + A / N^alpha + B / D^beta of Hoffmann et al. 2022 (approach 3); N parameters, D
    training tokens, L in nats/token. `BESIROGLU` (Besiroglu et al. 2024's refit, the default) and `HOFFMANN` hold
    published constants."""
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n_params, n_tokens):
        """L(N, D) in nats/token; numpy arrays broadcast."""
        return self.E + self.A / np.power(n_params, self.alpha) + self.B / np.power(n_tokens, self.beta)

    def tokens_for_loss(self, n_params: float, target_loss: float) -> float:
        """D such that L(N, D) = target_loss; inf when N alone cannot get there."""
        gap = target_loss - self.E - self.A / n_params**self.alpha  # what the data term must still bring down
        return (self.B / gap) ** (1 / self.beta) if gap > 0 else math.inf

    def as_dict(self) -> dict:
        """The five constants {E, A, B, alpha, beta}, for JSON (fit.json, `plan --json`)."""
        return asdict(self)


BESIROGLU = ScalingLaw(E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
HOFFMANN = ScalingLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
CONSTANTS = {"besiroglu": BESIROGLU, "hoffmann": HOFFMANN}

TRAINING_FLOPS_PER_PARAM = 6  # C = 6·N·D (Kaplan et al. 2020, Chinchilla): forward 2 + backward 4 per weight per token
INFERENCE_FLOPS_PER_PARAM = 2  # a forward pass: one multiply-add per weight per served token


@dataclass(frozen=True)
class Allocation:
    """A choice of model size and data for a budget: `n_params` N, `n_tokens` D, the law's predicted `loss`,
    `train_flops` (6·N·D) and `inference_flops` (2·N per served token)."""
    n_params: float
    n_tokens: float
    loss: float
    train_flops: float
    inference_flops: float

    @property
    def total_flops(self) -> float:
        """Training plus inference FLOPs: what the inference-aware choice minimizes."""
        return self.train_flops + self.inference_flops

    @property
    def tokens_per_param(self) -> float:
        """D / N (Chinchilla's compute-optimal choice is about 20; LLaMA trains far beyond it)."""
        return self.n_tokens / self.n_params


def _check_budget(flops: float) -> None:
    if not (flops > 0 and math.isfinite(flops)):
        raise UserError(f"--budget: expected a positive, finite number of FLOPs, got {flops:g}")


def compute_optimal(law: ScalingLaw, flops: float, inference_tokens: float = 0.0) -> Allocation:
    """Chinchilla's allocation: the (N, D) with 6·N·D = flops that minimizes L(N, D) (closed form)."""
    _check_budget(flops)
    if not (law.alpha > 0 and law.beta > 0 and law.A > 0 and law.B > 0):
        raise UserError(f"constants: expected positive A, B, alpha and beta, got {law}")
    a, b = law.alpha, law.beta
    g = (a * law.A / (b * law.B)) ** (1 / (a + b))
    n = g * (flops / TRAINING_FLOPS_PER_PARAM) ** (b / (a + b))
    d = flops / (TRAINING_FLOPS_PER_PARAM * n)
    return Allocation(n, d, float(law.loss(n, d)), flops, INFERENCE_FLOPS_PER_PARAM * n * inference_tokens)


def inference_optimal(law: ScalingLaw, target_loss: float, inference_tokens: float) -> Allocation:
    """The (N, D) reaching `target_loss` with the least 6·N·D + 2·N·inference_tokens FLOPs."""
    if inference_tokens < 0:
        raise UserError(f"--inference-tokens: expected a non-negative token count, got {inference_tokens:g}")
    if target_loss <= law.E:
        raise UserError(f"target loss {target_loss:.4f} is at or below the irreducible loss E = {law.E}")
    # The smallest model that can reach the target at all (with infinite data): A / N^alpha < target - E.
    n_min = (law.A / (target_loss - law.E)) ** (1 / law.alpha)

    def total_flops(log_n: float) -> float:
        n = math.exp(log_n)
        d = law.tokens_for_loss(n, target_loss)
        return math.log(TRAINING_FLOPS_PER_PARAM * n * d + INFERENCE_FLOPS_PER_PARAM * n * inference_tokens)

    # Total cost is unimodal in log N: a tiny model needs unbounded data, a huge one costs per token.
    lo, hi = math.log(n_min) + 1e-9, math.log(n_min) + 40
    res = minimize_scalar(total_flops, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    n = math.exp(res.x)
    d = law.tokens_for_loss(n, target_loss)
    return Allocation(n, d, target_loss, TRAINING_FLOPS_PER_PARAM * n * d,
                      INFERENCE_FLOPS_PER_PARAM * n * inference_tokens)


def breakeven_inference_tokens(law: ScalingLaw, n_params: float, n_tokens: float) -> float:
    """The lifetime inference volume I for which (N, D) is the cheapest way to reach its own predicted loss.

    Along the curve L(N, D) = const, d(6ND + 2NI)/dN = 0 gives I = 3·D·(alpha·A·N^-alpha / (beta·B·D^-beta) - 1).
    It is 0 for Chinchilla's allocation and grows as a model is trained on more tokens than that: the serving
    volume that justifies LLaMA's choice. Negative: the model is too big for its data at any inference volume."""
    model_term = law.alpha * law.A / n_params**law.alpha
    data_term = law.beta * law.B / n_tokens**law.beta
    return 3 * n_tokens * (model_term / data_term - 1)


def compare(law: ScalingLaw, flops: float, inference_tokens: float) -> dict[str, Allocation]:
    """Chinchilla's choice at `flops` versus the cheapest overall model of the same predicted loss."""
    chinchilla = compute_optimal(law, flops, inference_tokens)
    return {
        "compute-optimal": chinchilla,
        "inference-aware": inference_optimal(law, chinchilla.loss, inference_tokens),
    }


# ---------------------------------------------------------------------------------------------------------------
# Fitting


@dataclass
class Fit:
    """A fitted law (`fit`) with its uncertainty: the bootstrap standard deviation (`stderr`) and 2.5%/97.5% percentiles
    (`interval`) of each constant, the Huber objective at the optimum, the number of runs, and every bootstrap
    resample's constants."""
    law: ScalingLaw
    stderr: dict  # bootstrap standard deviation of each constant
    interval: dict  # 2.5% and 97.5% bootstrap percentiles of each constant
    objective: float
    n_runs: int
    samples: list  # bootstrap fits, one dict per resample

    def as_dict(self) -> dict:
        """The fit for fit.json: constants, stderr, interval_95, objective, n_runs and the bootstrap samples (`plan
        --constants fit.json` reads the constants back)."""
        return {
            "constants": self.law.as_dict(),
            "stderr": self.stderr,
            "interval_95": self.interval,
            "objective": self.objective,
            "n_runs": self.n_runs,
            "bootstrap": self.samples,
        }


# Hoffmann et al.'s grid of initial points, over (alpha, beta, e, a, b) with A = e^a, B = e^b, E = e^e.
INIT_GRID = {
    "alpha": np.arange(0.0, 2.01, 0.5),
    "beta": np.arange(0.0, 2.01, 0.5),
    "e": np.arange(-1.0, 1.01, 0.5),
    "a": np.arange(0.0, 25.1, 5.0),
    "b": np.arange(0.0, 25.1, 5.0),
}


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals r and its derivative."""
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
    grad = np.where(small, r, delta * np.sign(r))
    return value, grad


def _logsumexp(terms: np.ndarray) -> np.ndarray:
    """log(sum(exp(terms), axis=0)), stable (scipy's is ~10x slower on arrays this small)."""
    top = terms.max(axis=0)
    return top + np.log(np.exp(terms - top).sum(axis=0))


def _objective(theta, log_n, log_d, log_loss, delta):
    """Sum of Huber(log L_pred - log L) and its gradient w.r.t. theta = (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # [3, runs]
    log_pred = _logsumexp(terms)
    value, dr = _huber(log_pred - log_loss, delta)
    w = np.exp(terms - log_pred) * dr  # d log_pred / d term_k = softmax weight, times dHuber/dr
    grad = np.array([w[0].sum(), w[1].sum(), w[2].sum(), -(w[0] * log_n).sum(), -(w[1] * log_d).sum()])
    return value.sum(), grad


def _to_law(theta) -> ScalingLaw:
    a, b, e, alpha, beta = (float(x) for x in theta)
    return ScalingLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)


def _grid() -> np.ndarray:
    g = INIT_GRID
    return np.array([(a, b, e, al, be) for al, be, e, a, b in itertools.product(
        g["alpha"], g["beta"], g["e"], g["a"], g["b"])])


def _grid_scores(grid, log_n, log_d, log_loss, delta) -> np.ndarray:
    """The objective at every grid point at once ([points])."""
    a, b, e, alpha, beta = (grid[:, i : i + 1] for i in range(5))
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(grid), len(log_n)))])
    return _huber(_logsumexp(terms) - log_loss, delta)[0].sum(axis=1)


def _fit_once(log_n, log_d, log_loss, delta, starts) -> tuple[np.ndarray, float]:
    best, best_value = None, math.inf
    for theta0 in starts:
        res = minimize(_objective, theta0, args=(log_n, log_d, log_loss, delta), jac=True, method="L-BFGS-B")
        if res.fun < best_value:
            best, best_value = res.x, float(res.fun)
    return best, best_value


def fit(
    n_params, n_tokens, losses, *, delta: float = 1e-3, n_starts: int = 8, bootstrap_starts: int = 2,
    n_bootstrap: int = 100, seed: int = 0,
) -> Fit:
    """Fit L(N, D) to observed losses; bootstrap the runs for uncertainty.

    The objective is evaluated at all 4,500 grid points, and L-BFGS starts from the `n_starts` best of them.
    Hoffmann et al. start from every point; that costs hundreds of times more, and in our tests the best few
    starts already find the same optimum. Each bootstrap resample starts from the full-data optimum and from the
    best grid points for that resample. `stderr` is the standard deviation of each constant over the resamples.
    """
    log_n, log_d, log_loss = (np.log(np.asarray(x, dtype=np.float64)) for x in (n_params, n_tokens, losses))
    if not (len(log_n) == len(log_d) == len(log_loss)):
        raise ValueError("n_params, n_tokens and losses must have the same length")
    if len(log_n) < 5:
        raise UserError(f"fit: need at least 5 runs to fit 5 constants, got {len(log_n)}")
    grid = _grid()

    def best_starts(idx, k: int) -> np.ndarray:
        return grid[np.argsort(_grid_scores(grid, log_n[idx], log_d[idx], log_loss[idx], delta))[:k]]

    everything = np.arange(len(log_n))
    theta, value = _fit_once(log_n, log_d, log_loss, delta, best_starts(everything, n_starts))
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(log_n), len(log_n))
        starts = np.vstack([theta[None], best_starts(idx, bootstrap_starts)])
        t, _ = _fit_once(log_n[idx], log_d[idx], log_loss[idx], delta, starts)
        samples.append(_to_law(t).as_dict())
    names = list(BESIROGLU.as_dict())
    stderr = {k: float(np.std([s[k] for s in samples])) if samples else math.nan for k in names}
    interval = {
        k: [float(np.percentile([s[k] for s in samples], q)) for q in (2.5, 97.5)] if samples else [math.nan] * 2
        for k in names
    }
    return Fit(_to_law(theta), stderr, interval, value, len(log_n), samples)
