"""Token shards: the on-disk form of a tokenized source, and `tokenize`, the step that writes them.

One folder per source:

    DIR/<source>/header.json   {"format", "dtype", "vocab_size", "bos_id", "eos_id", "tokenizer", "tokenizer_sha256",
                                "n_tokens", "n_docs", "n_bytes", "n_empty_skipped", "inputs"}
    DIR/<source>/tokens.bin    every document's ids back to back, little-endian uint16 (vocab <= 65536) else uint32
    DIR/<source>/offsets.bin   int64[n_docs + 1]: document d is tokens[offsets[d]:offsets[d + 1]]

The ids are the documents' own tokens, with no BOS or EOS: the loader (`mixture.py`) adds BOS before and EOS after
each document when it packs them, so one shard serves any framing. `n_bytes` is the UTF-8 size of the texts, so
bits-per-byte = loss_per_token / ln 2 * n_tokens / n_bytes. The folder is written under a temporary name and renamed
when complete; a reader checks sizes and offsets and names the file and the problem when something is off.

`tokenize` runs the tokenizer in worker processes (each loads it with `llamaforge.load_tokenizer`); chunks of input
lines are handed out in order and their results written in that same order, so the output does not depend on the
number of workers.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import multiprocessing
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from llamaforge.data.readers import input_files, text_of_line
from llamaforge.errors import UserError, check_range
from llamaforge.io import atomic_dir, numbered_lines, read_json

FORMAT = "llamaforge.tokens/1"
HEADER, TOKENS, OFFSETS = "header.json", "tokens.bin", "offsets.bin"
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")  # what a folder given to `tokenize` contributes
CHUNK_LINES = 512  # documents per worker task: large enough to amortize pickling, small enough to keep memory flat


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (ids < 65536), else uint32."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read 1 MiB at a time (shard headers record their tokenizer by it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Reading


SCAN_AT_OPEN = 1 << 28  # shards up to 256M tokens (512 MB of u2) have every id checked when opened


def recorded_tokenizer(folders) -> str | None:
    """The tokenizer file every shard folder in `folders` records in its header.json (`tokenize` writes its path
    and sha256), when all agree and the file is still there with that sha256; else None. Lets `train` put the
    tokenizer beside its final model without `--data.tokenizer`."""
    seen = set()
    for folder in folders:
        try:
            h = read_json(Path(folder) / "header.json")
        except UserError:  # not a readable header: no tokenizer to name (reading the shards says what is wrong)
            return None
        seen.add((h.get("tokenizer"), h.get("tokenizer_sha256")))
    if len(seen) != 1:
        return None
    path, sha = seen.pop()
    if not path or not sha or not Path(path).is_file() or file_sha256(Path(path)) != sha:
        return None
    return path


class TokenShard:
    """A source folder written by `tokenize`, memory-mapped and checked.

    `doc(i)` is document i's ids (a read-only numpy view); `lengths` its token counts; `bytes_per_token` converts
    a loss in nats/token to bits/byte.
    """

    def __init__(self, path):
        path = Path(path)
        self.path = path.parent if path.name == HEADER else path  # the header file stands for its folder too
        self.header = self._read_header()
        self.dtype = np.dtype(self.header["dtype"])
        self.vocab_size = int(self.header["vocab_size"])
        self.bos_id, self.eos_id = int(self.header["bos_id"]), int(self.header["eos_id"])
        self.n_tokens, self.n_docs = int(self.header["n_tokens"]), int(self.header["n_docs"])
        self.n_bytes = int(self.header["n_bytes"])
        if self.n_docs == 0 or self.n_tokens == 0:
            raise UserError(f"{self.path / HEADER}: empty shard (no documents); re-run `llamaforge tokenize`")
        self.tokens = self._map(TOKENS, self.dtype, self.n_tokens)
        self.offsets = self._map(OFFSETS, np.dtype("<i8"), self.n_docs + 1)
        self._check_offsets()
        self.lengths = np.diff(self.offsets)
        if self.n_tokens <= SCAN_AT_OPEN:  # small enough to check every id now; larger: per document, in doc()
            self._check_ids(self.tokens, "")

    @property
    def bytes_per_token(self) -> float:
        """UTF-8 bytes of the documents' text per token: bits/byte = loss / ln 2 / this."""
        return self.n_bytes / self.n_tokens

    def doc(self, i: int) -> np.ndarray:
        """Document i's ids; an id outside the header's vocabulary (a corrupt or hand-made shard) is a UserError."""
        ids = self.tokens[self.offsets[i] : self.offsets[i + 1]]
        if self.n_tokens > SCAN_AT_OPEN:
            self._check_ids(ids, f"document {i}: ")
        return ids

    def _check_ids(self, ids: np.ndarray, where: str) -> None:
        step = 1 << 24  # chunked so the check never holds more than 64 MB of the map at once
        for start in range(0, ids.size, step):
            top = int(ids[start : start + step].max())
            if top >= self.vocab_size:
                raise UserError(f"{self.path / TOKENS}: {where}ids: expected ids below vocab_size={self.vocab_size}"
                                f" (header.json), found {top}")

    def __len__(self) -> int:
        return self.n_docs

    def __repr__(self) -> str:
        return f"TokenShard({str(self.path)!r}, n_docs={self.n_docs}, n_tokens={self.n_tokens}, dtype={self.dtype})"

    def _read_header(self) -> dict:
        file = self.path / HEADER
        if not file.is_file():
            raise UserError(f"{file}: missing; expected a token shard folder written by `llamaforge tokenize`")
        header = read_json(file)
        if header.get("format") != FORMAT:
            raise UserError(f"{file}: format: expected {FORMAT!r}")
        for key in ("dtype", "vocab_size", "bos_id", "eos_id", "n_tokens", "n_docs", "n_bytes"):
            if key not in header:
                raise UserError(f"{file}: {key}: missing")
        if header["dtype"] not in ("<u2", "<u4"):
            raise UserError(f"{file}: dtype: expected '<u2' or '<u4', got {header['dtype']!r}")
        check_range(header["vocab_size"], int, 1, 1 << 32, f"{file}: vocab_size")
        for key in ("bos_id", "eos_id"):
            check_range(header[key], int, -1, header["vocab_size"] - 1, f"{file}: {key}")
        for key in ("n_tokens", "n_docs", "n_bytes"):
            check_range(header[key], int, 0, 1 << 62, f"{file}: {key}")
        return header

    def _map(self, name: str, dtype: np.dtype, count: int) -> np.ndarray:
        file = self.path / name
        if not file.is_file():
            raise UserError(f"{file}: missing")
        size, expected = file.stat().st_size, count * dtype.itemsize
        if size != expected:
            raise UserError(f"{file}: size: expected {expected} bytes ({count} x {dtype.name}), found {size}")
        return np.memmap(file, dtype=dtype, mode="r", shape=(count,))

    def _check_offsets(self):
        o = self.offsets
        if o[0] != 0 or o[-1] != self.n_tokens or np.any(o[1:] < o[:-1]):
            raise UserError(f"{self.path / OFFSETS}: offsets: expected 0 ... {self.n_tokens}, non-decreasing")


