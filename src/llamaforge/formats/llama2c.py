"""karpathy/llama2.c checkpoints: one `.bin` file of raw fp32 tensors after a small header.

- v0 ("legacy", what run.c reads): 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
  seq_len), a negative vocab_size meaning an unshared classifier; then tok_embeddings, every layer's
  attention_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3 (each grouped across layers), the final norm, two RoPE
  tables (freq_cis real and imaginary, seq_len x head_dim/2, ignored: RoPE is recomputed), then the classifier
  when unshared.
- v1: a 256-byte header (uint32 magic 0x616b3432 "ak42", int32 version 1, the 7 ints, uint8 shared_classifier,
  zeros), then all norms first, tok_embeddings, wq..w3 grouped across layers, the classifier when unshared.

llama2.c's model is Meta's (interleaved-pair RoPE, same weight layout), so tensors load without permutation.
run.c fixes RMSNorm eps at 1e-5 and the RoPE base at 10000.
"""

from __future__ import annotations

import dataclasses

import struct
import warnings
from pathlib import Path

import numpy as np
import torch

from llamaforge.errors import UserError, UserNotice
from llamaforge.io import atomic_file
from llamaforge.formats.weights import args_from_dict, build_model
from llamaforge.model import ModelArgs

MAGIC = 0x616B3432
V0_HEADER = 7 * 4
V1_HEADER = 256
NORM_EPS = 1e-5  # run.c's rmsnorm constant
PER_LAYER = ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
             "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


def _shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    kv_dim, hidden = args.n_kv_heads * args.head_dim, args.ffn_hidden_dim
    return {
        "attention.wq": (args.dim, args.dim), "attention.wk": (kv_dim, args.dim),
        "attention.wv": (kv_dim, args.dim), "attention.wo": (args.dim, args.dim),
        "feed_forward.w1": (hidden, args.dim), "feed_forward.w2": (args.dim, hidden),
        "feed_forward.w3": (hidden, args.dim),
    }


