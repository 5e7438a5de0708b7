"""Incremental detokenization: token ids in, complete UTF-8 text out, stop strings matched on the text.

Every surface that shows generated text while it is produced (the server's completions and chat streams, the
`generate` and `chat` commands, `llamaforge.generate(on_text=...)`) reads it from the engine, which runs one
`Detokenizer` per request; the non-streamed text is the same object's `text`. So the streamed pieces always join
to exactly the non-streamed text.

Why bytes, not characters: with byte fallback (SentencePiece, Llama 2) a character outside the vocabulary is
spelled as one token per UTF-8 byte ("😀" = <0xF0> <0x9F> <0x98> <0x80>). Decoding a prefix of those tokens as
text gives replacement characters that the whole sequence does not have. Here every token maps to its bytes
(`token_bytes`), the bytes go through one incremental UTF-8 decoder, and only complete characters come out; the
bytes of an unfinished character wait for the next token. Invalid sequences become U+FFFD by the Unicode
"maximal subpart" rule (Python's `errors="replace"`), identically streamed or not.

The text of a sequence is the concatenation of its tokens' bytes, except that a backend which drops the leading
space of the first piece (SentencePiece's dummy prefix: "▁Hi" at the start decodes to "Hi") does so here too:
which tokens lose it is read off the backend's own `decode` once per tokenizer, so the result equals
`tokenizer.decode(ids)` for every valid UTF-8 output.
"""

from __future__ import annotations

import codecs
import re
import weakref
from collections.abc import Sequence

_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class Vocabulary:
    """A tokenizer's tokens as bytes (`pieces[i]`), and which of them lose a leading space at the start of a text
    (`strips_at_start`). Control tokens (BOS, EOS, other special tokens) are b"". Ids past the tokenizer (a model
    whose embedding has more rows than the tokenizer has pieces) have no bytes: `bytes_of` returns b"" for them."""

    def __init__(self, tokenizer):
        self.pieces: list[bytes] = _token_bytes(tokenizer)
        self.strips_at_start: set[int] = set()
        for i, b in enumerate(self.pieces):
            if b.startswith(b" ") and tokenizer.decode([i]) == b[1:].decode("utf-8", "replace"):
                self.strips_at_start.add(i)

    def bytes_of(self, token: int) -> bytes:
        """The UTF-8 bytes token `token` stands for (b"" for an id outside the vocabulary, e.g. a padded embedding row).
        """
        return self.pieces[token] if 0 <= token < len(self.pieces) else b""


def vocabulary(tokenizer) -> Vocabulary:
    """The tokenizer's `Vocabulary`, built once per tokenizer object (a vocabulary-sized table)."""
    try:
        return _TABLES[tokenizer]
    except (KeyError, TypeError):
        pass
    table = Vocabulary(tokenizer)
    try:
        _TABLES[tokenizer] = table
    except TypeError:  # an object without weak references: no caching
        pass
    return table


