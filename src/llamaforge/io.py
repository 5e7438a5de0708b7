"""Neutral I/O that every room may use: atomic writes and the one JSONL reader.

Writing: a file or a folder is written under a temporary name, then renamed, so readers never see half of it.
Reading: `read_jsonl` is the project's one strict JSONL reader (plain, gzip by magic bytes, bz2, xz), with
`FILE:LINE` errors; `read_text` the one strict reader of a whole text file (binary data refused).

This module imports no torch and nothing from the project except `llamaforge.errors` (a leaf with no imports of
its own), so `llamaforge prepare` and the data workers stay free of torch.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import json
import lzma
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from llamaforge.errors import UserError


def _umask_mode(mode: int) -> int:
    """`mode` filtered by the process umask: what a plain mkdir/open would give (mkdtemp/mkstemp give 0700/0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove what a killed writer left beside `path`: `.NAME.tmp-PID-*` and `.NAME.old-PID` whose process is gone.

    The temporaries carry their writer's pid, so a live concurrent writer's files are never touched; those of the
    older naming without a pid are removed too. Returns what was removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        for p in path.parent.glob(f".{glob_escape(path.name)}.{kind}-*"):
            pid = p.name.rsplit(f".{kind}-", 1)[1].split("-", 1)[0]
            if pid.isdigit() and _pid_alive(int(pid)):
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def glob_escape(name: str) -> str:
    """`name` with glob's special characters bracketed, so it matches only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _missing_parents(path: Path) -> list[Path]:
    """The folders above `path` that do not exist yet (deepest first): what `_writable_beside` will create."""
    missing = []
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            break
        missing.append(parent)
    return missing


def _remove_created(folders: list[Path]) -> None:
    """Remove the folders a failed write created (deepest first), each only if still empty: a failed run leaves
    no empty `--out` folder behind."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another writer's files) or already gone
            return


def _writable_beside(path: Path, make_temporary, clean_stale: bool = True):
    """Create `path`'s parent folder and call `make_temporary()` (mkdtemp/mkstemp beside `path`); an OSError there
    (a read-only or pseudo file system, no permission, a parent that is a file, disk full) is the user's
    destination, not a bug: UserError naming the path and the system's reason."""
    created = _missing_parents(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if clean_stale:
            remove_stale_temporaries(path)
        return make_temporary()
    except OSError as e:
        _remove_created(created)
        raise UserError(f"{path}: cannot write here ({e.strerror or type(e).__name__}); expected a writable "
                        "destination") from None


def make_dir(path) -> Path:
    """`mkdir -p path` for a writer whose output is a folder it fills in place (training runs, `prepare`, flows:
    resumable, so not `atomic_dir`). An OSError (a parent that is a file, no permission, a read-only file system)
    is the user's destination, not a bug: UserError naming the path and the system's reason, as `atomic_dir`
    words it (it was a NotADirectoryError traceback)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path}: cannot write here ({e.strerror or type(e).__name__}); expected a writable "
                        "destination") from None
    return path


@contextlib.contextmanager
def atomic_dir(path: Path):
    """Yield a temporary folder beside `path`; on success it replaces `path`, on error it is removed.

    Temporaries of an earlier writer that was killed (`.NAME.tmp-PID-*`) are removed first. Raises UserError
    when nothing can be created beside `path`."""
    path = Path(path)
    created = _missing_parents(path)  # removed again if this write fails
    tmp = Path(_writable_beside(path, lambda: tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-",
                                                                dir=path.parent)))
    tmp.chmod(_umask_mode(0o777))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb", fsync: bool = True, clean_stale: bool = True):
    """Yield an open file beside `path`; on success it is fsynced and renamed onto `path`. Raises UserError when
    nothing can be created beside `path`.

    `fsync=False` skips the fsync (the rename is still atomic for readers; only a machine crash can lose the data):
    for bookkeeping that is checked when read and redone when damaged. `clean_stale=False` skips looking for a
    killed writer's temporaries beside `path` (a directory listing per write): for a caller that removed them
    once itself, such as the data pipeline writing thousands of task files into one folder."""
    path = Path(path)
    created = _missing_parents(path)  # removed again if this write fails
    fd, tmp = _writable_beside(path, lambda: tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-",
                                                              dir=path.parent), clean_stale)
    os.chmod(tmp, _umask_mode(0o666))
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _remove_created(created)
        raise


def named_toml(name_or_path: str, folder: Path, kind: str, flag: str) -> Path:
    """A TOML file given by path (a `.toml` name or anything with a folder in it) or by the name of one shipped in
    `folder` (`debug` -> folder/debug.toml). `kind` ("recipe", "flow") and `flag` ("--recipe", "FLOW") word the
    UserError for a missing file or an unknown name, which lists the shipped names."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or len(path.parts) > 1:  # a path, not a name
        if not path.is_file():
            raise UserError(f"{path}: no such {kind} file")
        return path
    path = Path(folder) / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(folder).glob("*.toml"))
        raise UserError(f"{flag}: unknown {kind} {name_or_path!r}; known: {', '.join(known)} or a .toml path")
    return path


# ----------------------------------------------------------------------------------------------------------------
# reading: the one JSONL reader


# what a compressed stream raises when it is cut short or corrupt
STREAM_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, OSError, lzma.LZMAError)


