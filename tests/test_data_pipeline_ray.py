"""The Ray executor runs the same tasks as local processes and writes byte-identical shards (local Ray instance)."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import cc_input_shards

from llamaforge.data.sources import prepare

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_matches_local(tmp_path: Path, local_ray):
    inputs = cc_input_shards(tmp_path / "in", per_shard=6)  # five shards: tasks run concurrently on two Ray CPUs

    local = prepare("c4", inputs, str(tmp_path / "local"), progress=False)
    on_ray = prepare("c4", inputs, str(tmp_path / "ray"), executor="ray", progress=False)
    assert on_ray["stages"] == local["stages"]
    a = {p.name: p.read_bytes() for p in (tmp_path / "local").glob("*.jsonl.gz")}
    b = {p.name: p.read_bytes() for p in (tmp_path / "ray").glob("*.jsonl.gz")}
    assert a == b and len(a) == len(inputs)
    assert local["stages"]["line_dedup"]["docs_out"] > 0
