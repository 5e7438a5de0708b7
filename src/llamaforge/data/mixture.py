"""Weighted multi-source sampling with epochs, document packing and an exact, checkpointable position.

    loader = MixtureLoader({"code": "tok/code", "docs": "tok/docs"}, {"code": 0.7, "docs": 0.3},
                           seq_len=256, batch_size=8, seed=0, rank=0, world_size=1)
    inputs, targets = loader.next_batch()          # LongTensor[B, T] each; targets are inputs shifted by one
    state = loader.state_dict(); loader.load_state_dict(state)   # resume: the same batches, bit for bit
    loader.stats()                                 # {source: {"weight", "share", "epochs", "tokens", ...}}
    for x, y in loader.val_batches(4): ...         # held-out batches, the same ones at every call
    loader.bytes_per_token["code"]                 # UTF-8 bytes per packed token, for bits-per-byte

How a batch is made (paper Table 1: sampling proportions, with epochs falling out of them):
- Each source is a stream of its documents, each framed as BOS + document + EOS, in an order shuffled afresh every
  epoch (seeded by seed, source name, epoch). When a stream runs out it starts its next epoch, so a source with a
  high weight and few tokens is repeated and one with a low weight is left partly unused.
- Global sequence k (k = 0, 1, 2, ...) picks its source with probability equal to the source's weight, from a
  seeded RNG (a function of seed and k only), and takes the next seq_len + 1 tokens of that source's stream,
  across document boundaries. Every sequence has the same length, so weights are token shares.
- With data parallelism, a step consumes batch_size x world_size global sequences and rank r keeps the r-th block
  of batch_size of them; every rank advances every stream (cheaply, without reading tokens), so the position is the
  same on all ranks, and W ranks with batch B see exactly the sequences of one process with batch W x B.
- The position (global sequence count and each stream's epoch / document / offset) is the whole state: it does not
  depend on rank, world size or batch size, so a checkpoint can be resumed on a different number of processes.

Validation: by default the last `val_fraction` (1%) of each source's documents, at least one when the source has
two or more, are held out from training; `val_sources` (a dict like `sources`) uses separate shards instead.
`val_batches(n)` packs the held-out documents in file order with the same weights (restricted to sources that have
held-out documents), from a fixed starting point, so every call returns the same batches.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from llamaforge.data.shards import TokenShard
from llamaforge.errors import UserError

CHOICE_BLOCK = 4096  # source choices are drawn this many sequences at a time, each block from its own seeded RNG
TRAIN_STREAM, VAL_STREAM = 0, 1  # distinct RNG keys so validation choices never mirror training ones


def _name_key(name: str) -> int:
    """A stable integer per source name (independent of dict order and of the other sources)."""
    return zlib.crc32(name.encode("utf-8"))


def _tokenizer_id(shard: TokenShard) -> tuple:
    return shard.vocab_size, shard.header.get("tokenizer_sha256")


def _bytes_per_packed_token(shard: TokenShard) -> float:
    """UTF-8 bytes of text per token once packed (BOS and EOS counted as tokens): bits/byte = nats / ln 2 / this."""
    return shard.n_bytes / (shard.n_tokens + 2 * shard.n_docs)


class SourceStream:
    """A cursor over some of a shard's documents, each framed BOS + doc + EOS, shuffled per epoch when `shuffle`."""

    def __init__(self, shard: TokenShard, doc_ids: np.ndarray, seed: int, key: int, shuffle: bool = True):
        self.shard, self.doc_ids, self.seed, self.key, self.shuffle = shard, doc_ids, seed, key, shuffle
        self.framed_tokens = int(shard.lengths[doc_ids].sum()) + 2 * len(doc_ids)  # tokens in one epoch
        self.epoch = self.index = self.offset = self.taken = 0
        self._order, self._order_epoch = None, -1

    def order(self) -> np.ndarray:
        """Document ids in this epoch's order."""
        if self._order_epoch != self.epoch:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.key, self.epoch])
                self._order = self.doc_ids[rng.permutation(len(self.doc_ids))]
            else:
                self._order = self.doc_ids
            self._order_epoch = self.epoch
        return self._order

    def take(self, n: int, out: np.ndarray | None = None):
        """Advance by n tokens, copying them into out[:n] (or only skipping them when out is None)."""
        filled = 0
        while filled < n:
            doc = int(self.order()[self.index])
            framed = int(self.shard.lengths[doc]) + 2
            k = min(framed - self.offset, n - filled)
            if out is not None:
                self._copy_framed(doc, self.offset, k, out[filled : filled + k])
            filled += k
            self.offset += k
            if self.offset == framed:  # document done: next one, and the next epoch after the last
                self.offset, self.index = 0, self.index + 1
                if self.index == len(self.doc_ids):
                    self.index, self.epoch = 0, self.epoch + 1
        self.taken += n

    def _copy_framed(self, doc: int, start: int, k: int, out: np.ndarray):
        """Framed positions [start, start + k) of a document: position 0 is BOS, 1..L the ids, L + 1 is EOS."""
        tokens = self.shard.doc(doc)
        length, stop, i = len(tokens), start + k, 0
        if start == 0:
            out[0] = self.shard.bos_id
            i = 1
        lo, hi = max(start, 1), min(stop, length + 1)
        if hi > lo:
            out[i : i + hi - lo] = tokens[lo - 1 : hi - 1]
            i += hi - lo
        if stop == length + 2:
            out[i] = self.shard.eos_id

    def state_dict(self) -> dict:
        """The stream's position: {epoch, index (of the document in this epoch's order), offset (inside its framed
        tokens), taken (tokens taken so far)}."""
        return {"epoch": self.epoch, "index": self.index, "offset": self.offset, "taken": self.taken}

    def load_state_dict(self, state: dict):
        """Resume at a position from `state_dict`."""
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self.offset, self.taken = int(state["offset"]), int(state["taken"])


class MixtureLoader:
    """Batches of packed sequences from weighted token-shard sources; see the module docstring."""

    def __init__(self, sources: dict, weights: dict, seq_len: int, batch_size: int, seed: int = 0,
                 split: str = "train", rank: int = 0, world_size: int = 1, val_fraction: float = 0.01,
                 val_sources: dict | None = None):
        if set(sources) != set(weights):
            raise UserError(f"mixture: weights: expected one per source {sorted(sources)}, got {sorted(weights)}")
        if val_sources is not None and not set(val_sources) <= set(sources):
            raise UserError(f"mixture: val_sources: {sorted(set(val_sources) - set(sources))} are not training sources")
        if split not in ("train", "val"):
            raise UserError(f"mixture: split: expected 'train' or 'val', got {split!r}")
        if not 0 <= rank < world_size:
            raise UserError(f"mixture: rank: expected 0 <= rank < world_size={world_size}, got {rank}")
        if seq_len < 1 or batch_size < 1:
            raise UserError(f"mixture: seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
        if int(seed) != seed or seed < 0:  # numpy's seed sequences take non-negative integers
            raise UserError(f"mixture: seed: expected a non-negative integer, got {seed!r}")
        self.names = sorted(sources)  # sorted: the same mixture whatever the dict order
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.split, self.rank, self.world_size = split, rank, world_size
        self.weights = self._normalized(weights)
        self.shards = {name: TokenShard(sources[name]) for name in self.names}
        self.val_shards = {n: TokenShard(val_sources[n]) for n in sorted(val_sources or {})}
        self._check_same_tokenizer()
        first = self.shards[self.names[0]]
        self.vocab_size, self.bos_id, self.eos_id = first.vocab_size, first.bos_id, first.eos_id
        self.bytes_per_token = {n: _bytes_per_packed_token(s) for n, s in self.shards.items()}
        self._train_docs, self._val_docs = self._split_documents(val_fraction, val_sources)
        docs = self._train_docs if split == "train" else self._val_docs
        for name in self.names:
            if self.weights[name] > 0 and len(docs[name][1]) == 0:
                n_docs = len(self.shards[name])
                raise UserError(f"{self.shards[name].path}: no {split} documents (the shard has {n_docs})")
        self.streams = {n: SourceStream(*docs[n], seed, _name_key(n), shuffle=split == "train") for n in self.names}
        self.seq_index = 0  # global sequences consumed so far (all ranks)
        self._choices = {}  # (stream key, names) -> (block, source indices): the current block of choices

    # -- construction helpers

    def _normalized(self, weights: dict) -> dict:
        w = {n: float(weights[n]) for n in self.names}
        if any(not np.isfinite(v) or v < 0 for v in w.values()) or sum(w.values()) <= 0:
            raise UserError(f"mixture: weights: expected non-negative numbers with a positive sum, got {weights}")
        total = sum(w.values())
        return {n: v / total for n, v in w.items()}

    def _check_same_tokenizer(self):
        shards = list(self.shards.values()) + list(self.val_shards.values())
        ref = shards[0]
        for s in shards[1:]:
            if _tokenizer_id(s) != _tokenizer_id(ref):
                raise UserError(f"{s.path}: tokenizer: differs from the one of {ref.path}; tokenize all sources alike")

    def _split_documents(self, val_fraction: float, val_sources: dict | None):
        """(shard, doc ids) per source for training and for validation."""
        train, val = {}, {}
        for name in self.names:
            shard = self.shards[name]
            if val_sources is not None:
                train[name] = (shard, np.arange(shard.n_docs))
                vs = self.val_shards.get(name)
                val[name] = (vs, np.arange(vs.n_docs)) if vs is not None else (shard, np.arange(0))
                continue
            n_val = int(shard.n_docs * val_fraction)
            if val_fraction > 0 and shard.n_docs >= 2:
                n_val = min(max(n_val, 1), shard.n_docs - 1)  # at least one held out, at least one left to train
            n_train = shard.n_docs - n_val
            train[name] = (shard, np.arange(n_train))
            val[name] = (shard, np.arange(n_train, shard.n_docs))
        return train, val

    # -- sampling

    def _source_of(self, k: int, stream_key: int, names: list, probs: np.ndarray) -> str:
        """The source of global sequence k: a function of (seed, stream, k) only."""
        block, cache_key = k // CHOICE_BLOCK, (stream_key, tuple(names))
        cached = self._choices.get(cache_key)
        if cached is None or cached[0] != block:
            rng = np.random.default_rng([self.seed, stream_key, block])
            cached = (block, rng.choice(len(names), size=CHOICE_BLOCK, p=probs))
            self._choices[cache_key] = cached
        return names[cached[1][k % CHOICE_BLOCK]]

    def _fill(self, streams: dict, start: int, stream_key: int, names: list, probs: np.ndarray,
              whole: bool = False) -> torch.Tensor:
        """This rank's block of the global batch starting at global sequence `start` (with `whole`: the
        batch_size sequences from `start`, the same on every rank); advances every stream."""
        B, W = self.batch_size, (1 if whole else self.world_size)
        rank = 0 if whole else self.rank
        buf = np.empty((B, self.seq_len + 1), dtype=np.int64)
        for k in range(start, start + B * W):
            j = k - start - rank * B  # row of this rank's batch, or outside [0, B) for other ranks' sequences
            out = buf[j] if 0 <= j < B else None
            streams[self._source_of(k, stream_key, names, probs)].take(self.seq_len + 1, out)
        return torch.from_numpy(buf)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), LongTensor[batch_size, seq_len] each, on the CPU."""
        probs = np.array([self.weights[n] for n in self.names])
        seq = self._fill(self.streams, self.seq_index, TRAIN_STREAM, self.names, probs)
        self.seq_index += self.batch_size * self.world_size
        return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()

    def __iter__(self):
        while True:
            yield self.next_batch()

    def val_batches(self, n: int, source: str | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """n held-out batches of batch_size sequences, the same at every call and on every rank whatever the number
        of processes (validation measures the same tokens in every layout); only `source`'s when given."""
        if source is not None and source not in self.names:
            raise UserError(f"mixture: source: expected one of {self.names}, got {source!r}")
        val_weights = self._val_weights(source)
        names, weights = list(val_weights), np.array(list(val_weights.values()))
        if not names or weights.sum() <= 0:
            raise UserError(f"mixture: no held-out documents for {source or 'any weighted source'}")
        probs = weights / weights.sum()
        streams = {m: SourceStream(*self._val_docs[m], self.seed, _name_key(m), shuffle=False) for m in names}
        batches = []
        for i in range(n):
            seq = self._fill(streams, i * self.batch_size, VAL_STREAM, names, probs, whole=True)
            batches.append((seq[:, :-1].contiguous(), seq[:, 1:].contiguous()))
        return batches

    def has_val(self, source: str) -> bool:
        """Whether `source` has held-out documents, i.e. `val_batches(n, source=source)` can be asked for
        (a source split off none: a one-document shard, val_fraction 0, or no shard in `val_sources`)."""
        if source not in self.names:
            raise UserError(f"mixture: source: expected one of {self.names}, got {source!r}")
        return len(self._val_docs[source][1]) > 0

    def val_bytes_per_token(self, source: str | None = None) -> float:
        """Expected UTF-8 bytes per token of `val_batches(n, source)`: bits/byte = loss / ln 2 / this."""
        w = self._val_weights(source)
        total = sum(w.values())
        # each sequence has the same length, so source m supplies a w_m share of the tokens
        return sum(w[m] / total * _bytes_per_packed_token(self._val_docs[m][0]) for m in w)

    def _val_weights(self, source: str | None) -> dict[str, float]:
        """Sampling weight of each source that has held-out documents; only `source`, at weight 1, when given."""
        return {m: self.weights[m] if source is None else 1.0
                for m in self.names if len(self._val_docs[m][1]) > 0 and (source is None or m == source)}

    # -- position and statistics

    def state_dict(self) -> dict:
        """The loader's position, JSON-serializable: the seed and split it was made with, the global sequence index, and
        every source stream's position (`SourceStream.state_dict`)."""
        return {
            "version": 1,
            "seed": self.seed,
            "split": self.split,
            "seq_index": self.seq_index,
            "streams": {n: s.state_dict() for n, s in self.streams.items()},
        }

    def load_state_dict(self, state: dict):
        """Resume at a position from `state_dict`. Raises UserError when it belongs to other sources, another seed or
        another split (resuming there would silently read other data)."""
        if state.get("version") != 1 or set(state.get("streams", {})) != set(self.names):
            raise UserError(f"mixture: state: expected a loader position for sources {self.names}")
        if state["seed"] != self.seed or state["split"] != self.split:
            raise UserError(f"mixture: state: saved with seed={state['seed']} split={state['split']}, "
                            f"this loader has seed={self.seed} split={self.split}")
        self.seq_index = int(state["seq_index"])
        for n, s in self.streams.items():
            s.load_state_dict(state["streams"][n])

    def stats(self) -> dict:
        """Per source: configured weight, realized token share, epochs (tokens taken / tokens per epoch), tokens."""
        total = sum(s.taken for s in self.streams.values())
        return {
            n: {
                "weight": self.weights[n],
                "share": s.taken / total if total else 0.0,
                "epochs": s.taken / s.framed_tokens if s.framed_tokens else 0.0,
                "tokens": s.taken,
                "tokens_per_epoch": s.framed_tokens,
            }
            for n, s in self.streams.items()
        }

    def plan(self, total_tokens: int) -> tuple[list[dict], list[str]]:
        """`plan_mixture` for this loader's sources: what `total_tokens` tokens of training will take from each."""
        available = {n: s.framed_tokens for n, s in self.streams.items()}
        return plan_mixture(available, self.weights, total_tokens)

    def __repr__(self) -> str:
        srcs = ", ".join(f"{n}={self.weights[n]:.3f}" for n in self.names)
        shape = f"seq_len={self.seq_len}, batch_size={self.batch_size}, rank={self.rank}/{self.world_size}"
        return f"MixtureLoader({srcs}; {shape})"


# Table 1 of the paper (Touvron et al. 2023): sampling proportion and epochs over the 1.4T-token run.
TABLE1 = {
    "commoncrawl": {"weight": 0.670, "epochs": 1.10},
    "c4": {"weight": 0.150, "epochs": 1.06},
    "github": {"weight": 0.045, "epochs": 0.64},
    "wikipedia": {"weight": 0.045, "epochs": 2.45},
    "books": {"weight": 0.045, "epochs": 2.23},
    "arxiv": {"weight": 0.025, "epochs": 1.06},
    "stackexchange": {"weight": 0.020, "epochs": 1.03},
}
REPEAT_FACTOR = 2.0  # warn when a source is planned for more than this many times its Table 1 epochs
UNUSED_EPOCHS = 0.5  # warn when less than this fraction of a source will be seen


def plan_mixture(available: dict[str, int], weights: dict[str, float], total_tokens: int,
                 paper_epochs: dict[str, float | None] | None = None) -> tuple[list[dict], list[str]]:
    """What a run of `total_tokens` training tokens will take from each source, before it runs.

    available: tokens per epoch of each source's training split (framed: BOS + doc + EOS, as the loader counts);
    weights: sampling proportions (normalized here); paper_epochs: Table 1's epochs per source (default: looked up
    by source name in `TABLE1`; None for a source the paper does not have, then 1 epoch is the reference).
    Returns one row per source {source, tokens_available, weight, planned_tokens, planned_epochs, paper_epochs} and
    warnings: a source repeated more than REPEAT_FACTOR x its reference epochs (the paper's CC is seen 1.1 times; a
    small slice at 67% would be memorized), or one with less than UNUSED_EPOCHS of it seen (mostly unused)."""
    total_w = sum(weights.values())
    if paper_epochs is None:
        paper_epochs = {n: TABLE1.get(n, {}).get("epochs") for n in available}
    rows, warnings = [], []
    for name in sorted(available):
        w = weights.get(name, 0.0) / total_w if total_w else 0.0
        planned = w * total_tokens
        epochs = planned / available[name] if available[name] else float("inf")
        ref = paper_epochs.get(name)
        rows.append({"source": name, "tokens_available": int(available[name]), "weight": w,
                     "planned_tokens": int(round(planned)), "planned_epochs": epochs, "paper_epochs": ref})
        limit = REPEAT_FACTOR * (ref if ref is not None else 1.0)
        if w > 0 and epochs > limit:
            what = f"{REPEAT_FACTOR:g} x the paper's {ref:.2f}" if ref is not None else f"{limit:g}"
            warnings.append(f"warning: {name} will be repeated {epochs:.1f} times (more than {what} epochs): "
                            f"the model may memorize it; give it more data or a lower weight")
        elif epochs < UNUSED_EPOCHS:
            warnings.append(f"warning: {name}: only {100 * epochs:.0f}% of its {available[name]:,} tokens will be "
                            f"seen (weight {w:.3f}); more steps or a higher weight would use it")
    return rows, warnings


def format_plan(rows: list[dict], warnings: list[str]) -> str:
    """The plan as a fixed-width table followed by its warnings (printed before training)."""
    lines = [f"{'source':<14} {'tokens avail':>13} {'weight':>7} {'planned tokens':>15} {'epochs':>7} "
             f"{'paper epochs':>12}"]
    for r in rows:
        paper = "-" if r["paper_epochs"] is None else f"{r['paper_epochs']:.2f}"
        lines.append(f"{r['source']:<14} {r['tokens_available']:>13,} {r['weight']:>7.3f} {r['planned_tokens']:>15,} "
                     f"{r['planned_epochs']:>7.2f} {paper:>12}")
    return "\n".join(lines + warnings)
