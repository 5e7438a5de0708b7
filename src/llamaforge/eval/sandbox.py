"""Run generated code (HumanEval, MBPP) in a child process with limits. Read this before trusting it.

What is enforced, and by what:
- **Time**: a wall-clock timeout kills the child's whole process group (its own session); RLIMIT_CPU caps CPU
  seconds as well.
- Resource limits are set by the child's first lines, before the program (soft = hard: it cannot raise them).
- **Memory**: RLIMIT_AS caps the address space (an allocation beyond it raises MemoryError in the child).
- **File size**: RLIMIT_FSIZE caps any file the child writes; RLIMIT_CORE = 0 (no core dumps).
- **Network**: when `unshare -rn` works on the host (Linux user + network namespaces), the child runs in an empty
  network namespace: the kernel has no route anywhere. Always, in addition, a Python audit hook in the child
  refuses `socket.*` calls.
- **Filesystem**: the child runs in a fresh temporary folder (deleted afterwards); the audit hook refuses opening
  files for writing, and removing, renaming or creating files and folders, anywhere outside that folder, and
  refuses starting other programs (`subprocess`, `os.system`, `os.exec*`).

The audit hook is a guard at the Python level (PEP 578), not a kernel sandbox: code that loads native code
(ctypes) can get around it. It stops the accidents that model-written code makes; for code from an adversary,
run the evaluation inside a container or VM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Installed in the child before the program runs. `sandbox_root` is the child's working folder.
GUARD = r'''
import os, sys
_root = os.path.realpath(os.getcwd())

def _inside(path):
    try:
        p = os.path.realpath(os.fsdecode(path) if not isinstance(path, int) else "")
    except Exception:
        return False
    return p == _root or p.startswith(_root + os.sep)

_WRITE_EVENTS = {"os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.symlink", "os.link", "os.truncate",
                 "os.chmod", "os.chown", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
_DENIED = ("socket.", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
           "os.forkpty", "pty.spawn", "ctypes.dlopen")

def _guard(event, args):
    if event.startswith(_DENIED):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2] if len(args) > 2 else 0
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
        if writing and not _inside(args[0]):
            raise PermissionError(f"sandbox: writing outside the sandbox folder: {args[0]}")
    elif event in _WRITE_EVENTS:
        for a in args[:2]:
            if isinstance(a, (str, bytes, os.PathLike)) and not _inside(a):
                raise PermissionError(f"sandbox: {event} outside the sandbox folder: {a}")

sys.addaudithook(_guard)
del _guard
'''


@dataclass
class Limits:
    timeout_s: float = 5.0  # wall clock
    memory_mb: int = 1024  # address space
    file_size_mb: int = 16


@dataclass
class Outcome:
    passed: bool
    status: str  # "passed", "failed", "timeout"
    detail: str = ""  # the tail of stderr when it failed


@lru_cache(maxsize=1)
def network_namespace_available() -> bool:
    """True when `unshare -rn` can start a process in a fresh network namespace on this host."""
    if shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10, check=False)
        return probe.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _rlimits(limits: Limits) -> str:
    """Prelude that sets the child's resource limits (soft = hard, so the program cannot raise them again).

    Set by the child itself rather than in a `preexec_fn`, which is unsafe in a threaded parent."""
    cpu = int(limits.timeout_s) + 1
    memory = limits.memory_mb * 1024 * 1024
    size = limits.file_size_mb * 1024 * 1024
    return (
        "import resource\n"
        f"resource.setrlimit(resource.RLIMIT_CPU, ({cpu}, {cpu}))\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size}, {size}))\n"
        "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
    )


def run_program(program: str, limits: Limits | None = None) -> Outcome:
    """Run a Python program; it passes when it exits with status 0 within the limits."""
    limits = limits or Limits()
    with tempfile.TemporaryDirectory(prefix="llamaforge-sandbox-") as folder:
        Path(folder, "program.py").write_text(_rlimits(limits) + GUARD + "\n" + program)
        command = [sys.executable, "-I", "-B", "program.py"]  # -I: ignore env vars and user site-packages
        if network_namespace_available():
            command = ["unshare", "-rn", *command]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": folder, "TMPDIR": folder,
               "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(
            command, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True,  # own process group: a timeout kills all of it
        )
        try:
            _, err = proc.communicate(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return Outcome(False, "timeout", f"killed after {limits.timeout_s} s")
        detail = err.decode("utf-8", "replace")[-2000:]
        if proc.returncode == 0:
            return Outcome(True, "passed")
        if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            return Outcome(False, "timeout", detail or "CPU time limit")
        return Outcome(False, "failed", detail)


def run_programs(programs: list[str], limits: Limits | None = None, workers: int | None = None) -> list[Outcome]:
    """Run many programs in parallel (each in its own sandboxed process); results in input order."""
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: run_program(p, limits), programs))


def describe() -> dict:
    """What this host enforces, for the results' config block."""
    return {"network_namespace": network_namespace_available(), "filesystem_guard": "python audit hook",
            "rlimits": ["CPU", "AS", "FSIZE", "CORE"]}


if __name__ == "__main__":  # `python -m llamaforge.eval.sandbox FILE.py`: run one file and print the outcome
    print(json.dumps(run_program(Path(sys.argv[1]).read_text()).__dict__))
