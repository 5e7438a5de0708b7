"""Tokenizers behind one interface: SentencePiece `.model` (Meta's LLaMA-1/2 file loads as is), tiktoken
`tokenizer.model` (Meta's Llama 3 file), Hugging Face `tokenizer.json`, and llama2.c `tokenizer.bin`.

Every tokenizer has `encode(text, bos=False, eos=False) -> list[int]`, `decode(ids) -> str`, `bos_id`, `eos_id`,
`vocab_size`, `id_to_piece(i)`, `control_ids` and `special_token_id(text)`.

**Text is always encoded as text.** `encode` never turns the characters of a document into a control token:
`"<s>$40</s>"`, `"<unk>"` or `"<|eot_id|>"` inside a document or a prompt come out as the ids of those characters,
exactly as `sentencepiece` encodes them (its control symbols are never matched in input). For HF `tokenizer.json`
that means special-token splitting off (`encode_special_tokens`, HF's `split_special_tokens=True`); for tiktoken
`disallowed_special=()` with no allowed specials; for llama2.c the control and byte pieces are kept out of the merge
table. Control tokens (BOS, EOS, a chat format's headers) are added only by `bos=`/`eos=` and by the chat
templates (`llamaforge.infer.templates`), which look them up with `special_token_id`.
"""

from __future__ import annotations

import heapq
import json
import re
import struct
from pathlib import Path
from typing import Iterator, Protocol, Sequence

from llamaforge.errors import UserError

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer.bin")  # in this order inside a folder


class Tokenizer(Protocol):
    """The interface every backend implements.

    - `bos_id`, `eos_id`: the begin/end-of-text control ids (-1 when the vocabulary has none).
    - `vocab_size`: number of ids, control and special tokens included.
    - `control_ids`: ids that `encode` never produces from text (BOS, EOS, UNK, padding, every special token).
    - `encode(text, bos, eos)`: text as text (see the module docstring), BOS/EOS only when asked.
    - `decode(ids)`: the text; control ids are skipped.
    - `special_token_id(text)`: the id of a control/special token spelled `text` (`"</s>"`, `"<|eot_id|>"`), or
      None; `specials` maps every such spelling to its id. Only templates use them.
    """

    bos_id: int
    eos_id: int
    vocab_size: int
    path: Path
    control_ids: frozenset[int]
    specials: dict[str, int]

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of `text`, encoded as text (control tokens are never produced from it); BOS/EOS prepended/appended
        when asked.
        """

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, control ids skipped; invalid UTF-8 becomes U+FFFD."""

    def id_to_piece(self, i: int) -> str:
        """The vocabulary entry of id `i` as text (for display and for building byte tables)."""

    def special_token_id(self, text: str) -> int | None:
        """The id of the control/special token spelled `text` (e.g. "</s>", "<|eot_id|>"), or None."""


LONG_TEXT_CHARS = 1 << 20  # longer texts are encoded in pieces (`split_at_spaces`) so memory stays linear
_CUT = re.compile(r"(?<=\S) (?=\S)")


