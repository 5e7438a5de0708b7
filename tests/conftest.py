"""Shared test fixtures. Tests that need ../shared/data skip with a clear reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LLAMAFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(rel: str) -> Path:
    """Path inside ../shared/data, or skip the test when it is not there."""
    p = SHARED_DATA / rel
    if not p.exists():
        pytest.skip(f"needs ../shared/data/{rel} (the staged real data), which is absent here")
    return p


@pytest.fixture
def shared_data():
    return shared_path


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared machine thread barriers stall."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