def _token_bytes(tokenizer) -> list[bytes]:
    """Every token id's bytes, read from the backend (the project's three tokenizer classes, or any object with a
    `token_bytes(i)` method, e.g. a tiktoken-based one)."""
    n = tokenizer.vocab_size
    if hasattr(tokenizer, "token_bytes"):
        return [tokenizer.token_bytes(i) for i in range(n)]
    if hasattr(tokenizer, "sp"):  # SentencePiece
        sp, out = tokenizer.sp, []
        for i in range(n):
            if sp.is_control(i):
                out.append(b"")
            elif sp.is_byte(i):
                out.append(bytes([int(sp.id_to_piece(i)[3:5], 16)]))
            elif sp.is_unknown(i):
                out.append(sp.decode([i]).encode("utf-8"))  # " ⁇ ", as SentencePiece writes it
            else:
                out.append(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        return out
    if hasattr(tokenizer, "piece_bytes"):  # llama2.c tokenizer.bin
        return [b"" if i in (tokenizer.bos_id, tokenizer.eos_id) else tokenizer.piece_bytes(i) for i in range(n)]
    if hasattr(tokenizer, "tok"):  # HF tokenizers
        return _hf_token_bytes(tokenizer.tok, n)
    return [tokenizer.decode([i]).encode("utf-8") for i in range(n)]  # lossy for partial characters


def _hf_token_bytes(tok, n: int) -> list[bytes]:
    import json

    spec = json.loads(tok.to_str())
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}

    def kinds(d):
        if not d:
            return set()
        return set().union(*(kinds(x) for x in d.get("decoders", []))) | {d.get("type")}

    decoders = kinds(spec.get("decoder"))
    if "ByteLevel" in decoders:  # GPT-2's byte-to-printable-character map, inverted
        printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
        chars, extra = {b: chr(b) for b in printable}, 0
        for b in range(256):
            if b not in chars:
                chars[b], extra = chr(256 + extra), extra + 1
        to_byte = {c: b for b, c in chars.items()}
    out = []
    for i in range(n):
        piece = tok.id_to_token(i)
        if piece is None or i in special:
            out.append(b"")
        elif "ByteLevel" in decoders:
            out.append(bytes(to_byte[c] for c in piece) if all(c in to_byte for c in piece) else piece.encode())
        elif "ByteFallback" in decoders and _BYTE_PIECE.match(piece):
            out.append(bytes([int(piece[3:5], 16)]))
        else:
            out.append(piece.replace("\u2581", " ").encode("utf-8"))
    return out


class IncrementalDecoder:
    """Token ids in, the characters each token completes out (bytes of an unfinished character wait).

    `at_start`: no text precedes the first token (only control tokens, e.g. BOS), so a backend's leading-space
    rule applies to the first token with text."""

    def __init__(self, tokenizer, at_start: bool = True):
        self.vocab = vocabulary(tokenizer)
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._at_start = at_start

    def _bytes(self, token: int) -> bytes:
        b = self.vocab.bytes_of(token)
        if self._at_start and b and token in self.vocab.strips_at_start:
            b = b[1:]
        return b

    def decode(self, token: int) -> str:
        """The complete characters that token adds (possibly "")."""
        b = self._bytes(token)
        if b:
            self._at_start = False
        return self._utf8.decode(b)

    def peek(self, token: int) -> str:
        """What `decode(token)` would return now, without consuming it (for alternatives, e.g. top logprobs)."""
        state = self._utf8.getstate()
        try:
            return self._utf8.decode(self._bytes(token))
        finally:
            self._utf8.setstate(state)

    def flush(self) -> str:
        """The end of the sequence: an unfinished character becomes U+FFFD."""
        return self._utf8.decode(b"", final=True)


def token_strings(tokenizer, ids: Sequence[int], at_start: bool = True) -> list[str]:
    """The text of each token of a whole sequence: the characters it completes, the end flushed into the last
    one. "".join(token_strings(ids)) is the sequence's text."""
    dec = IncrementalDecoder(tokenizer, at_start)
    out = [dec.decode(int(t)) for t in ids]
    tail = dec.flush()
    if tail:
        if out:
            out[-1] += tail
    return out


def decode_text(tokenizer, ids: Sequence[int]) -> str:
    """The text of a whole sequence (from its start), never raising on ids the tokenizer does not have."""
    return "".join(token_strings(tokenizer, ids))


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """text up to (not including) the earliest occurrence of any stop string."""
    end = len(text)
    for s in until:
        if s:
            i = text.find(s)
            if i != -1:
                end = min(end, i)
    return text[:end]


