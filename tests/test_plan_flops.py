"""The planner's FLOP and time formulas against the paper's reported costs, and parameter counts against models."""

import pytest
import torch

from llamaforge.errors import UserError
from llamaforge.model import Transformer
from llamaforge.plan.flops import (
    DEVICES,
    PAPER_65B_DAYS,
    PAPER_65B_GPUS,
    PAPER_65B_TOKENS_PER_S_PER_GPU,
    paper_mfu,
    paper_table,
    training_cost,
)
from llamaforge.presets import PRESETS, count_params
from llamaforge.plan.flops import non_embedding_params


@pytest.mark.parametrize("name", list(PRESETS))
def test_param_counts_exact_against_meta_model(name):
    args = PRESETS[name]
    with torch.device("meta"):
        model = Transformer(args)
    total = sum(p.numel() for p in model.parameters())  # a tied matrix (Llama 3.2 1B/3B) once
    embedding = model.tok_embeddings.weight.numel()
    # N leaves out the embedding table but counts the output projection, also when it is the tied matrix
    non_embedding = total if args.tie_embeddings else total - embedding
    assert count_params(args) == (total, non_embedding)
    assert non_embedding_params(args) == non_embedding  # the FLOP formula counts the same weights


def test_paper_sizes():
    # The paper's Table 2 names: 6.7B, 13.0B, 32.5B, 65.2B.
    for name, billions in [("llama-7b", 6.7), ("llama-13b", 13.0), ("llama-33b", 32.5), ("llama-65b", 65.2)]:
        assert count_params(PRESETS[name])[0] / 1e9 == pytest.approx(billions, abs=0.1)  # the paper truncates


def test_paper_65b_throughput_and_days():
    mfu = paper_mfu()
    assert 0.45 < mfu < 0.52  # ~49.5%: the SPEC's "≈ 48% MFU" within the attention term
    cost = training_cost(PRESETS["llama-65b"], 1.4e12, 2048, DEVICES["A100-80GB"], PAPER_65B_GPUS, mfu)
    assert cost.tokens_per_s_per_device == pytest.approx(PAPER_65B_TOKENS_PER_S_PER_GPU, rel=0.10)
    assert cost.wall_clock_days == pytest.approx(PAPER_65B_DAYS, rel=0.10)


def test_paper_table15_gpu_hours_within_10_percent():
    rows = paper_table()
    assert [r["preset"] for r in rows] == ["llama-7b", "llama-13b", "llama-33b", "llama-65b"]
    for r in rows:
        assert r["gpu_hours"] == pytest.approx(r["paper_gpu_hours"], rel=0.10), r


def test_cost_arithmetic_small_model():
    args = PRESETS["tiny-1m"]
    fpt = 6 * non_embedding_params(args) + 12 * args.n_layers * args.dim * 256
    cost = training_cost(args, 1e9, 256, DEVICES["H100-80GB"], 8, 0.4)
    assert cost.flops_per_token == fpt
    assert cost.total_flops == pytest.approx(fpt * 1e9)
    assert cost.device_hours == pytest.approx(1e9 * fpt / (0.4 * 989e12) / 3600)
    assert cost.wall_clock_days == pytest.approx(cost.device_hours / 8 / 24)


@pytest.mark.parametrize("kwargs", [{"tokens": -1.0}, {"mfu": 1.5}, {"n_devices": 0}])
def test_bad_requests_raise_user_errors(kwargs):
    base = {"tokens": 1e9, "n_devices": 8, "mfu": 0.4}
    base.update(kwargs)
    with pytest.raises(UserError):
        training_cost(PRESETS["tiny-1m"], base["tokens"], 256, DEVICES["A100-80GB"], base["n_devices"], base["mfu"])