def _layout(args: ModelArgs, version: int, shared: bool) -> list[tuple[str | None, tuple[int, ...]]]:
    """(Meta tensor name or None for skipped data, shape) in file order."""
    L, dim, shapes = args.n_layers, args.dim, _shapes(args)
    norms = [(f"layers.{i}.attention_norm.weight", (dim,)) for i in range(L)]
    ffn_norms = [(f"layers.{i}.ffn_norm.weight", (dim,)) for i in range(L)]

    def grouped(kind):
        return [(f"layers.{i}.{kind}.weight", shapes[kind]) for i in range(L)]

    embed = [("tok_embeddings.weight", (args.vocab_size, dim))]
    if version == 0:
        rope = [(None, (args.max_seq_len, args.head_dim // 2))] * 2  # freq_cis real, imag
        out = embed + norms + grouped("attention.wq") + grouped("attention.wk") + grouped("attention.wv")
        out += grouped("attention.wo") + ffn_norms + grouped("feed_forward.w1") + grouped("feed_forward.w2")
        out += grouped("feed_forward.w3") + [("norm.weight", (dim,))] + rope
    else:
        out = norms + ffn_norms + [("norm.weight", (dim,))] + embed
        for kind in PER_LAYER:
            out += grouped(kind)
    if not shared:
        out.append(("output.weight", (args.vocab_size, dim)))
    return out


def _read_header(path: Path) -> tuple[int, ModelArgs, bool, int]:
    """(version, args, shared classifier, header size)."""
    with open(path, "rb") as f:
        head = f.read(V1_HEADER)
    if len(head) < V0_HEADER:
        raise UserError(f"{path}: too short for a llama2.c checkpoint header")
    magic = struct.unpack_from("<I", head)[0]
    if magic == MAGIC:
        if len(head) < V1_HEADER:
            raise UserError(f"{path}: truncated llama2.c v1 header")
        version = struct.unpack_from("<i", head, 4)[0]
        if version != 1:
            raise UserError(f"{path}: llama2.c version {version} is not supported; expected 0 or 1 (fp32)")
        dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack_from("<7i", head, 8)
        shared, header = bool(head[36]), V1_HEADER
    else:
        version = 0
        dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack_from("<7i", head)
        shared, vocab, header = vocab > 0, abs(vocab), V0_HEADER
    if min(dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len) <= 0:
        raise UserError(f"{path}: header has non-positive sizes; not a llama2.c checkpoint")
    fields = dict(dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                  vocab_size=vocab, max_seq_len=seq_len, norm_eps=NORM_EPS, rope_theta=10000.0)
    return version, args_from_dict(fields, path), shared, header


def _expected_bytes(args, version, shared, header) -> int:
    return header + 4 * sum(int(np.prod(s)) for _, s in _layout(args, version, shared))


def detect(path: Path) -> bool:
    """Whether `path` is a llama2.c checkpoint: a v1 file (magic 0x616b3432), or a v0 file whose 7-int header
    implies exactly the file's size (v0 has no magic).
    """
    if not path.is_file():
        return False
    try:
        version, args, shared, header = _read_header(path)
    except (UserError, OSError, struct.error):
        return False
    if version == 1:
        return True
    # v0 has no magic: believe the header only when the file has exactly the size it implies.
    return path.stat().st_size == _expected_bytes(args, version, shared, header)


def load(path: Path, device: torch.device, dtype: torch.dtype):
    """A `Transformer` from a llama2.c `.bin` (v0: float32 after a 7-int header; v1: 256-byte header), in
    `dtype` on `device`; the file is memory-mapped, so nothing is read twice.

    Raises UserError when the size disagrees with what the header implies (truncated, or not llama2.c).
    """
    version, args, shared, header = _read_header(path)
    size, expected = path.stat().st_size, _expected_bytes(args, version, shared, header)
    if size != expected:
        raise UserError(f"{path}: {size} bytes, but its llama2.c v{version} header implies {expected}; "
                        "truncated or not a llama2.c checkpoint")
    data = np.memmap(path, dtype="<f4", mode="c", offset=header)  # copy-on-write map: nothing read yet
    state, offset = {}, 0
    for name, shape in _layout(args, version, shared):
        n = int(np.prod(shape))
        if name is not None:
            state[name] = torch.from_numpy(data[offset : offset + n].reshape(shape))
        offset += n
    if shared:
        args = dataclasses.replace(args, tie_embeddings=True)  # the shared classifier stays shared
    return build_model(args, state, path, device, dtype)


def tokenizer_bin(tokenizer_path: Path) -> bytes:
    """A tokenizer in llama2.c's `tokenizer.bin` layout (what llama2.c's `tokenizer.py export` writes): int32
    max_token_length, then per id float32 score, int32 length, the piece's bytes with "▁" as " " and BOS/EOS as
    "\\n<s>\\n" / "\\n</s>\\n". A `.bin` is taken as it is; a `.json` has no scores and is refused (UserError)."""
    tokenizer_path = Path(tokenizer_path)
    if tokenizer_path.suffix == ".bin":
        return tokenizer_path.read_bytes()
    if tokenizer_path.suffix != ".model":
        raise UserError(f"{tokenizer_path}: tokenizer: llama2.c needs a SentencePiece .model or a tokenizer.bin")
    from llamaforge.tokenizer import is_tiktoken_file

    if is_tiktoken_file(tokenizer_path):
        raise UserError(f"{tokenizer_path}: tokenizer: a tiktoken (Llama 3) vocabulary cannot be stored in llama2.c's "
                        "tokenizer.bin (run.c merges by score, not byte-level BPE ranks); use hf, meta or gguf")
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    pieces, scores = [], []
    for i in range(sp.vocab_size()):
        piece = sp.id_to_piece(i)
        if i == sp.bos_id():
            piece = "\n<s>\n"
        elif i == sp.eos_id():
            piece = "\n</s>\n"
        pieces.append(piece.replace("\u2581", " ").encode("utf-8"))
        scores.append(sp.get_score(i))
    out = [struct.pack("<I", max(len(b) for b in pieces))]
    out += [struct.pack("<fI", score, len(b)) + b for b, score in zip(pieces, scores)]
    return b"".join(out)


def save(model, path: Path, tokenizer_path=None, dtype: torch.dtype | None = None) -> None:
    """Write llama2.c v1 (fp32; `dtype` other than fp32 is refused: v1 has no other type).

    llama2.c keeps the tokenizer in its own file (run.c's `-z`, default `tokenizer.bin`): with `tokenizer_path`,
    it is written beside the model as `tokenizer.bin` (in llama2.c's layout, see `tokenizer_bin`); a different
    `tokenizer.bin` already there is refused rather than replaced."""
    if dtype not in (None, torch.float32):
        raise UserError(f"llama2c: dtype {dtype} not supported; llama2.c v1 stores fp32 only")
    args, state = model.args, model.state_dict()
    if args.rope_theta != 10000.0:
        raise UserError(f"llama2c: rope_theta {args.rope_theta} cannot be stored; run.c fixes it at 10000")
    if args.rope_scaling_factor is not None:
        raise UserError("llama2c: RoPE scaling (Llama 3.1 llama3 type) cannot be stored; run.c has plain RoPE only")
    if args.norm_eps != NORM_EPS:
        warnings.warn(f"llama2c: norm_eps {args.norm_eps} is not stored; run.c uses {NORM_EPS}", UserNotice,
                      stacklevel=2)
    shared = torch.equal(state["output.weight"], state["tok_embeddings.weight"])
    header = struct.pack("<Ii", MAGIC, 1)
    header += struct.pack("<7i", args.dim, args.ffn_hidden_dim, args.n_layers, args.n_heads, args.n_kv_heads,
                          args.vocab_size, args.max_seq_len)
    header += struct.pack("<B", int(shared))
    tok_bytes, tok_dst = None, Path(path).parent / "tokenizer.bin"
    if tokenizer_path is not None:
        tok_bytes = tokenizer_bin(tokenizer_path)
        if tok_dst.is_file() and tok_dst.read_bytes() != tok_bytes:
            raise UserError(f"{tok_dst}: a different tokenizer.bin is already there; write the model to another folder")
    with atomic_file(path) as f:
        f.write(header.ljust(V1_HEADER, b"\0"))
        for name, _ in _layout(args, 1, shared):
            f.write(state[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    if tok_bytes is not None:
        with atomic_file(tok_dst) as f:
            f.write(tok_bytes)
