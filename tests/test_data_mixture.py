"""MixtureLoader: packing, weighted sampling with epochs, determinism, exact resume, rank split, held-out split.

The shards here are synthetic: every token id is unique within a test (ids 3.. count up across documents and
sources), so where a token ends up tells exactly which document and position it came from.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_helpers import source_paths

from llamaforge.data.mixture import MixtureLoader
from llamaforge.data.shards import ShardWriter, TokenShard
from llamaforge.errors import UserError

BOS, EOS, VOCAB = 1, 2, 1 << 23  # a vocabulary over 65536 ids: uint32 shards


def write_source(folder, doc_lengths, first_id):
    """A shard whose documents hold consecutive ids starting at first_id; returns (folder, documents)."""
    docs, next_id = [], first_id
    for n in doc_lengths:
        docs.append(np.arange(next_id, next_id + n))
        next_id += n
    with ShardWriter(folder, VOCAB, BOS, EOS) as w:
        w.add(np.concatenate(docs), doc_lengths, n_bytes=4 * sum(doc_lengths))
    return folder, docs


@pytest.fixture
def sources(tmp_path):
    """Three sources of very different sizes: 'big' is never exhausted, 'small' is repeated many times."""
    rng = np.random.default_rng(0)
    big, big_docs = write_source(tmp_path / "big", rng.integers(1, 4000, size=300), 3)
    mid, mid_docs = write_source(tmp_path / "mid", rng.integers(1, 100, size=100), 1_000_000)
    small, small_docs = write_source(tmp_path / "small", rng.integers(1, 30, size=20), 2_000_000)
    return {"big": big, "mid": mid, "small": small}, {"big": big_docs, "mid": mid_docs, "small": small_docs}


WEIGHTS = {"big": 0.6, "mid": 0.3, "small": 0.1}


def batches(loader, n):
    return [loader.next_batch() for _ in range(n)]


def test_batch_shapes_and_shift(sources):
    loader = MixtureLoader(sources[0], WEIGHTS, seq_len=32, batch_size=4, seed=0)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    assert loader.vocab_size == VOCAB and (loader.bos_id, loader.eos_id) == (BOS, EOS)


def test_packing_frames_every_document_once_per_epoch(tmp_path):
    folder, docs = write_source(tmp_path / "only", [5, 1, 17, 3, 40, 2, 9], 3)
    framed = sum(len(d) + 2 for d in docs)
    loader = MixtureLoader({"only": folder}, {"only": 1.0}, seq_len=6, batch_size=1, seed=3, val_fraction=0)
    n_seq = 3 * framed // 7 + 1  # a bit over three epochs of 7-token windows
    stream = np.concatenate([torch.cat([x[0, :1], y[0]]).numpy() for x, y in batches(loader, n_seq)])
    for epoch in range(3):
        part = stream[epoch * framed : (epoch + 1) * framed]
        starts = np.flatnonzero(part == BOS)
        pieces = np.split(part, starts[1:])
        assert all(p[0] == BOS and p[-1] == EOS for p in pieces)  # BOS doc EOS, back to back
        got = sorted(tuple(p[1:-1]) for p in pieces)
        assert got == sorted(tuple(d) for d in docs)  # each document exactly once per epoch
    first, second = stream[:framed], stream[framed : 2 * framed]
    assert not np.array_equal(first, second)  # the order is reshuffled every epoch
    assert loader.stats()["only"]["epochs"] == pytest.approx(n_seq * 7 / framed)


def test_realized_share_matches_weights_and_epochs_follow(sources):
    loader = MixtureLoader(sources[0], WEIGHTS, seq_len=15, batch_size=50, seed=1)
    batches(loader, 400)  # 20,000 sequences
    stats = loader.stats()
    for name, w in WEIGHTS.items():
        assert abs(stats[name]["share"] - w) < 0.01, (name, stats[name])
    assert sum(s["tokens"] for s in stats.values()) == 20_000 * 16
    assert stats["small"]["epochs"] > 10 and stats["big"]["epochs"] < 1  # repeated vs left partly unused
    for s in stats.values():
        assert s["epochs"] == pytest.approx(s["tokens"] / s["tokens_per_epoch"])


def test_zero_weight_source_is_never_read(sources):
    loader = MixtureLoader(sources[0], {"big": 1, "mid": 1, "small": 0}, seq_len=15, batch_size=20, seed=1)
    seen = torch.cat([x for x, _ in batches(loader, 50)])
    assert not (seen >= 2_000_000).any()
    assert loader.stats()["small"]["tokens"] == 0


def test_deterministic_for_a_seed_and_different_across_seeds(sources):
    def make(seed):
        return batches(MixtureLoader(sources[0], WEIGHTS, seq_len=16, batch_size=4, seed=seed), 10)

    a, b, c = make(7), make(7), make(8)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))
    # dict order of the arguments does not matter
    rev = MixtureLoader(dict(reversed(list(sources[0].items()))), dict(reversed(list(WEIGHTS.items()))),
                        seq_len=16, batch_size=4, seed=7)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, batches(rev, 10)))


def test_exact_resume_from_state_dict(sources):
    loader = MixtureLoader(sources[0], WEIGHTS, seq_len=16, batch_size=4, seed=5)
    batches(loader, 1500)  # past a choice block (4096 sequences) and several epochs of 'small'
    state = json.loads(json.dumps(loader.state_dict()))  # plain data: survives any checkpoint format
    expected = batches(loader, 20)
    resumed = MixtureLoader(sources[0], WEIGHTS, seq_len=16, batch_size=4, seed=5)
    resumed.load_state_dict(state)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(expected, batches(resumed, 20)))
    assert resumed.stats() == loader.stats()


def test_state_from_another_seed_is_refused(sources):
    state = MixtureLoader(sources[0], WEIGHTS, seq_len=16, batch_size=4, seed=5).state_dict()
    with pytest.raises(UserError, match="seed"):
        MixtureLoader(sources[0], WEIGHTS, seq_len=16, batch_size=4, seed=6).load_state_dict(state)


def test_ranks_get_disjoint_blocks_of_the_single_process_batch(sources):
    single = MixtureLoader(sources[0], WEIGHTS, seq_len=16, batch_size=8, seed=2)
    ranks = [MixtureLoader(sources[0], WEIGHTS, seq_len=16, batch_size=4, seed=2, rank=r, world_size=2)
             for r in range(2)]
    for _ in range(30):
        x, y = single.next_batch()
        parts = [r.next_batch() for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    # the position is global, the same on every rank, so any rank's state resumes the run
    assert ranks[0].state_dict() == ranks[1].state_dict() == single.state_dict()


def test_ranks_see_disjoint_tokens(sources):
    # weight only on 'big', which is not exhausted: every token id is seen at most once in the whole run
    weights = {"big": 1.0, "mid": 0.0, "small": 0.0}
    seen = []
    for r in range(3):
        loader = MixtureLoader(sources[0], weights, seq_len=16, batch_size=2, seed=4, rank=r, world_size=3)
        ids = torch.cat([torch.cat([x, y[:, -1:]], 1).flatten() for x, y in batches(loader, 20)])
        seen.append(set(ids[ids > EOS].tolist()))
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_resume_on_a_different_world_size(sources):
    two = [MixtureLoader(sources[0], WEIGHTS, seq_len=16, batch_size=4, seed=9, rank=r, world_size=2)
           for r in range(2)]
    for _ in range(5):
        [r.next_batch() for r in two]
    one = MixtureLoader(sources[0], WEIGHTS, seq_len=16, batch_size=8, seed=9)
    one.load_state_dict(two[0].state_dict())
    x, _ = one.next_batch()
    assert torch.equal(x, torch.cat([r.next_batch()[0] for r in two]))


def test_validation_documents_are_held_out(sources):
    loader = MixtureLoader(sources[0], WEIGHTS, seq_len=16, batch_size=8, seed=0, val_fraction=0.05)
    val_ids = {i for name, docs in sources[1].items() for d in docs[-max(1, int(len(docs) * 0.05)):] for i in d}
    train_ids = set(torch.cat([x.flatten() for x, _ in batches(loader, 300)]).tolist())
    assert not (train_ids & val_ids)
    val = loader.val_batches(3)
    again = loader.val_batches(3)
    assert len(val) == 3 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(val, again))
    got = set(torch.cat([x.flatten() for x, _ in val]).tolist()) - {BOS, EOS}
    assert got <= val_ids
    only_small = loader.val_batches(1, source="small")[0][0]
    assert ((only_small >= 2_000_000) | (only_small <= EOS)).all()
    assert loader.val_bytes_per_token("small") == pytest.approx(4 * 21 / 23, rel=0.2)  # 4 bytes per id, ~21-id docs


def test_separate_validation_shards(sources, tmp_path):
    val_folder, val_docs = write_source(tmp_path / "val_big", [50, 60], 5_000_000)
    loader = MixtureLoader(sources[0], WEIGHTS, seq_len=16, batch_size=2, seed=0, val_sources={"big": val_folder})
    x, y = loader.val_batches(1)[0]
    ids = set(torch.cat([x, y], 1).flatten().tolist()) - {BOS, EOS}
    assert ids <= set(np.concatenate(val_docs).tolist())
    # all training documents are used for training when validation has its own shards
    assert len(loader.streams["big"].doc_ids) == len(sources[1]["big"])


def test_source_paths_finds_shard_folders_only(sources, tmp_path):
    (tmp_path / ".big.tmp-123").mkdir()  # an interrupted tokenize
    (tmp_path / ".big.tmp-123" / "header.json").write_text("{}")
    (tmp_path / "notes").mkdir()
    assert source_paths(tmp_path) == sources[0]
    with pytest.raises(UserError, match="no token shard folders"):
        source_paths(tmp_path / "notes")


def test_bytes_per_token_counts_bos_and_eos(sources):
    loader = MixtureLoader(sources[0], WEIGHTS, seq_len=16, batch_size=2, seed=0)
    shard = TokenShard(sources[0]["mid"])
    assert loader.bytes_per_token["mid"] == pytest.approx(shard.n_bytes / (shard.n_tokens + 2 * shard.n_docs))


@pytest.mark.parametrize(
    "weights, kwargs, match",
    [
        ({"big": 1.0}, {}, "one per source"),
        ({"big": -1.0, "mid": 1.0, "small": 1.0}, {}, "non-negative"),
        (WEIGHTS, {"rank": 2, "world_size": 2}, "rank"),
        (WEIGHTS, {"split": "test"}, "split"),
        (WEIGHTS, {"seed": -1}, "seed"),
        (WEIGHTS, {"val_sources": {"other": "x"}}, "val_sources"),
    ],
)
def test_bad_arguments_are_one_line_user_errors(sources, weights, kwargs, match):
    with pytest.raises(UserError, match=match) as e:
        MixtureLoader(sources[0], weights, seq_len=16, batch_size=2, **kwargs)
    assert "\n" not in str(e.value)


def test_sources_from_different_tokenizers_are_refused(tmp_path):
    a, _ = write_source(tmp_path / "a", [10, 10], 3)
    with ShardWriter(tmp_path / "b", 32000, BOS, EOS, tokenizer_sha256="other") as w:
        w.add(np.arange(3, 13), [5, 5], n_bytes=40)
    with pytest.raises(UserError, match="tokenizer"):
        MixtureLoader({"a": a, "b": tmp_path / "b"}, {"a": 1, "b": 1}, seq_len=4, batch_size=1)


def test_val_batches_are_the_same_on_every_rank_and_layout(sources):
    """Validation measures the same held-out tokens whatever the number of processes (issue #18 item 9)."""
    from llamaforge.train.synthetic import SyntheticLoader

    one = MixtureLoader(sources[0], WEIGHTS, seq_len=16, batch_size=2, seed=3)
    ref = one.val_batches(3)
    for world in (2, 4):
        for rank in range(world):
            many = MixtureLoader(sources[0], WEIGHTS, seq_len=16, batch_size=2, seed=3, rank=rank, world_size=world)
            got = many.val_batches(3)
            assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(ref, got))
    ref = list(SyntheticLoader(64, 16, 2, 0).val_batches(3))
    for world in (2, 4):
        for rank in range(world):
            got = list(SyntheticLoader(64, 16, 2, 0, rank=rank, world_size=world).val_batches(3))
            assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(ref, got))
