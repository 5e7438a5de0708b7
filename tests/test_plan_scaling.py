"""Scaling-law allocation (Chinchilla, inference-aware) and the Hoffmann-style fit."""

import math

import numpy as np
import pytest

from llamaforge.errors import UserError
from llamaforge.plan.scaling import (
    BESIROGLU,
    HOFFMANN,
    ScalingLaw,
    compare,
    compute_optimal,
    fit,
    inference_optimal,
)


def test_chinchilla_allocation_with_default_constants():
    a = compute_optimal(BESIROGLU, 5.76e23)
    assert a.n_params == pytest.approx(70e9, rel=0.10)
    assert a.n_tokens == pytest.approx(1.4e12, rel=0.10)
    assert a.tokens_per_param == pytest.approx(20, rel=0.10)
    assert 6 * a.n_params * a.n_tokens == pytest.approx(5.76e23)


def test_compute_optimal_is_the_minimum_on_the_isoflop_line():
    c = 1e21
    best = compute_optimal(HOFFMANN, c)
    for factor in (0.5, 0.8, 1.25, 2.0):
        n = best.n_params * factor
        assert HOFFMANN.loss(n, c / (6 * n)) > best.loss


def test_hoffmann_constants_prefer_smaller_models_than_chinchilla():
    # Known disagreement (Besiroglu et al. 2024): Hoffmann's published fit gives ~32B at Chinchilla's budget.
    assert compute_optimal(HOFFMANN, 5.76e23).n_params < 40e9


def test_inference_aware_choice_is_smaller_and_cheaper_at_the_same_loss():
    table = compare(BESIROGLU, 5.76e23, inference_tokens=2e13)
    chin, llama = table["compute-optimal"], table["inference-aware"]
    assert llama.loss == pytest.approx(chin.loss)
    assert BESIROGLU.loss(llama.n_params, llama.n_tokens) == pytest.approx(chin.loss, abs=1e-9)
    assert llama.n_params < chin.n_params and llama.n_tokens > chin.n_tokens
    assert llama.total_flops < chin.total_flops
    assert llama.train_flops > chin.train_flops  # pays more to train, saves more at inference


def test_inference_aware_without_inference_is_chinchilla():
    chin = compute_optimal(BESIROGLU, 1e22)
    same = inference_optimal(BESIROGLU, chin.loss, 0.0)
    assert same.n_params == pytest.approx(chin.n_params, rel=1e-3)
    assert same.train_flops == pytest.approx(1e22, rel=1e-6)


@pytest.mark.parametrize("budget", [-1.0, 0.0, math.inf])
def test_impossible_budgets(budget):
    with pytest.raises(UserError, match="--budget"):
        compute_optimal(BESIROGLU, budget)


def test_fit_recovers_known_constants_from_noisy_synthetic_losses():
    truth = ScalingLaw(E=2.1, A=300.0, B=1500.0, alpha=0.32, beta=0.38)
    rng = np.random.default_rng(0)
    n = np.repeat(np.geomspace(1e6, 3e9, 8), 6)
    d = np.tile(np.geomspace(1e8, 3e11, 6), 8)
    losses = truth.loss(n, d) * np.exp(rng.normal(0, 0.003, n.size))  # 0.3% multiplicative noise
    result = fit(n, d, losses, n_bootstrap=8)
    law = result.law
    assert law.E == pytest.approx(truth.E, rel=0.03)
    assert law.alpha == pytest.approx(truth.alpha, rel=0.05)
    assert law.beta == pytest.approx(truth.beta, rel=0.05)
    assert law.A == pytest.approx(truth.A, rel=0.3) and law.B == pytest.approx(truth.B, rel=0.3)
    # The compute-optimal size is what users consume: it must agree closely.
    assert compute_optimal(law, 1e23).n_params == pytest.approx(compute_optimal(truth, 1e23).n_params, rel=0.15)
    assert all(result.stderr[k] > 0 for k in ("E", "alpha", "beta"))
    lo, hi = result.interval["alpha"]
    assert lo <= law.alpha <= hi


def test_breakeven_inference_volume_inverts_the_inference_aware_choice():
    from llamaforge.plan.scaling import breakeven_inference_tokens

    for volume in (1e11, 5e12, 1e14):
        a = inference_optimal(BESIROGLU, 2.0, volume)
        assert breakeven_inference_tokens(BESIROGLU, a.n_params, a.n_tokens) == pytest.approx(volume, rel=1e-3)
    chin = compute_optimal(BESIROGLU, 1e22)
    assert abs(breakeven_inference_tokens(BESIROGLU, chin.n_params, chin.n_tokens)) < 1e-6 * chin.n_tokens
    # LLaMA-7B on 1T tokens is far past Chinchilla's 20 tokens/parameter: it pays off only when served at scale.
    assert breakeven_inference_tokens(BESIROGLU, 6.74e9, 1e12) > 1e12
