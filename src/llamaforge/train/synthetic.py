"""A built-in toy task with the loader's interface, for the `debug` recipe, tests and benchmarks.

Each sequence counts modulo the vocabulary from a random start with a random stride (x_{t+1} = x_t + s mod V):
after two tokens the rest is predictable, so the loss falls quickly and any change in the training math shows
in the first few losses. Sample i is a pure function of (seed, split, i), so the data depend only on the global
sample index: 1 process with 2 micro-batches and 2 processes with 1 each see the same sequences per step.
"""

from __future__ import annotations

import torch

STRIDES = 7  # strides 1..STRIDES


class SyntheticLoader:
    """Counting sequences (see the module docstring) behind the `train.loader.Loader` interface.

    Batches are LongTensor[batch_size, seq_len] inputs and next-token targets; `rank`/`world_size` pick this
    data-parallel rank's block of each global batch.
    """

    def __init__(self, vocab_size: int, seq_len: int, batch_size: int, seed: int, split: str = "train",
                 rank: int = 0, world_size: int = 1):
        self.vocab_size, self.seq_len, self.batch_size = vocab_size, seq_len, batch_size
        self.seed, self.split, self.rank, self.world_size = seed, split, rank, world_size
        self.seq_index = 0  # global sequences consumed so far (all ranks): the position, whatever the layout

    def _samples(self, first: int, count: int, split: str) -> torch.Tensor:
        rows = []
        for i in range(first, first + count):
            # str hashes vary per process (PYTHONHASHSEED): derive the sample's seed arithmetically instead
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 2 * i + (split == "val"))
            start = torch.randint(self.vocab_size, (1,), generator=g)
            stride = torch.randint(1, STRIDES + 1, (1,), generator=g)
            rows.append((start + stride * torch.arange(self.seq_len + 1)) % self.vocab_size)
        return torch.stack(rows)

    def _batch(self, seq_index: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's block of the global batch that starts at global sequence `seq_index`."""
        seq = self._samples(seq_index + self.rank * self.batch_size, self.batch_size, split)
        return seq[:, :-1], seq[:, 1:]  # inputs, next-token targets

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (inputs, targets) of this rank, LongTensor[batch_size, seq_len] each."""
        batch = self._batch(self.seq_index, self.split)
        self.seq_index += self.batch_size * self.world_size
        return batch

    def val_batches(self, n: int):
        """`n` held-out batches (a separate random stream), the same at every call and on every rank whatever the
        number of processes, so validation measures the same tokens in every layout."""
        for i in range(n):
            seq = self._samples(i * self.batch_size, self.batch_size, "val")
            yield seq[:, :-1], seq[:, 1:]

    def val_bytes_per_token(self) -> None:
        """None: no text behind these tokens, so no bits-per-byte."""
        return None

    def state_dict(self) -> dict:
        """The position: global sequences consumed so far."""
        return {"seq_index": self.seq_index}

    def load_state_dict(self, state: dict) -> None:
        """Resume at a position from `state_dict`."""
        self.seq_index = int(state["seq_index"])

    def stats(self) -> dict:
        """{}: one synthetic source, no mixture to report."""
        return {}
