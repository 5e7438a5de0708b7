"""The interface between data and the training loop: what `train()` asks of a loader, and which loader it builds.

Three loaders implement `Loader`: `llamaforge.data.mixture.MixtureLoader` (weighted token-shard sources, the real
data), `llamaforge.train.synthetic.SyntheticLoader` (a counting task for the `debug` recipe) and
`llamaforge.train.finetune.InstructionLoader` (masked instruction examples, one per row, padded to the longest row
of the batch, so its batches may be narrower than seq_len). The protocol is
structural: data/ does not import train/ to implement it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch

from llamaforge.train.config import TrainConfig
from llamaforge.train.synthetic import SyntheticLoader


@runtime_checkable
class Loader(Protocol):
    """Batches of one data-parallel rank, resumable from a saved position.

    Every batch is (inputs, targets), both LongTensor[batch_size, seq_len] on the CPU, targets = inputs shifted
    by one token (-100 marks a position without a target). The position counts global sequences, so the same
    `state_dict` resumes a run on a different number of processes at the same point of the data.
    """

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training batch of this rank; advances the position by batch_size * world_size sequences."""
        ...

    def val_batches(self, n: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """`n` held-out batches, the same ones at every call and on every rank whatever the number of processes
        (validation curves are comparable, and every layout measures the same tokens)."""
        ...

    def val_bytes_per_token(self) -> float | None:
        """UTF-8 bytes of text per token of `val_batches`, to turn nats/token into bits/byte; None when the
        tokens have no text behind them (synthetic data)."""
        ...

    def stats(self) -> dict[str, dict]:
        """Per source, the realized mixture so far: {"weight", "share", "epochs", "tokens", ...}; {} if none."""
        ...

    def state_dict(self) -> dict:
        """The position, JSON-serializable (saved with every checkpoint, per rank)."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Resume at a position from `state_dict`; raises UserError when it belongs to other data or a seed."""
        ...


def build_loader(cfg: TrainConfig, vocab_size: int, rank: int, world: int, examples=None) -> Loader:
    """The loader of data-parallel rank `rank` of `world` (tensor-parallel ranks of one group share it):
    `SyntheticLoader` for `data.kind = "synthetic"`, `InstructionLoader` over the rendered `examples` for
    "instructions" (finetuning), else a `MixtureLoader` over `data.sources` with `data.weights` (equal weights
    when empty). Raises UserError for unreadable shards or bad weights."""
    d, t = cfg.data, cfg.training
    if d.kind == "instructions":
        from llamaforge.train.finetune import InstructionLoader

        if examples is None:
            raise ValueError("data.kind 'instructions' needs the rendered examples (train(..., examples=...))")
        return InstructionLoader(examples, t.micro_batch_size, t.seed, cfg.finetune.val_examples,
                                 pad_id=examples.pad_id, rank=rank, world_size=world,
                                 width_multiple=cfg.parallel.tp)
    if d.kind == "synthetic":
        return SyntheticLoader(vocab_size, d.seq_len, t.micro_batch_size, t.seed, rank=rank, world_size=world)
    from llamaforge.data.mixture import MixtureLoader

    weights = d.weights or {name: 1.0 for name in d.sources}
    return MixtureLoader(sources=d.sources, weights=weights, seq_len=d.seq_len, batch_size=t.micro_batch_size,
                         seed=t.seed, split="train", rank=rank, world_size=world)
