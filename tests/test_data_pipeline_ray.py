"""The Ray executor runs the same tasks as local processes and writes byte-identical shards (local Ray instance)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import shared_path

from llamaforge.data.sources import prepare

ray = pytest.importorskip("ray")

CC = ["commoncrawl/dolma-tests/multiple_files_cc_en_head-0091.jsonl.gz",
      "commoncrawl/dolma-tests/multiple_files_cc_en_head-0174.jsonl.gz",
      "commoncrawl/dolma-tests/provided_documents_000.json.gz"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_matches_local(tmp_path: Path, local_ray):
    docs = []
    for rel in CC:
        with gzip.open(shared_path(rel), "rt", encoding="utf-8") as f:
            docs += [json.loads(line) for line in f]
    inputs = []
    for i in range(0, len(docs), 6):  # five shards, so tasks run concurrently on the two Ray CPUs
        p = tmp_path / "in" / f"part-{i // 6}.jsonl"
        p.parent.mkdir(exist_ok=True)
        p.write_text("".join(json.dumps({"text": d["text"], "url": d["id"]}) + "\n" for d in docs[i:i + 6]))
        inputs.append(str(p))

    local = prepare("c4", inputs, str(tmp_path / "local"), progress=False)
    on_ray = prepare("c4", inputs, str(tmp_path / "ray"), executor="ray", progress=False)
    assert on_ray["stages"] == local["stages"]
    a = {p.name: p.read_bytes() for p in (tmp_path / "local").glob("*.jsonl.gz")}
    b = {p.name: p.read_bytes() for p in (tmp_path / "ray").glob("*.jsonl.gz")}
    assert a == b and len(a) == len(inputs)
    assert local["stages"]["line_dedup"]["docs_out"] > 0