def open_binary(path):
    """Open a plain, gzip, .bz2 or .xz file for binary reading.

    Gzip is recognized by its magic bytes (1f 8b, RFC 1952) rather than its name, so a JSONL file gzipped without
    a `.gz` suffix still reads; bz2 and xz by their suffix. Raises OSError when the file cannot be opened.
    """
    path = str(path)
    with open(path, "rb") as f:
        is_gzip = f.read(2) == b"\x1f\x8b"
    if is_gzip:
        return gzip.open(path, "rb")
    if path.endswith(".bz2"):
        return bz2.open(path, "rb")
    if path.endswith(".xz"):
        return lzma.open(path, "rb")
    return open(path, "rb")


def numbered_lines(path) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, raw line) of a plain or compressed file.

    Raises `UserError("PATH: cannot read (...)")` when the file cannot be opened or its compressed stream is cut
    short or corrupt.
    """
    try:
        with open_binary(path) as f:
            yield from enumerate(f, 1)
    except STREAM_ERRORS as e:  # unreadable file, truncated or corrupt compressed stream
        raise UserError(f"{path}: cannot read ({e})") from None


def read_text(path) -> str:
    """The whole UTF-8 text of a plain or compressed file (`open_binary`), for inputs that are text by nature
    (`tokenizer train --input x.txt`, `eval --text`, a Jinja chat template file).

    Raises `UserError("PATH: expected UTF-8 text, found binary data at byte N")` at the first NUL byte (UTF-8 text
    has none) or the first byte that is not valid UTF-8, N counted from 0 in the (decompressed) bytes: a
    tokenizer, a PNG or a gzip of anything but text is refused rather than read as replacement characters.
    `UserError("PATH: cannot read (...)")` for an unreadable file or a broken compressed stream.
    """
    try:
        with open_binary(path) as f:
            data = f.read()
    except STREAM_ERRORS as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    bad = first_binary_byte(data)
    if bad is None:
        return data.decode("utf-8")
    raise UserError(f"{path}: expected UTF-8 text, found binary data at byte {bad}")


def first_binary_byte(data: bytes) -> int | None:
    """The offset of the first byte that UTF-8 text cannot hold, or None when `data` is UTF-8 text: a NUL byte (text
    has none) or a byte that is not valid UTF-8. The one rule of `read_text` and of the JSON readers' "binary data"
    errors (a model .bin handed in as --data)."""
    nul = data.find(b"\0")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start if nul < 0 else min(nul, e.start)
    return None if nul < 0 else nul


def read_json(path) -> dict:
    """The JSON object in the file `path`: the one reader of a JSON file a user may hand in (model configs, token
    shard headers, checkpoint state, adapter configs, fits). Raises UserError naming the file when it is missing,
    cannot be read (a folder, no permission), is not JSON (or not UTF-8), or holds something other than an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())  # json.loads decodes the bytes itself (UTF-8, or UTF-16/32 by BOM)
    except FileNotFoundError:
        raise UserError(f"{path}: missing") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def parse_jsonl_line(path, lineno: int, line: bytes | str) -> dict | None:
    """One line of a JSONL file as a dict, or None for a blank line.

    Raises `UserError("PATH:LINE: ...")` when the line is not UTF-8 JSON (binary data: "found binary data at byte N
    of the line", `first_binary_byte`) or not a JSON object.
    """
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:  # json.loads decodes bytes itself
        bad = first_binary_byte(line) if isinstance(line, bytes) else None
        if bad is not None:  # a binary file (NULs read as UTF-32 by json's guess): say so, not a codec error
            raise UserError(f"{path}:{lineno}: expected UTF-8 JSON text, found binary data at byte {bad} of the "
                            "line") from None
        raise UserError(f"{path}:{lineno}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_jsonl(path) -> Iterator[tuple[int, dict]]:
    """(line number from 1, object) for every non-blank line of a JSONL file, plain or compressed (`open_binary`).

    Strict: a line that is not JSON, or not a JSON object, raises `UserError("PATH:LINE: ...")`; an unreadable or
    cut-short file raises `UserError("PATH: cannot read ...")`. (`prepare` reads raw dumps leniently instead,
    counting bad lines: `llamaforge.data.readers.iter_jsonl`.)
    """
    for lineno, line in numbered_lines(path):
        obj = parse_jsonl_line(path, lineno, line)
        if obj is not None:
            yield lineno, obj