# ----------------------------------------------------------------------------------------------------------------
# Input documents (read strictly: see `readers`)


def read_chunks(files: Sequence[Path], chunk_lines: int = CHUNK_LINES) -> Iterator[tuple[str, int, list[bytes]]]:
    """(file, first line number, raw lines) in file order; JSON parsing happens in the workers."""
    for path in files:
        lines, first = [], 1
        for lineno, line in numbered_lines(path):
            lines.append(line)
            if len(lines) == chunk_lines:
                yield str(path), first, lines
                lines, first = [], lineno + 1
        if lines:
            yield str(path), first, lines


def parse_texts(path: str, first: int, lines: list[bytes]) -> list[str]:
    """The texts of raw JSONL `lines` of `path` starting at line number `first`, blank lines skipped; raises
    UserError("PATH:LINE: ...") for a line that is not a JSON object with a "text" string."""
    texts = (text_of_line(path, lineno, line) for lineno, line in enumerate(lines, first))
    return [t for t in texts if t is not None]


# ----------------------------------------------------------------------------------------------------------------
# Tokenizing (worker side)

_worker_tokenizer = None


def _init_worker(tokenizer_path: str):
    global _worker_tokenizer
    from llamaforge import load_tokenizer

    _worker_tokenizer = load_tokenizer(tokenizer_path)


