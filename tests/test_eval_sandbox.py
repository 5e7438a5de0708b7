"""The code sandbox: HumanEval's canonical solutions pass, wrong code fails, and the limits hold."""

from __future__ import annotations

import pytest
from conftest import shared_path

from llamaforge.eval.items import pass_at_k
from llamaforge.eval.sandbox import (
    Limits,
    isolation_problem,
    network_namespace_available,
    run_program,
    run_programs,
)
from llamaforge.eval.tasks.code import load_humaneval, load_mbpp, program

# Where the host has no OS sandbox (bwrap), these tests check the scoring under --unsafe-exec; the isolation
# itself is tested (or skipped with the reason) in test_eval_sandbox_escapes.py.
FAST = Limits(timeout_s=10.0, memory_mb=512, unsafe_exec=isolation_problem() is not None)


def test_humaneval_canonical_solutions_all_pass():
    items = load_humaneval(shared_path(""))
    assert len(items) == 164
    outcomes = run_programs([program(it, it.reference) for it in items], FAST)
    failed = [(it.task_id, o.detail[-200:]) for it, o in zip(items, outcomes) if not o.passed]
    assert failed == []


def test_humaneval_wrong_solution_fails():
    item = load_humaneval(shared_path(""))[0]  # has_close_elements
    outcome = run_program(program(item, "    return False\n"), FAST)
    assert not outcome.passed and outcome.status == "failed" and "AssertionError" in outcome.detail


def test_mbpp_reference_code_passes():
    items = load_mbpp(shared_path(""))[:8]
    assert all(o.passed for o in run_programs([program(it, it.reference) for it in items], FAST))


def test_infinite_loop_is_stopped_by_the_time_limit():
    outcome = run_program("while True:\n    pass\n", Limits(timeout_s=1.0, unsafe_exec=FAST.unsafe_exec))
    assert outcome.status == "timeout" and not outcome.passed


def test_memory_limit():
    outcome = run_program("x = bytearray(2 * 1024 ** 3)\n", Limits(timeout_s=5.0, memory_mb=256,
                                                                 unsafe_exec=FAST.unsafe_exec))
    assert not outcome.passed and "MemoryError" in outcome.detail


@pytest.mark.parametrize("code", [
    "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)\n",
    "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1)\n",
])
def test_network_is_refused(code):
    outcome = run_program(code, FAST)
    assert not outcome.passed


def test_child_runs_in_an_empty_network_namespace():
    """The kernel-level half of the network rule: the child sees no interface but loopback."""
    if not network_namespace_available():
        pytest.skip("unshare -rn is not available on this host: only the Python-level guard applies")
    code = "lines = open('/proc/net/dev').read().splitlines()[2:]\n" \
           "assert [line.split(':')[0].strip() for line in lines] == ['lo'], lines\n"
    outcome = run_program(code, FAST)
    assert outcome.passed, outcome.detail


def test_writing_outside_the_folder_fails(tmp_path):
    target = tmp_path / "escaped.txt"
    outcome = run_program(f"open({str(target)!r}, 'w').write('x')\n", FAST)
    assert not outcome.passed and "PermissionError" in outcome.detail
    assert not target.exists()
    outcome = run_program(f"import os\nos.remove({str(tmp_path)!r})\n", FAST)
    assert not outcome.passed and tmp_path.exists()


def test_writing_inside_the_folder_works():
    outcome = run_program("open('out.txt', 'w').write('hi')\nassert open('out.txt').read() == 'hi'\n", FAST)
    assert outcome.passed


def test_starting_programs_is_refused():
    outcome = run_program("import subprocess\nsubprocess.run(['true'])\n", FAST)
    assert not outcome.passed and "PermissionError" in outcome.detail


def test_pass_at_k_matches_brute_force():
    from itertools import combinations

    n, c = 7, 3
    samples = [True] * c + [False] * (n - c)
    for k in (1, 2, 5):
        subsets = list(combinations(samples, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 5, 3) == 1.0
