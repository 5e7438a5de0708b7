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


def assert_one_error_line(rc: int, err: str, *words: str, startswith: str = "error: ") -> str:
    """The contract for a user's mistake: exit status 2, exactly one stderr line, beginning `startswith` (always
    `error: ...`), no traceback, and each of `words` in that line. Returns the line."""
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert lines[0].startswith(startswith), (startswith, lines[0])
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def one_error_line(capsys, rc: int, *words: str, startswith: str = "error: ") -> str:
    """`assert_one_error_line` on what the command just wrote to stderr (pytest's capsys)."""
    return assert_one_error_line(rc, capsys.readouterr().err, *words, startswith=startswith)
