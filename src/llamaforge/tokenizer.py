"""Tokenizers behind one interface: SentencePiece `.model` (Meta's own file loads as is), Hugging Face
`tokenizer.json`, and llama2.c `tokenizer.bin`.

Every tokenizer has `encode(text, bos=False, eos=False) -> list[int]`, `decode(ids) -> str`, `bos_id`, `eos_id`,
`vocab_size`, and `id_to_piece(i)`.
"""

from __future__ import annotations

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


# TODO(core): HFTokenizer (tokenizers library) and Llama2cTokenizer (tokenizer.bin) go here.


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
