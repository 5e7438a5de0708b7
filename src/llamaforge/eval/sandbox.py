"""Run generated code (HumanEval, MBPP) isolated by the operating system. Read this before trusting it.

What is enforced, and by what (each program runs in a fresh process tree):

| property                        | enforced by                                                                  |
|---------------------------------|------------------------------------------------------------------------------|
| filesystem read-only but one folder | bubblewrap (`bwrap`): a new **mount namespace** with `/` bound read-only, a fresh tmpfs on `/tmp` (the host's `/tmp` is invisible) and one fresh, empty temporary folder bound writable at `/tmp/sandbox`. Holds for `open`, `os.open(dir_fd=...)`, `unlink(dir_fd=...)`, `_posixsubprocess`, ctypes: the kernel refuses with EROFS. |
| no signals to outside processes | a new **PID namespace**: the program sees only its own tree (the evaluator and every other process do not exist for it). |
| nothing outlives the run        | the PID namespace's init dies when the program ends (kernel kills every process left in it); `--die-with-parent` ties it to the evaluator; on timeout the evaluator kills bwrap. A `setsid` grandchild dies with the namespace too, so it cannot hold the output pipes open. |
| no network                      | a new **network namespace** with only an unconfigured loopback: no route anywhere, not even to the host's 127.0.0.1. |
| not the evaluating user         | run as root: bwrap sets up the namespaces, then `setpriv` drops to uid/gid 65534 (nobody) with no capabilities and an empty bounding set. Run as another user: a new **user namespace** (unprivileged bwrap). |
| processes, memory, file size, CPU, open files | **rlimits** set (soft = hard; they cannot be raised again) by the sandbox's own first lines before the program is read: RLIMIT_NPROC, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_CPU, RLIMIT_NOFILE, RLIMIT_CORE = 0. RLIMIT_NPROC counts the processes of uid 65534 (as root) or of the user in its namespace, so it is a real bound only because the program is not root. |
| wall-clock time                 | the evaluator: it kills the sandbox at `timeout_s`, whatever the program's children hold open. |
| evaluator memory                | the evaluator keeps only the last `output_bytes` of stdout and of stderr (a program writing 400 MB costs 2 × that). |
| a pass means the tests ran      | a per-run random token, given on stdin (never written to disk) and printed by the harness only after the program (completion + tests) ran to its end; the evaluator requires it as the last line of stdout. `sys.exit(0)`, `quit()`, `os._exit(0)` before the tests therefore fail, as in human-eval. |
| second layer                    | a Python audit hook (PEP 578) in the child refuses sockets, starting programs and writes outside the folder; it catches model-written accidents with a readable message, the namespaces above are what holds. |

Where bwrap is missing or the kernel refuses namespaces, `run_program` raises `UserError` with one line and runs
nothing, unless `Limits.unsafe_exec` is set (the `--unsafe-exec` flag): then only the rlimits, the process group,
the empty network namespace of `unshare -rn` (when available) and the Python guard apply, which native code can
get around. The token cannot be forged without reading the harness's own memory (deliberate introspection of the
interpreter), which no sandbox that runs Python in-process can exclude; it defeats every early exit.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from llamaforge.errors import UserError

INSIDE = "/tmp/sandbox"  # where the writable folder appears inside the sandbox
PYTHON_INSIDE = "/tmp/.python"  # where the interpreter's install appears inside (readable by uid 65534)
NOBODY = 65534
PASS_MARK = "llamaforge-sandbox-pass:"

# Installed in the child before the program runs (second layer; the namespaces are the first).
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
           "os.forkpty", "pty.spawn", "ctypes.dlopen", "os.kill", "os.killpg")

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

# Runs the program, then prints the per-run token: only a program that ran to its end prints it.
RUNNER = r'''
def _run():
    token = sys.stdin.readline().strip()  # from the evaluator's pipe; never on disk
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    with open("program.py", encoding="utf-8") as f:
        code = compile(f.read(), "program.py", "exec")
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    sys.stdout.flush()
    os.write(1, ("\n" + MARK + token + "\n").encode())

_run()
'''


@dataclass
class Limits:
    """What one program may use. Units: seconds, MiB, counts, bytes."""

    timeout_s: float = 5.0  # wall clock (RLIMIT_CPU = this + 1 s of CPU)
    memory_mb: int = 1024  # RLIMIT_AS
    file_size_mb: int = 16  # RLIMIT_FSIZE
    processes: int = 32  # RLIMIT_NPROC (processes and threads of the sandbox's uid)
    open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 1 << 20  # tail of stdout and of stderr kept by the evaluator
    unsafe_exec: bool = False  # run without OS isolation where it is unavailable (`--unsafe-exec`)
    python_guard: bool = True  # the audit-hook second layer (tests turn it off to test the OS layer alone)


@dataclass
class Outcome:
    """The result of running one program: passed (exit status 0 and the run's token printed), status passed | failed |
    timeout, and stderr's tail.
    """
    passed: bool
    status: str  # "passed", "failed", "timeout"
    detail: str = ""  # the tail of stderr when it failed


@lru_cache(maxsize=1)
def isolation_problem() -> str | None:
    """None when bwrap can build the sandbox on this host, else one line saying why not."""
    if shutil.which("bwrap") is None:
        return "bwrap (bubblewrap) is not installed (Debian: apt-get install bubblewrap)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed, needed to drop root inside the sandbox"
    with tempfile.TemporaryDirectory(prefix="llamaforge-sandbox-probe-") as folder:
        command, fds = _bwrap_command(folder, ["true"])
        try:
            probe = subprocess.run(command, capture_output=True, timeout=30, check=False, pass_fds=fds)
        except (OSError, subprocess.SubprocessError) as e:
            return f"bwrap could not start: {e}"
        finally:
            for fd in fds:
                os.close(fd)
    if probe.returncode != 0:
        reason = probe.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        return f"the kernel refused the sandbox's namespaces ({reason[0]})"
    return None


@lru_cache(maxsize=1)
def network_namespace_available() -> bool:
    """True when `unshare -rn` can start a process in a fresh network namespace (the --unsafe-exec fallback)."""
    if shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10, check=False)
        return probe.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _python_inside() -> tuple[str, str]:
    """(install folder on the host, interpreter path inside the sandbox)."""
    base = os.path.realpath(sys.base_prefix)
    exe = os.path.realpath(sys.executable)
    if not exe.startswith(base + os.sep):
        return "", exe
    return base, PYTHON_INSIDE + exe[len(base):]


def _bwrap_command(folder: str, argv: list[str]) -> tuple[list[str], list[int]]:
    """The bwrap command line running argv with `folder` writable at INSIDE; and fds to pass (none today)."""
    base, _ = _python_inside()
    command = [
        "bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session",
        "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
    ]
    if base:
        command += ["--ro-bind", base, PYTHON_INSIDE]
    command += ["--bind", folder, INSIDE, "--chdir", INSIDE, "--clearenv",
                "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", INSIDE,
                "--setenv", "TMPDIR", INSIDE, "--setenv", "PYTHONHASHSEED", "0", "--setenv", "OMP_NUM_THREADS", "1"]
    if os.geteuid() == 0:
        # bwrap as root makes no user namespace; it keeps only the right to change uid, which setpriv then
        # gives up together with every capability.
        command += ["--cap-add", "CAP_SETUID,CAP_SETGID", "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                    "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--"]
    else:
        command.insert(1, "--unshare-user")
    return command + argv, []


def _rlimits(limits: Limits) -> str:
    """Prelude that sets the child's resource limits (soft = hard, so the program cannot raise them again).

    Set by the child itself rather than in a `preexec_fn`, which is unsafe in a threaded parent."""
    cpu = int(limits.timeout_s) + 1
    memory = limits.memory_mb * 1024 * 1024
    size = limits.file_size_mb * 1024 * 1024
    return (
        "import os, sys, resource\n"
        f"resource.setrlimit(resource.RLIMIT_CPU, ({cpu}, {cpu}))\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size}, {size}))\n"
        f"resource.setrlimit(resource.RLIMIT_NPROC, ({limits.processes}, {limits.processes}))\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limits.open_files}, {limits.open_files}))\n"
        "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
    )


def _collect(proc: subprocess.Popen, timeout_s: float, cap: int) -> tuple[bytes, bytes, bool]:
    """Read stdout and stderr, keeping the last `cap` bytes of each, until both close or the time is up.

    Returns (stdout tail, stderr tail, timed out). The timeout kills the process group; a pipe still held after
    the process is gone (only possible without a PID namespace) is abandoned after half a second."""
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    tails = {out_fd: bytearray(), err_fd: bytearray()}
    selector = selectors.DefaultSelector()
    for fd in tails:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    timed_out, gone_at = False, None
    try:
        while selector.get_map():
            now = time.monotonic()
            if proc.poll() is not None:
                gone_at = gone_at or now
                if now - gone_at > 0.5:
                    break
            elif now >= deadline and not timed_out:
                timed_out = True
                _kill(proc)
            for key, _ in selector.select(timeout=0.05):
                try:
                    chunk = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                tail = tails[key.fd]
                tail += chunk
                if len(tail) > cap:
                    del tail[: len(tail) - cap]
    finally:
        selector.close()
        if proc.poll() is None:
            _kill(proc)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return bytes(tails[out_fd]), bytes(tails[err_fd]), timed_out


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_program(program: str, limits: Limits | None = None) -> Outcome:
    """Run a Python program in the sandbox; it passes when it runs to its end (the harness then prints the run's
    token) and exits with status 0, within the limits.

    Raises UserError (one line) when the host cannot isolate it and `limits.unsafe_exec` is not set."""
    limits = limits or Limits()
    problem = isolation_problem()
    if problem and not limits.unsafe_exec:
        raise UserError(f"sandbox: {problem}; refusing to run generated code (--unsafe-exec runs it with only "
                        "rlimits and a Python-level guard)")
    token = secrets.token_hex(16)
    runner = _rlimits(limits) + (GUARD if limits.python_guard else "") + f"MARK = {PASS_MARK!r}\n" + RUNNER
    with tempfile.TemporaryDirectory(prefix="llamaforge-sandbox-") as folder:
        Path(folder, "program.py").write_text(program, encoding="utf-8")
        Path(folder, "runner.py").write_text(runner, encoding="utf-8")
        python_args = ["-I", "-B", "runner.py"]  # -I: ignore env vars and user site-packages
        if problem is None:
            if os.geteuid() == 0:
                os.chown(folder, NOBODY, NOBODY)
            command, fds = _bwrap_command(folder, [_python_inside()[1], *python_args])
            cwd, env = "/", {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        else:  # --unsafe-exec on a host without namespaces
            command, fds = [sys.executable, *python_args], []
            if network_namespace_available():
                command = ["unshare", "-rn", *command]
            cwd, env = folder, {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": folder, "TMPDIR": folder,
                                "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, pass_fds=fds,  # own process group: a timeout kills all of it
        )
        try:
            proc.stdin.write((token + "\n").encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        out, err, timed_out = _collect(proc, limits.timeout_s, limits.output_bytes)
    detail = err.decode("utf-8", "replace")[-2000:]
    if timed_out:
        return Outcome(False, "timeout", f"killed after {limits.timeout_s} s")
    last_line = out.decode("utf-8", "replace").rstrip("\n").rpartition("\n")[2]
    if proc.returncode == 0 and last_line == PASS_MARK + token:
        return Outcome(True, "passed")
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL):
        return Outcome(False, "timeout", detail or "CPU time limit")
    if proc.returncode == 0:
        detail = detail or "the program exited before its tests ran to the end (no pass token)"
    return Outcome(False, "failed", detail)


def run_programs(programs: list[str], limits: Limits | None = None, workers: int | None = None) -> list[Outcome]:
    """Run many programs in parallel (each in its own sandbox); results in input order.

    Raises UserError before running anything when the host cannot isolate them (see `run_program`)."""
    limits = limits or Limits()
    if isolation_problem() and not limits.unsafe_exec:
        run_program("", limits)  # raises the one-line refusal
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: run_program(p, limits), programs))


if __name__ == "__main__":  # `python -m llamaforge.eval.sandbox FILE.py`: run one file and print the outcome
    print(json.dumps(run_program(Path(sys.argv[1]).read_text()).__dict__))