class Detokenizer:
    """One generated sequence's text: `add(token)` returns the text that may be shown now, `finish()` the rest.

    prompt: the ids before the first new token; they set the decoder's state (the leading-space rule; bytes of an
    unfinished character at the prompt's end complete with the first new tokens) but are not part of `text`.
    stop: strings that end the text: `text` is cut before the earliest one and `stopped` is set. Text that could
    still become a stop string, or is an unfinished character, is held back until it cannot.
    `text` is the whole text so far (complete characters, cut at a stop); after finish(), the final text.
    Streamed pieces join to `text`: "".join(add(t) for t in ids) + finish() == text."""

    def __init__(self, tokenizer, prompt: Sequence[int] = (), stop: Sequence[str] = ()):
        self.decoder = IncrementalDecoder(tokenizer, at_start=True)
        for t in prompt:  # only the state matters; the prompt's own text is not ours
            self.decoder.decode(int(t))
        self.stop = [s for s in stop if s]
        self._longest = max((len(s) for s in self.stop), default=0)
        self.text = ""
        self.stopped = False
        self._shown = 0  # characters of text already returned

    def add(self, token: int) -> str:
        """The text that token `token` completes and that can be shown now: complete UTF-8 characters only, held
        back while it may be the start of a stop string; "" once a stop string has been found.
        """
        if self.stopped:
            return ""
        return self._push(self.decoder.decode(int(token)), final=False)

    def finish(self) -> str:
        """The rest of the text at the end of the request (bytes left incomplete decode with U+FFFD), cut at a stop
        string.
        """
        if self.stopped:
            return self._push("", final=True)
        return self._push(self.decoder.flush(), final=True)

    def _push(self, new: str, final: bool) -> str:
        if new and self.stop:
            # only a stop string that ends in the new text can be new: search from where one could start
            start = max(0, len(self.text) - self._longest + 1)
            self.text += new
            found = [i for i in (self.text.find(s, start) for s in self.stop) if i != -1]
            if found:
                self.text, self.stopped, final = self.text[: min(found)], True, True
        else:
            self.text += new
        end = len(self.text)
        if not final:  # hold back a tail that is the beginning of a stop string
            for s in self.stop:
                for k in range(min(len(s) - 1, len(self.text) - self._shown), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        piece = self.text[self._shown : end] if end > self._shown else ""
        self._shown = max(self._shown, end)
        return piece


def max_bytes_per_token(tokenizer) -> int | None:
    """The most UTF-8 bytes of input text one token can stand for, when the tokenizer gives such a bound; None
    when it does not. Then a text of B bytes encodes to at least ceil(B / bound) tokens, which lets a server
    refuse an overlong prompt before tokenizing it.

    The bound is the longest piece's byte length, and it holds only when every input byte ends up inside some
    piece's bytes: no normalization that shrinks the text (NFKC, whitespace collapsing) and no unknown token
    standing for a run of characters, i.e. byte fallback (SentencePiece `byte_fallback`, llama2.c, byte-level BPE).
    Otherwise None."""
    pieces = vocabulary(tokenizer).pieces
    longest = max((len(b) for b in pieces), default=0) or None
    if hasattr(tokenizer, "sp"):  # SentencePiece: read the model's own normalizer and trainer specs
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        proto.ParseFromString(tokenizer.sp.serialized_model_proto())
        norm = proto.normalizer_spec
        identity = norm.name == "identity" and not norm.precompiled_charsmap and not norm.remove_extra_whitespaces
        return longest if identity and proto.trainer_spec.byte_fallback else None
    if hasattr(tokenizer, "piece_bytes") or hasattr(tokenizer, "enc"):  # llama2.c, tiktoken: no normalization,
        return longest  # and every byte is inside some token (byte tokens / byte-level BPE)
    if hasattr(tokenizer, "tok"):  # HF tokenizers: byte-level, or Llama's byte fallback with a space-only normalizer
        import json

        spec = json.loads(tokenizer.tok.to_str())
        norm = spec.get("normalizer") or {}
        steps = norm.get("normalizers", [norm]) if norm else []
        harmless = all(s.get("type") == "Prepend" or (s.get("type") == "Replace" and s.get("pattern") == {"String": " "})
                       for s in steps)
        model = spec.get("model") or {}
        byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
        return longest if harmless and (byte_level or model.get("byte_fallback")) else None
    return None