def split_at_spaces(text: str, chunk_chars: int = LONG_TEXT_CHARS) -> Iterator[str]:
    """`text` in consecutive pieces of about `chunk_chars` characters (joined, they are `text`), each piece after
    the first starting with a single space that follows and precedes a non-space character.

    Such a cut cannot change the ids of a tokenizer that never merges across the start of a space (SentencePiece
    with split_by_whitespace, Meta's default; llama2.c vocabularies without a piece holding an inner space): the
    tokenizer's work, and so its memory, is then bounded by one piece instead of the whole document (issue #18:
    one 50 MB line took 8.7 GB). A text without such a space stays one piece."""
    start = 0
    while len(text) - start > chunk_chars:
        cut = _CUT.search(text, start + chunk_chars)
        if cut is None:
            break
        yield text[start : cut.start()]
        start = cut.start()
    yield text[start:]


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
        # Control and unknown pieces: sentencepiece never matches them in input text (user-defined ones it does).
        self.control_ids = frozenset(i for i in range(self.vocab_size)
                                     if self.sp.is_control(i) or self.sp.is_unknown(i))
        self.specials = {self.sp.id_to_piece(i): i for i in sorted(self.control_ids)}
        self.splits_at_spaces = self._splits_at_spaces()

    def _splits_at_spaces(self) -> bool:
        """True when a cut before a space cannot change the ids (`split_at_spaces`): pieces never span the start
        of a space (split_by_whitespace), nothing rewrites spaces across the cut (identity normalization, no
        whitespace collapsing), and the dummy prefix can stand for a piece's leading space."""
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        proto.ParseFromString(self.sp.serialized_model_proto())
        norm, trainer = proto.normalizer_spec, proto.trainer_spec
        return (norm.name == "identity" and norm.add_dummy_prefix and not norm.remove_extra_whitespaces
                and norm.escape_whitespaces and trainer.split_by_whitespace
                and not trainer.treat_whitespace_as_suffix)

    def special_token_id(self, text: str) -> int | None:
        """The id of a control or unknown piece spelled `text` ("<s>", "</s>", "<unk>"), or None."""
        return self.specials.get(text)

    def encode_pieces(self, text: str) -> Iterator[list[int]]:
        """The ids of `text` in consecutive parts (concatenated: `encode(text)`): a long text in `split_at_spaces`
        pieces, each piece's leading space given back to sentencepiece as its dummy prefix (same ids, working
        memory bounded by one piece)."""
        if len(text) <= LONG_TEXT_CHARS or not self.splits_at_spaces:
            yield self.sp.encode(text)  # control symbols in `text` stay text: sentencepiece never matches them
            return
        for k, piece in enumerate(split_at_spaces(text, LONG_TEXT_CHARS)):
            yield self.sp.encode(piece if k == 0 else piece[1:])

    def _encode_text(self, text: str) -> list[int]:
        return [i for part in self.encode_pieces(text) for i in part]

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """sentencepiece's ids of `text` (control symbols in it stay text), with BOS/EOS when asked."""
        ids = self._encode_text(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids of each text (no BOS/EOS), in one sentencepiece call."""
        if any(len(t) > LONG_TEXT_CHARS for t in texts):
            return [self._encode_text(t) for t in texts]
        return self.sp.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        """sentencepiece's text of `ids` (control ids skipped)."""
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        """The piece of id `i` as stored ("▁" marks a leading space)."""
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
        # Special-token splitting off: "<s>" in a document is the characters <, s, >, never BOS (HF's
        # `split_special_tokens=True`). Added tokens that are not special (user-defined pieces) still match.
        self.tok.encode_special_tokens = True
        self.specials = {t.content: i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}
        self.control_ids = frozenset(self.specials.values())
        self.bos_id = self._first_id(self.BOS_NAMES)
        self.eos_id = self._first_id(self.EOS_NAMES)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.split_mode = self._split_mode()
        self.splits_at_spaces = self.split_mode is not None

    def _split_mode(self) -> str | None:
        """How a long text may be cut before spaces (`split_at_spaces`) without changing the ids: "prefix" (Llama 2's
        Prepend("▁") + Replace(" ", "▁") normalizer, BPE without pre-tokenizer, no token joining a non-space and
        "▁": a piece's leading space becomes the prepended "▁"), "plain" (GPT-2's byte-level regex pre-tokenizer,
        which already splits there), or None (not cut)."""
        spec = json.loads(self.tok.to_str())
        norm, pre, model = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}, spec.get("model") or {}
        steps = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm] if norm else []
        llama2 = [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]
        if steps == llama2 and not pre and model.get("type") == "BPE":
            if not any(re.search("[^▁]▁", t) for t in model.get("vocab", {})):
                return "prefix"
        if not steps and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) \
                and not pre.get("add_prefix_space", False):
            return "plain"
        return None

    def special_token_id(self, text: str) -> int | None:
        """The id of an added special token spelled `text`, or None."""
        return self.specials.get(text)

    def encode_pieces(self, text: str) -> Iterator[list[int]]:
        """The ids of `text` in consecutive parts (concatenated: `encode(text)`), one per `split_at_spaces` piece
        when that is exact for this tokenizer, so a long document's working memory is bounded by one piece."""
        pieces = split_at_spaces(text, LONG_TEXT_CHARS) if self.splits_at_spaces else [text]
        for k, piece in enumerate(pieces):
            cut = k > 0 and self.split_mode == "prefix"  # the prepended "▁" stands for the leading space
            yield self.tok.encode(piece[1:] if cut else piece, add_special_tokens=False).ids

    def _first_id(self, names) -> int:
        for name in names:
            if name in self.specials:
                return self.specials[name]
        return -1

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """The tokenizer.json ids of `text` with special-token splitting off and no template tokens; BOS/EOS when asked.
        """
        ids = [i for part in self.encode_pieces(text) for i in part]  # BOS/EOS are ours to add, not the template's
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids of each text (no BOS/EOS, no template tokens), in one `tokenizers` batch call."""
        if any(len(t) > LONG_TEXT_CHARS for t in texts):
            return [self.encode(t) for t in texts]
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, special tokens skipped."""
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def id_to_piece(self, i: int) -> str:
        """The token string of id `i` as tokenizer.json stores it."""
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
        self.bos_id, self.eos_id = 1, 2
        self.vocab_size = len(self.pieces)
        # run.c's merge table holds every piece, so text could merge into <unk>, BOS/EOS or a byte piece "<0x41>"
        # (which then decodes as "A"). SentencePiece never matches control, unknown or byte pieces in text: they
        # stay out of the table here too (ids 0-2 are <unk>, <s>, </s> in every llama2.c export).
        self.control_ids = frozenset(i for i in (0, 1, 2) if i < self.vocab_size)
        self.specials = {name: i for name, i in (("<unk>", 0), ("<s>", 1), ("</s>", 2)) if i < self.vocab_size}
        self.lookup: dict[bytes, int] = {}
        for i, piece in enumerate(self.pieces):
            if i not in self.control_ids and not self._is_byte_piece(piece):
                self.lookup.setdefault(piece, i)  # first id wins for duplicate pieces
        # `split_at_spaces` cuts between a non-space and a space: exact when no piece holds that pair (runs of
        # spaces, as Llama 2's "▁▁▁▁", are fine)
        self.splits_at_spaces = not any(re.search(rb"[^ ] ", piece) for piece in self.lookup)

    @staticmethod
    def _is_byte_piece(piece: bytes) -> bool:
        return re.fullmatch(rb"<0x[0-9A-Fa-f]{2}>", piece) is not None

    def special_token_id(self, text: str) -> int | None:
        """The id of BOS/EOS/UNK by their SentencePiece spellings ("<s>", "</s>", "<unk>"), or None."""
        return self.specials.get(text)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """run.c's encoder: a dummy-prefix space, one token per character (UTF-8 byte tokens where a character is
        not in the vocabulary), then best-score pair merges; BOS/EOS when asked.
        """
        tokens = [i for part in self.encode_pieces(text) for i in part]
        return ([self.bos_id] if bos else []) + tokens + ([self.eos_id] if eos else [])

    def encode_pieces(self, text: str) -> Iterator[list[int]]:
        """The ids of `text` in consecutive parts (concatenated: `encode(text)`), one per `split_at_spaces` piece
        when that is exact (see `splits_at_spaces`): working memory bounded by one piece."""
        pieces = split_at_spaces(text, LONG_TEXT_CHARS) if self.splits_at_spaces else [text]
        for k, piece in enumerate(pieces):
            yield self._encode_piece(piece, dummy_prefix=k == 0 and bool(text))

    def _encode_piece(self, text: str, dummy_prefix: bool) -> list[int]:
        tokens: list[int] = []
        if dummy_prefix:
            tokens.append(self.lookup[b" "])  # SentencePiece's add_dummy_prefix
        for ch in text:
            b = ch.encode("utf-8")
            if b in self.lookup:
                tokens.append(self.lookup[b])
            else:  # byte fallback: one token per UTF-8 byte
                tokens.extend(byte + self.BYTE_OFFSET for byte in b)
        return self._merge(tokens)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids of each text (no BOS/EOS)."""
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
        if self._is_byte_piece(piece):
            return bytes([int(piece[3:5], 16)])
        return piece

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`: byte tokens become their bytes, the first piece's dummy-prefix space is dropped, control
        ids skipped.
        """
        out = bytearray()
        at_start = True  # the dummy-prefix space of the first piece (or the first after BOS) is dropped
        for i in map(int, ids):
            if i in self.control_ids:
                at_start = i == self.bos_id
                continue
            piece = self.piece_bytes(i)
            out += piece[1:] if at_start and piece.startswith(b" ") else piece
            at_start = False
        return out.decode("utf-8", errors="replace")

    def id_to_piece(self, i: int) -> str:
        """The piece of id `i` as stored in tokenizer.bin (byte tokens spelled <0xXX>)."""
        return self.pieces[int(i)].decode("utf-8", errors="replace")


