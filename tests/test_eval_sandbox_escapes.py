"""Hostile programs against the OS sandbox (issue #18): every escape is an attempt on a sentinel the test owns
(a file, a process, a port). Each runs twice: with the Python guard (as in evaluation) and without it, so the
namespaces and rlimits alone are shown to hold."""

from __future__ import annotations

import os
import resource
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from llamaforge.errors import UserError
from llamaforge.eval import sandbox
from llamaforge.eval.sandbox import Limits, isolation_problem, run_program

REPO = Path(__file__).resolve().parents[1]

needs_isolation = pytest.mark.skipif(
    isolation_problem() is not None, reason=f"no OS sandbox on this host: {isolation_problem()}")
GUARDS = pytest.mark.parametrize("guard", [True, False], ids=["guard", "os-only"])


@pytest.fixture
def sentinel_dir():
    """A folder the test creates beside the repo's tests (visible, read-only, inside the sandbox)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=".sandbox-sentinel-", dir=REPO / "tests"))
    os.chmod(folder, 0o777)  # even a world-writable folder must stay unwritable from the sandbox
    (folder / "keep.txt").write_text("keep")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def limits(guard: bool, **kw) -> Limits:
    return Limits(timeout_s=kw.pop("timeout_s", 10.0), memory_mb=512, python_guard=guard, **kw)


@needs_isolation
@GUARDS
def test_os_open_with_dir_fd_cannot_write_outside(sentinel_dir, guard):
    code = (f"import os\nd = os.open({str(sentinel_dir)!r}, os.O_RDONLY)\n"
            "fd = os.open('escaped.txt', os.O_WRONLY | os.O_CREAT, dir_fd=d)\nos.write(fd, b'x')\n"
            "r = os.open('/', os.O_RDONLY)\n"
            f"os.open({str(sentinel_dir / 'escaped2.txt')[1:]!r}, os.O_WRONLY | os.O_CREAT, dir_fd=r)\n")
    outcome = run_program(code, limits(guard))
    assert not outcome.passed
    assert sorted(p.name for p in sentinel_dir.iterdir()) == ["keep.txt"]


@needs_isolation
@GUARDS
def test_unlink_with_dir_fd_cannot_delete_outside(sentinel_dir, guard):
    code = f"import os\nd = os.open({str(sentinel_dir)!r}, os.O_RDONLY)\nos.unlink('keep.txt', dir_fd=d)\n"
    outcome = run_program(code, limits(guard))
    assert not outcome.passed and (sentinel_dir / "keep.txt").read_text() == "keep"


@needs_isolation
@GUARDS
def test_posixsubprocess_fork_exec_cannot_write_outside(sentinel_dir, guard, tmp_path):
    target = sentinel_dir / "forked.txt"
    code = (
        "import _posixsubprocess, os\n"
        f"args = [b'/bin/sh', b'-c', b'echo x > {target}; echo y > {tmp_path}/forked.txt']\n"
        "pid = _posixsubprocess.fork_exec(args, [b'/bin/sh'], True, (), None, None, -1, -1, -1, -1, -1, -1,"
        " -1, -1, False, False, -1, None, None, None, -1, None, False)\n"
        "_, status = os.waitpid(pid, 0)\nassert os.waitstatus_to_exitcode(status) == 0, status\n"
    )
    run_program(code, limits(guard))
    assert not target.exists() and not (tmp_path / "forked.txt").exists()


def _sleeper(tag: str) -> subprocess.Popen:
    return subprocess.Popen(["sleep", f"300.{tag}"], start_new_session=True)


@needs_isolation
@GUARDS
def test_signals_cannot_reach_outside_processes(guard):
    victim = _sleeper(str(secrets.randbelow(10**6)))
    try:
        code = (f"import os, signal\nfor pid in ({victim.pid}, {os.getpid()}, os.getppid()):\n"
                "    try:\n        os.kill(pid, signal.SIGKILL)\n    except Exception as e:\n        print(e)\n")
        run_program(code, limits(guard))
        time.sleep(0.2)
        assert victim.poll() is None  # the sentinel process lives (and so does this test's process)
    finally:
        victim.kill()
        victim.wait()


def _processes_with(tag: str) -> int:
    count = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                count += tag.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                pass
    return count


@needs_isolation
@GUARDS
def test_process_count_is_bounded_and_nothing_outlives_the_run(guard):
    tag = str(secrets.randbelow(10**6))
    code = (
        "import _posixsubprocess\nstarted = 0\n"
        "for _ in range(200):\n"
        "    try:\n"
        f"        _posixsubprocess.fork_exec([b'/bin/sleep', b'300.{tag}'], [b'/bin/sleep'], True, (), None, None,"
        " -1, -1, -1, -1, -1, -1, -1, -1, False, True, -1, None, None, None, -1, None, False)\n"
        "        started += 1\n"
        "    except OSError:\n        break\n"
        "print('started', started, flush=True)\nimport sys\nsys.stderr.write(f'started {started}')\n"
    )
    outcome = run_program(code, limits(guard, processes=16))
    started = int(outcome.detail.split()[-1]) if "started" in outcome.detail else 0
    assert started < 16, outcome.detail
    time.sleep(0.3)
    assert _processes_with(f"300.{tag}") == 0


@needs_isolation
@GUARDS
@pytest.mark.parametrize("program_ends", [True, False], ids=["exits", "loops"])
def test_setsid_grandchild_holding_stderr_does_not_stretch_the_timeout(guard, program_ends):
    tag = str(secrets.randbelow(10**6))
    code = (
        "import _posixsubprocess\n"
        f"_posixsubprocess.fork_exec([b'/bin/sleep', b'30.{tag}'], [b'/bin/sleep'], False, (), None, None,"
        " -1, -1, -1, -1, -1, -1, -1, -1, False, True, -1, None, None, None, -1, None, False)\n"
        + ("" if program_ends else "while True:\n    pass\n")
    )
    start = time.monotonic()
    run_program(code, limits(guard, timeout_s=2.0))
    assert time.monotonic() - start < 4.5
    time.sleep(0.3)
    assert _processes_with(f"30.{tag}") == 0


@needs_isolation
def test_network_namespace_cannot_reach_a_port_of_the_host():
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        code = f"import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n"
        outcome = run_program(code, limits(False))
        assert not outcome.passed
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


@needs_isolation
def test_huge_stderr_is_capped_in_the_evaluator():
    code = "import sys\nblock = 'x' * (1 << 20)\nfor _ in range(400):\n    sys.stderr.write(block)\n"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcome = run_program(code, limits(True, timeout_s=30.0, output_bytes=1 << 16))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert outcome.passed and grown_mb < 100


@needs_isolation
def test_the_rest_of_the_filesystem_is_read_only_and_the_host_tmp_invisible(tmp_path):
    (tmp_path / "secret.txt").write_text("s")
    code = (f"import os\nassert not os.path.exists({str(tmp_path)!r})\nassert os.getuid() != 0\n"
            "open('inside.txt', 'w').write('ok')\n")
    assert run_program(code, limits(False)).passed


ANY_HOST = Limits(timeout_s=10.0, unsafe_exec=isolation_problem() is not None)


# pass@k that cannot be faked: only a program whose tests ran to the end passes.
@pytest.mark.parametrize("exit_call", ["import sys\nsys.exit(0)", "quit()", "import os\nos._exit(0)", "exit()"])
def test_early_exit_before_the_tests_fails(exit_call):
    program = f"def f():\n    return 1\n{exit_call}\nassert f() == 2\n"
    outcome = run_program(program, ANY_HOST)
    assert not outcome.passed and outcome.status == "failed"
    assert run_program(program.replace(exit_call, "").replace("== 2", "== 1"), ANY_HOST).passed  # the control: no early exit


def test_printing_a_pass_token_itself_does_not_pass():
    forged = (f"import re\nprint({sandbox.PASS_MARK!r} + '0' * 32)\n"
              f"src = open('runner.py').read() + open('program.py').read()\n"
              f"for t in set(re.findall('[0-9a-f]{{32}}', src)):\n    print({sandbox.PASS_MARK!r} + t)\n"
              "import os\nos._exit(0)\nassert False\n")
    assert not run_program(forged, ANY_HOST).passed


def test_without_isolation_it_refuses_in_one_line_unless_unsafe_exec(monkeypatch):
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "the kernel refused the sandbox's namespaces (x)")
    with pytest.raises(UserError, match="refusing to run generated code") as e:
        run_program("pass\n", Limits())
    assert "\n" not in str(e.value)
    with pytest.raises(UserError):
        sandbox.run_programs(["pass\n"], Limits())
    assert run_program("pass\n", Limits(unsafe_exec=True)).passed