LONG_DOC_CHARS = 1 << 20  # longer documents are encoded piece by piece straight into a numpy array


def _encode_long(tokenizer, text: str, dtype: np.dtype) -> np.ndarray:
    """A long document's ids as a numpy array, built from the tokenizer's `encode_pieces` (pieces cut where they
    cannot change the ids), so memory is the array (2-4 bytes a token) plus one piece's work, not a Python list
    of the whole document (~36 bytes a token). Tokenizers without `encode_pieces` encode it whole."""
    pieces = getattr(tokenizer, "encode_pieces", None)
    if pieces is None:
        return np.asarray(tokenizer.encode(text), dtype=dtype)
    parts = [np.asarray(part, dtype=dtype) for part in pieces(text)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def encode_chunk(tokenizer, path: str, first: int, lines: list[bytes], dtype: np.dtype):
    """One chunk of lines -> (ids of its non-empty documents back to back, their lengths, UTF-8 bytes, empties)."""
    texts = parse_texts(path, first, lines)
    batch = getattr(tokenizer, "encode_batch", None)
    encoded = batch(texts) if batch and not any(len(t) > LONG_DOC_CHARS for t in texts) else [
        _encode_long(tokenizer, t, dtype) if len(t) > LONG_DOC_CHARS else tokenizer.encode(t) for t in texts]
    kept = [(ids, t) for ids, t in zip(encoded, texts, strict=True) if len(ids) > 0]
    lengths = np.array([len(ids) for ids, _ in kept], dtype=np.int64)
    ids = np.fromiter(itertools.chain.from_iterable(ids for ids, _ in kept), dtype=dtype, count=int(lengths.sum()))
    n_bytes = sum(len(t.encode("utf-8")) for _, t in kept)
    return ids, lengths, n_bytes, len(texts) - len(kept)


def _encode_in_worker(path, first, lines, dtype):
    return encode_chunk(_worker_tokenizer, path, first, lines, dtype)


def _encoded_in_order(chunks, tokenizer, tokenizer_path: str, dtype: np.dtype, workers: int):
    """Encoded chunks in input order; with workers > 1, at most 2 x workers chunks are in flight."""
    if workers <= 1:
        for chunk in chunks:
            yield encode_chunk(tokenizer, *chunk, dtype)
        return
    # spawn: workers start clean (no copy of the parent's torch threads) and load the tokenizer themselves;
    # ProcessPoolExecutor (unlike multiprocessing.Pool) fails instead of hanging when a worker dies
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(tokenizer_path,)) as pool:
        pending = collections.deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(_encode_in_worker, *chunk, dtype))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


# ----------------------------------------------------------------------------------------------------------------
# Writing


class ShardWriter:
    """Write one source folder: `add` documents in order, then the header on a clean exit; all or nothing.

        with ShardWriter(dest, vocab_size=32000, bos_id=1, eos_id=2) as w:
            w.add(ids, lengths, n_bytes)   # ids of several documents back to back, and their lengths
    """

    def __init__(self, dest, vocab_size: int, bos_id: int, eos_id: int, **header_extra):
        self.dest, self.dtype = Path(dest), token_dtype(vocab_size)
        self.header = {"format": FORMAT, "dtype": self.dtype.str, "vocab_size": int(vocab_size),
                       "bos_id": int(bos_id), "eos_id": int(eos_id), **header_extra}
        self.n_tokens = self.n_docs = self.n_bytes = self.n_empty = 0

    def __enter__(self):
        self._atomic = atomic_dir(self.dest)
        self.tmp = self._atomic.__enter__()
        self._tokens = open(self.tmp / TOKENS, "wb")
        self._offsets = open(self.tmp / OFFSETS, "wb")
        self._offsets.write(np.zeros(1, dtype="<i8").tobytes())
        return self

    def add(self, ids, lengths, n_bytes: int, n_empty: int = 0):
        """Append documents: `ids` of several documents back to back, their `lengths` (tokens each), the UTF-8 bytes of
        their text and how many empty documents were skipped. Raises UserError for an id outside [0, vocab_size)."""
        ids, lengths = np.asarray(ids), np.asarray(lengths, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.header["vocab_size"]):
            raise UserError(f"{self.dest}: ids: expected 0 <= id < vocab_size={self.header['vocab_size']}")
        self._tokens.write(ids.astype(self.dtype).tobytes())
        self._offsets.write((self.n_tokens + np.cumsum(lengths)).astype("<i8").tobytes())
        self.n_tokens += int(lengths.sum())
        self.n_docs += len(lengths)
        self.n_bytes += int(n_bytes)
        self.n_empty += int(n_empty)

    def __exit__(self, exc_type, exc, tb):
        self._tokens.close()
        self._offsets.close()
        if exc_type is None and self.n_docs == 0:
            exc = UserError(f"{self.dest}: no document with text to tokenize; nothing written")
            self._atomic.__exit__(UserError, exc, None)  # removes the temporary folder
            raise exc
        if exc_type is None:
            self.header.update(n_tokens=self.n_tokens, n_docs=self.n_docs, n_bytes=self.n_bytes,
                               n_empty_skipped=self.n_empty)
            (self.tmp / HEADER).write_text(json.dumps(self.header, indent=2) + "\n")
        return self._atomic.__exit__(exc_type, exc, tb)  # renames into place, or removes on error


# ----------------------------------------------------------------------------------------------------------------
# Tokenizing (the step)


def tokenize(inputs, tokenizer_path, out_dir, source: str | None = None, workers: int = 1,
             progress: bool = False) -> Path:
    """Tokenize JSONL documents into the shard folder `out_dir/<source>` and return that folder.

    `inputs`: files or folders (a folder means its *.jsonl / *.jsonl.gz); `source` defaults to the name of the first
    input without its extensions. Documents whose text encodes to no tokens are skipped and counted.
    Raises UserError for `workers` < 1, a bad source name, missing inputs or an unusable tokenizer.
    """
    from llamaforge import load_tokenizer

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"--workers: expected a count >= 1, got {workers!r}")  # 0 and -3 used to run as 1
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files = input_files(inputs, JSONL_SUFFIXES)
    source = source or Path(inputs[0]).name.split(".")[0]
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", source):  # a folder name, never a path
        raise UserError(f"source: expected a name of letters, digits, '_', '.', '-', got {source!r}")
    tokenizer = load_tokenizer(tokenizer_path)
    tokenizer_file = Path(tokenizer.path)
    dtype = token_dtype(tokenizer.vocab_size)
    dest = Path(out_dir) / source
    header = {"source": source, "tokenizer": str(tokenizer_file.resolve()),
              "tokenizer_sha256": file_sha256(tokenizer_file), "inputs": [str(f) for f in files]}
    with ShardWriter(dest, tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id, **header) as writer:
        encoded = _encoded_in_order(read_chunks(files), tokenizer, str(tokenizer_file), dtype, workers)
        if progress:
            from tqdm import tqdm

            encoded = tqdm(encoded, desc=f"tokenize {source}", unit="chunk")
        for ids, lengths, n_bytes, n_empty in encoded:
            writer.add(ids, lengths, n_bytes, n_empty)
    return dest