# Meta's Llama 3 tokenizer (meta-llama/llama3, llama/tokenizer.py): the pre-tokenizer regex, the 256 special tokens
# that follow the 128,000 BPE ranks, and the input splits Meta applies before tiktoken.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_NUM_SPECIAL = 256
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"] + [
    f"<|reserved_special_token_{i}|>" for i in range(5, LLAMA3_NUM_SPECIAL - 5)]
TIKTOKEN_MAX_ENCODE_CHARS = 400_000  # Meta encodes long inputs in pieces of this many characters
MAX_NO_WHITESPACES_CHARS = 25_000  # ... and cuts runs of only-space / only-non-space characters at this length


def is_tiktoken_file(path: Path) -> bool:
    """A tiktoken BPE file: lines of `<base64 token bytes> <rank>` (SentencePiece files are binary protobuf)."""
    with open(path, "rb") as f:
        head = f.read(256).split(b"\n", 1)[0]
    return re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+\r?", head) is not None


class TiktokenTokenizer:
    """Meta's Llama 3 / 3.1 / 3.2 `tokenizer.model`: byte-level BPE ranks for the `tiktoken` package (read from the
    local file, nothing downloaded), Meta's pre-tokenizer pattern, and 256 special tokens at ids 128000-128255
    ("Hello world" -> [9906, 1917]).

    The special tokens' names are Llama 3's (`<|begin_of_text|>` 128000, `<|end_of_text|>` 128001,
    `<|start_header_id|>` 128006, `<|end_header_id|>` 128007, `<|eot_id|>` 128009, the rest reserved); a
    `tokenizer_config.json` beside the file (HF's `added_tokens_decoder`) overrides them, e.g. Llama 3.1's
    `<|eom_id|>` and `<|python_tag|>`. Special-token strings in text are encoded as text (`disallowed_special=()`,
    no allowed specials: Meta's own defaults). Long inputs are split as Meta's `Tokenizer.encode` splits them."""

    def __init__(self, path, special_tokens: Sequence[str] | None = None, ranks: dict[bytes, int] | None = None):
        """`path`: the tokenizer.model; `ranks` (token bytes -> rank) instead of reading it, e.g. from a GGUF
        vocabulary, with `path` naming the source for messages."""
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        self.path = Path(path)
        if ranks is None:
            try:
                ranks = load_tiktoken_bpe(str(self.path))
            except (ValueError, OSError) as e:
                raise UserError(f"{self.path}: not a tiktoken BPE file ({e})") from None
        self.num_base_tokens = len(ranks)
        if sorted(ranks.values()) != list(range(len(ranks))):
            raise UserError(f"{self.path}: ranks: expected 0..{len(ranks) - 1} with none missing or repeated")
        names = list(special_tokens) if special_tokens is not None else self._names_beside(self.path, len(ranks))
        self.specials = {name: self.num_base_tokens + i for i, name in enumerate(names)}
        self.enc = tiktoken.Encoding(name=self.path.name, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                                     special_tokens=self.specials)
        self.control_ids = frozenset(self.specials.values())
        self.bos_id = self.specials.get("<|begin_of_text|>", -1)
        self.eos_id = self.specials.get("<|end_of_text|>", -1)
        self.vocab_size = self.num_base_tokens + len(names)

    @staticmethod
    def _names_beside(path: Path, first_id: int) -> list[str]:
        """Special-token names from a tokenizer_config.json next to the file, else Llama 3's."""
        config = path.parent / "tokenizer_config.json"
        if config.is_file():
            try:
                added = json.loads(config.read_text()).get("added_tokens_decoder") or {}
                by_id = sorted((int(i), t["content"]) for i, t in added.items() if t.get("special"))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise UserError(f"{config}: added_tokens_decoder: expected id -> {{content, special}}") from None
            if by_id and [i for i, _ in by_id] == list(range(first_id, first_id + len(by_id))):
                return [name for _, name in by_id]
        return list(LLAMA3_SPECIALS)

    def special_token_id(self, text: str) -> int | None:
        """The id of a Llama 3 special token spelled `text` ("<|begin_of_text|>", "<|eot_id|>", ...), or None."""
        return self.specials.get(text)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Byte-level BPE ids of `text` with no special token allowed (Meta's defaults), split first as Meta's
        `Tokenizer.encode` does (400k-character chunks, runs of at most 25k same-kind characters); BOS/EOS when asked.
        """
        ids: list[int] = []
        for start in range(0, len(text), TIKTOKEN_MAX_ENCODE_CHARS):
            for piece in _split_runs(text[start : start + TIKTOKEN_MAX_ENCODE_CHARS], MAX_NO_WHITESPACES_CHARS):
                ids += self.enc.encode(piece, allowed_special=set(), disallowed_special=())
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids of each text (no BOS/EOS)."""
        return [self.encode(t) for t in texts]

    def token_bytes(self, i: int) -> bytes:
        """The bytes of token i (b"" for a special token)."""
        i = int(i)
        return b"" if i in self.control_ids else self.enc.decode_single_token_bytes(i)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, special tokens skipped; invalid UTF-8 becomes U+FFFD."""
        ids = [int(i) for i in ids if int(i) not in self.control_ids and 0 <= int(i) < self.num_base_tokens]
        return self.enc.decode_bytes(ids).decode("utf-8", errors="replace")

    def id_to_piece(self, i: int) -> str:
        """The spelling of a special token, or the bytes of a BPE token as text."""
        i = int(i)
        names = {v: k for k, v in self.specials.items()}
        return names[i] if i in names else self.enc.decode_single_token_bytes(i).decode("utf-8", errors="replace")


def _split_runs(s: str, max_run: int):
    """Meta's `_split_whitespaces_or_nonwhitespaces`: cut `s` so that no piece holds more than `max_run`
    consecutive characters that are all whitespace or all non-whitespace (keeps tiktoken's regex fast)."""
    run, start, prev_space = 0, 0, None
    for i, ch in enumerate(s):
        space = ch.isspace()
        run = run + 1 if space == prev_space else 1
        prev_space = space
        if run > max_run:
            yield s[start:i]
            start, run = i, 1
    yield s[start:]


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
    """Load a tokenizer by file type: `.model` SentencePiece or tiktoken (told apart by content), `.json` HF
    tokenizers, `.bin` llama2.c. Raises UserError for a missing or malformed file."""
    path = _resolve(Path(path))
    suffix = path.suffix
    if suffix in (".model", ".tiktoken"):
        return TiktokenTokenizer(path) if is_tiktoken_file(path) else SentencePieceTokenizer(path)
    if suffix == ".json":
        return HFTokenizer(path)
    if suffix == ".bin":
        return Llama2cTokenizer(path)
    raise UserError(f"{path}: unknown tokenizer type; expected a .model, .tiktoken, .json or .bin file")
