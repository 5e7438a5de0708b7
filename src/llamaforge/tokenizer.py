"""Tokenizers behind one interface: SentencePiece `.model` (Meta's own file loads as is), Hugging Face
`tokenizer.json`, and llama2.c `tokenizer.bin`.

Every tokenizer has `encode(text, bos=False, eos=False) -> list[int]`, `decode(ids) -> str`, `bos_id`, `eos_id`,
`vocab_size`, and `id_to_piece(i)`.
"""

from __future__ import annotations

import heapq
import struct
from pathlib import Path
from typing import Protocol, Sequence

from llamaforge.errors import UserError

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer.bin")


class Tokenizer(Protocol):
    bos_id: int
    eos_id: int
    vocab_size: int
    path: Path

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def id_to_piece(self, i: int) -> str: ...


class SentencePieceTokenizer:
    """A SentencePiece model file, e.g. Meta's LLaMA `tokenizer.model` ("Hello world" -> [15043, 3186])."""

    def __init__(self, path):
        import sentencepiece as spm

        self.path = Path(path)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(self.path))
        except (OSError, RuntimeError) as e:
            raise UserError(f"{self.path}: not a SentencePiece model ({e})") from None
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        self.vocab_size = self.sp.vocab_size()

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))


class HFTokenizer:
    """A Hugging Face `tokenizer.json` (the `tokenizers` library), e.g. a converted LLaMA tokenizer."""

    BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>")
    EOS_NAMES = ("</s>", "<|end_of_text|>", "<eos>")

    def __init__(self, path):
        from tokenizers import Tokenizer as _Tokenizer

        self.path = Path(path)
        try:
            self.tok = _Tokenizer.from_file(str(self.path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise UserError(f"{self.path}: not a Hugging Face tokenizer.json ({e})") from None
        self.bos_id = self._first_id(self.BOS_NAMES)
        self.eos_id = self._first_id(self.EOS_NAMES)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)

    def _first_id(self, names) -> int:
        for name in names:
            i = self.tok.token_to_id(name)
            if i is not None:
                return i
        return -1

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids  # BOS/EOS are ours to add, not the template's
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def id_to_piece(self, i: int) -> str:
        return self.tok.id_to_token(int(i))


class Llama2cTokenizer:
    """llama2.c's `tokenizer.bin`: int32 max_token_length, then per token float32 score, int32 length, bytes.

    Pieces are stored with SentencePiece's "▁" (U+2581) already turned into a space; ids 3..258 are the byte-fallback
    tokens <0x00>..<0xFF>. Encoding follows run.c: a dummy-prefix space, one token per UTF-8 character (its bytes
    when the character is not in the vocabulary), then repeatedly merge the adjacent pair whose concatenation is
    the best-scoring piece. BOS = 1, EOS = 2 as in run.c."""

    BYTE_OFFSET = 3  # id of <0x00>

    def __init__(self, path):
        self.path = Path(path)
        data = self.path.read_bytes()
        self.pieces: list[bytes] = []
        self.scores: list[float] = []
        try:
            (self.max_token_length,) = struct.unpack_from("<i", data, 0)
            offset = 4
            while offset < len(data):
                score, length = struct.unpack_from("<fi", data, offset)
                piece = data[offset + 8 : offset + 8 + length]
                if length < 0 or len(piece) != length:
                    raise struct.error("truncated piece")
                self.pieces.append(piece)
                self.scores.append(score)
                offset += 8 + length
        except struct.error:
            raise UserError(f"{self.path}: not a llama2.c tokenizer.bin (truncated at token {len(self.pieces)})") from None
        self.lookup: dict[bytes, int] = {}
        for i, piece in enumerate(self.pieces):
            self.lookup.setdefault(piece, i)  # first id wins for duplicate pieces
        self.bos_id, self.eos_id = 1, 2
        self.vocab_size = len(self.pieces)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        tokens: list[int] = []
        if text:
            tokens.append(self.lookup[b" "])  # SentencePiece's add_dummy_prefix
        for ch in text:
            b = ch.encode("utf-8")
            if b in self.lookup:
                tokens.append(self.lookup[b])
            else:  # byte fallback: one token per UTF-8 byte
                tokens.extend(byte + self.BYTE_OFFSET for byte in b)
        tokens = self._merge(tokens)
        return ([self.bos_id] if bos else []) + tokens + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def _merge(self, tokens: list[int]) -> list[int]:
        """run.c's loop (merge the best-scoring adjacent pair, the leftmost on a tie, until none is in the
        vocabulary), with a heap over a linked list instead of a rescan per merge: O(n log n), same result."""
        ids, nxt, prv = list(tokens), list(range(1, len(tokens) + 1)), list(range(-1, len(tokens) - 1))
        heap: list[tuple[float, int, int, int, int, int]] = []

        def push(i: int) -> None:  # the pair starting at symbol i, keyed by (-score, position) = best, leftmost
            j = nxt[i]
            if i >= 0 and j < len(ids):
                merged = self.lookup.get(self.pieces[ids[i]] + self.pieces[ids[j]])
                if merged is not None:
                    heapq.heappush(heap, (-self.scores[merged], i, j, ids[i], ids[j], merged))

        for i in range(len(ids) - 1):
            push(i)
        while heap:
            _, i, j, left, right, merged = heapq.heappop(heap)
            if nxt[i] != j or ids[i] != left or ids[j] != right:  # stale: a neighbour merged since
                continue
            ids[i], nxt[i] = merged, nxt[j]
            ids[j] = -1
            if nxt[j] < len(ids):
                prv[nxt[j]] = i
            push(prv[i])
            push(i)
        return [t for t in ids if t >= 0]

    def piece_bytes(self, i: int) -> bytes:
        """The bytes token i stands for: a byte token <0xXX> is that byte."""
        piece = self.pieces[i]
        if len(piece) == 6 and piece.startswith(b"<0x") and piece.endswith(b">"):
            return bytes([int(piece[3:5], 16)])
        return piece

    def decode(self, ids: Sequence[int]) -> str:
        out = bytearray()
        at_start = True  # the dummy-prefix space of the first piece (or the first after BOS) is dropped
        for i in map(int, ids):
            if i in (self.bos_id, self.eos_id):
                at_start = i == self.bos_id
                continue
            piece = self.piece_bytes(i)
            out += piece[1:] if at_start and piece.startswith(b" ") else piece
            at_start = False
        return out.decode("utf-8", errors="replace")

    def id_to_piece(self, i: int) -> str:
        return self.pieces[int(i)].decode("utf-8", errors="replace")


def _resolve(path: Path) -> Path:
    """A tokenizer file, or the first known tokenizer file inside a model folder."""
    if path.is_dir():
        for name in TOKENIZER_FILES:
            if (path / name).is_file():
                return path / name
        raise UserError(f"{path}: no tokenizer file in folder; expected one of {', '.join(TOKENIZER_FILES)}")
    if not path.exists():
        raise UserError(f"{path}: no such tokenizer file")
    return path


def load_tokenizer(path) -> Tokenizer:
    """Load a tokenizer by file type: `.model` SentencePiece, `.json` HF tokenizers, `.bin` llama2.c."""
    path = _resolve(Path(path))
    suffix = path.suffix
    if suffix == ".model":
        return SentencePieceTokenizer(path)
    if suffix == ".json":
        return HFTokenizer(path)
    if suffix == ".bin":
        return Llama2cTokenizer(path)
    raise UserError(f"{path}: unknown tokenizer type; expected a .model, .json or .bin file")
