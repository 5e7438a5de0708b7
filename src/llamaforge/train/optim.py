"""AdamW with the paper's settings and its learning-rate schedule.

Weight decay (0.1) applies to every 2-D weight: the attention and feed-forward matrices, the output
projection and the token embeddings (the LLaMA paper does not say; Meta's later recipes and torchtitan decay
the embeddings too). The RMSNorm gains are not decayed: pulling a gain toward 0 would shrink its whole
sub-layer's input, which is not the regularization weight decay is meant to be.

Schedule: linear warmup from 0 to the peak over `warmup_steps`, then a cosine from the peak down to
`min_lr_ratio` x peak (10% in the paper) at the last step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llamaforge.train.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decay on matrices (ndim >= 2), none on vectors (the norm gains)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups` (weight decay on 2-D weights only) with cfg's lr, betas and eps; foreach
    kernels, which also take FSDP2's DTensors. The paper's optimizer (§2.2: AdamW, beta2 0.95, decay 0.1).
    """
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
        foreach=True,  # one fused kernel per group instead of a Python loop over tensors; works with DTensors
    )


def lr_at(step: int, peak: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Learning rate used for optimizer step `step` (0-based): warmup then cosine to min_lr_ratio * peak."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps  # step 0 already gets a nonzero lr
    decay_steps = max(total_steps - 1 - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return peak * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    """LambdaLR multiplying each group's lr by lr_at(step) / peak; its state (last_epoch) goes in checkpoints."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, 1.0, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )
