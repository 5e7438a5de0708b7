"""llama.cpp's GGUF: one file with typed metadata (the model shape, the tokenizer) and tensors, written and read
with the `gguf` package.

- Tensor names: `token_embd`, `blk.N.attn_q/k/v/output`, `blk.N.attn_norm`, `blk.N.ffn_gate/up/down` (= Meta's
  w1/w3/w2), `blk.N.ffn_norm`, `output_norm`, `output` (each with `.weight`).
- q/k rows stay in Meta's interleaved-pair RoPE layout: llama.cpp's LLAMA architecture rotates consecutive pairs
  (its converter un-permutes HF weights back to this layout), which is exactly llamaforge's own layout.
- Weights are stored f32, f16, bf16 or q8_0 (blocks of 32 int8 with one f16 scale); norms always stay f32.
- A SentencePiece `tokenizer.model` (or llama2.c's `tokenizer.bin`, the same vocabulary in another file) given to
  `save` goes in as `tokenizer.ggml.*` (model "llama"), so llama.cpp can tokenize, and `load_tokenizer` rebuilds
  it; without one the file says "no_vocab" and llama.cpp takes token ids only.
- Llama 3's tiktoken `tokenizer.model` goes in as llama.cpp's converter writes it: model "gpt2" (byte-level BPE),
  pre-tokenizer "llama-bpe" (Meta's regex), tokens as GPT-2 byte-to-unicode strings, the merges
  (`formats.hf_tokenizer`), token types (special tokens CONTROL), BOS/EOS/EOT ids and the chat template;
  `load_tokenizer` rebuilds the tiktoken tokenizer from them.
- RoPE scaling of type llama3 is stored as llama.cpp stores it: a `rope_freqs.weight` tensor of head_dim/2 factors
  (the unscaled frequency over the scaled one, which llama.cpp divides by) and no rope.scaling.* keys (llama.cpp would
  read those as linear scaling). The four parameters also go under `llamaforge.rope_scaling.*`; a file without them
  (llama.cpp's own conversions) is read with Meta's 1/4/8192 and the largest factor, checked against the tensor.
- Tied embeddings: no `output.weight` (llama.cpp then uses `token_embd.weight`), read back as tied.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

import numpy as np
import torch

from llamaforge.errors import UserError
from llamaforge.formats import chat_template_of
from llamaforge.formats.weights import args_from_dict, build_model, check_field
from llamaforge.io import remove_stale_temporaries
from llamaforge.model import ModelArgs, Transformer

ARCH = "llama"
MAGIC = b"GGUF"
DTYPES = ("f32", "f16", "bf16", "q8_0")

# Meta name inside a block -> GGUF name inside `blk.N.`
BLOCK_NAMES = {
    "attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v", "attention.wo": "attn_output",
    "attention_norm": "attn_norm", "feed_forward.w1": "ffn_gate", "feed_forward.w3": "ffn_up",
    "feed_forward.w2": "ffn_down", "ffn_norm": "ffn_norm",
}
TOP_NAMES = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output"}


def gguf_name(meta_name: str) -> str:
    """`layers.3.attention.wq.weight` -> `blk.3.attn_q.weight`."""
    base = meta_name.removesuffix(".weight")
    if base.startswith("layers."):
        _, n, rest = base.split(".", 2)
        return f"blk.{n}.{BLOCK_NAMES[rest]}.weight"
    return f"{TOP_NAMES[base]}.weight"


def detect(path: Path) -> bool:
    """Whether `path` is a file that starts with GGUF's magic bytes (b"GGUF")."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


# -- reading -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GGUFTensor:
    """One tensor of a GGUF file: its name, ggml type and data as gguf-py's reader shapes it (the dims reversed;
    quantized types as raw bytes per row, for `gguf.quants.dequantize`), memory-mapped."""

    name: str
    tensor_type: object
    data: np.ndarray


class GGUFFile:
    """GGUF metadata and tensor views, read with `struct` in one pass (GGUF v2/v3).

    gguf-py's GGUFReader builds numpy views for every string of every array, which takes ~30 s for Llama 3's
    128,256 tokens and 280,147 merges on a 2-core machine; this reads the same file in about a second. `fields` maps
    each key to a Python value (int, float, bool, str, or a list of them). Raises ValueError for a malformed file."""

    SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    STRING, ARRAY = 8, 9

    def __init__(self, path):
        import gguf

        self.path = Path(path)
        self.mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        buf = memoryview(self.mm)
        if bytes(buf[:4]) != MAGIC:
            raise ValueError("bad magic")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version}; expected 2 or 3")
        self.fields: dict = {}
        pos = 24
        for _ in range(n_kv):
            key, pos = self._string(buf, pos)
            (kind,), pos = struct.unpack_from("<I", buf, pos), pos + 4
            self.fields[key], pos = self._value(buf, pos, kind)
        infos = []
        for _ in range(n_tensors):
            name, pos = self._string(buf, pos)
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
            kind, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            infos.append((name, dims, kind, offset))
        align = int(self.fields.get("general.alignment", 32))
        start = pos + (-pos) % align
        plain = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}
        self.tensors = []
        for name, dims, kind, offset in infos:
            qtype = gguf.GGMLQuantizationType(kind)
            shape = tuple(reversed(dims))
            n = int(np.prod(dims))
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            if qtype in plain:
                data = self.mm[start + offset : start + offset + n * np.dtype(plain[qtype]).itemsize]
                data = data.view(plain[qtype]).reshape(shape)
            else:
                data = self.mm[start + offset : start + offset + n * size // block]
                data = data.reshape(gguf.quants.quant_shape_to_byte_shape(shape, qtype))
            self.tensors.append(GGUFTensor(name, qtype, data))

    @staticmethod
    def _string(buf, pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", buf, pos)
        return bytes(buf[pos + 8 : pos + 8 + n]).decode("utf-8", errors="replace"), pos + 8 + n

    def _value(self, buf, pos: int, kind: int):
        if kind in self.SCALARS:
            fmt = self.SCALARS[kind]
            return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)
        if kind == self.STRING:
            return self._string(buf, pos)
        if kind == self.ARRAY:
            item, count = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if item in self.SCALARS:  # one read for the whole array
                fmt = self.SCALARS[item]
                values = list(struct.unpack_from(f"<{count}{fmt[1]}", buf, pos))
                return values, pos + count * struct.calcsize(fmt)
            values = []
            for _ in range(count):
                value, pos = self._value(buf, pos, item)
                values.append(value)
            return values, pos
        raise ValueError(f"unknown metadata value type {kind}")


def _field(reader: GGUFFile, key: str, default=None):
    return reader.fields.get(key, default)


def _number(value):
    """A metadata value as a Python int or float (numpy scalars converted); anything else is returned as is."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _f32(value) -> float:
    """A float32 metadata value as the decimal it was written from (1e-5, not 9.99999974e-06)."""
    return float(f"{float(value):.7g}")


def load(path: Path, device: torch.device, dtype: torch.dtype):
    """A `Transformer` from a llama.cpp GGUF file (architecture "llama"), weights dequantized to `dtype`
    on `device`.

    Header values are range-checked under their GGUF keys; tensor names follow llama.cpp's (`blk.N.attn_q`, see the
    module docstring); q/k rows are already in Meta's interleaved RoPE layout, so no permutation is needed.
    Raises UserError for an unreadable file, another architecture, a missing tensor or metadata key, or a value
    out of range.
    """
    import gguf

    try:
        reader = GGUFFile(path)
    except (ValueError, OSError, KeyError, IndexError, struct.error) as e:
        raise UserError(f"{path}: not a readable GGUF file ({e})") from None
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise UserError(f"{path}: general.architecture is {arch!r}; only 'llama' is supported")
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise UserError(f"{path}: missing tensor token_embd.weight")

    def need(key):
        value = _field(reader, f"{ARCH}.{key}")
        if value is None:
            raise UserError(f"{path}: missing metadata {ARCH}.{key}")
        return value

    keys = {"dim": "embedding_length", "n_layers": "block_count", "n_heads": "attention.head_count",
            "hidden_dim": "feed_forward_length", "norm_eps": "attention.layer_norm_rms_epsilon",
            "max_seq_len": "context_length"}
    # Each header value is range-checked under its GGUF key before anything is built from it.
    raw = {name: check_field(name, _number(need(key)), path, f"{ARCH}.{key}") for name, key in keys.items()}
    raw["n_kv_heads"] = check_field("n_kv_heads", _number(_field(reader, f"{ARCH}.attention.head_count_kv",
                                                                  raw["n_heads"])),
                                    path, f"{ARCH}.attention.head_count_kv")
    raw["rope_theta"] = check_field("rope_theta", _number(_field(reader, f"{ARCH}.rope.freq_base", 10000.0)),
                                    path, f"{ARCH}.rope.freq_base")
    raw["norm_eps"], raw["rope_theta"] = _f32(raw["norm_eps"]), _f32(raw["rope_theta"])
    raw["vocab_size"] = int(tensors["token_embd.weight"].data.shape[0])
    args = args_from_dict(raw, path)
    if "output.weight" not in tensors:
        args = dataclasses.replace(args, tie_embeddings=True)  # llama.cpp's convention for a tied classifier
    if "rope_freqs.weight" in tensors:
        args = _rope_scaling_from(reader, tensors["rope_freqs.weight"], args, path)
    rope_dims = _number(_field(reader, f"{ARCH}.rope.dimension_count", args.head_dim))
    if rope_dims != args.head_dim:
        raise UserError(f"{path}: rope.dimension_count {rope_dims} != head_dim {args.head_dim}; partial RoPE is "
                        "not supported")
    with torch.device("meta"):
        names = list(Transformer(args).state_dict())
    state = {}
    for name in names:
        g = gguf_name(name)
        if name == "output.weight" and args.tie_embeddings:
            continue  # the embedding is the output projection
        if g not in tensors:
            raise UserError(f"{path}: missing tensor {g}")
        t = tensors[g]
        data = gguf.quants.dequantize(t.data, t.tensor_type)  # f32/f16 pass through, quantized blocks expand
        state[name] = torch.from_numpy(np.array(data, dtype=np.float32))  # a writable copy
    return build_model(args, state, path, device, dtype)


# -- writing -------------------------------------------------------------------------------------------------------


SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_context_length")


def rope_freq_factors(args: ModelArgs) -> np.ndarray:
    """llama.cpp's `rope_freqs` for llama3 scaling: per pair, the unscaled frequency over the scaled one (f32)."""
    from llamaforge.model import apply_scaling, rope_frequencies

    plain = rope_frequencies(args.head_dim, args.rope_theta)
    scaled = apply_scaling(plain, args.rope_scaling_factor, args.rope_low_freq_factor, args.rope_high_freq_factor,
                           args.rope_original_max_seq_len)
    return (plain / scaled).numpy().astype(np.float32)


def _rope_scaling_from(reader, tensor, args: ModelArgs, path: Path) -> ModelArgs:
    """ModelArgs with the llama3 scaling that gives the file's rope_freqs tensor (module docstring)."""
    factors = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
    stored = [_field(reader, f"llamaforge.rope_scaling.{k}") for k in SCALING_KEYS]
    if all(v is not None for v in stored):
        factor, low, high, original = _f32(stored[0]), _f32(stored[1]), _f32(stored[2]), int(stored[3])
    else:
        factor, low, high, original = float(factors.max()), 1.0, 4.0, 8192
    scaled = dataclasses.replace(args, rope_scaling_factor=factor, rope_low_freq_factor=low,
                                 rope_high_freq_factor=high, rope_original_max_seq_len=original)
    if factors.shape != (args.head_dim // 2,) or not np.allclose(rope_freq_factors(scaled), factors, rtol=1e-5):
        raise UserError(f"{path}: rope_freqs.weight: not llama3 RoPE scaling with factor {factor:g}, frequency "
                        f"factors {low:g}/{high:g} and original context {original}; expected such a tensor")
    return scaled


def _dtype_name(dtype) -> str:
    if dtype is None:
        return "f32"
    names = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
    name = names.get(dtype, dtype) if isinstance(dtype, torch.dtype) else str(dtype).lower()
    if name not in DTYPES:
        raise UserError(f"gguf: dtype {dtype}: expected one of {', '.join(DTYPES)}")
    return name


def _add_sentencepiece_vocab(writer, tokenizer_path: Path, vocab_size: int) -> None:
    import gguf
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.Load(str(tokenizer_path))
    if sp.vocab_size() != vocab_size:
        raise UserError(f"{tokenizer_path}: {sp.vocab_size()} pieces, but the model has vocab_size {vocab_size}")
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    for setter, i in ((writer.add_bos_token_id, sp.bos_id()), (writer.add_eos_token_id, sp.eos_id()),
                      (writer.add_unk_token_id, sp.unk_id())):
        if i >= 0:
            setter(i)
    writer.add_add_bos_token(True)  # LLaMA prompts start with BOS
    writer.add_add_eos_token(False)


def _add_llama2c_vocab(writer, tokenizer_path: Path, vocab_size: int) -> None:
    """llama2.c's tokenizer.bin is a SentencePiece vocabulary with "▁" written as " " and <s>, </s> as
    "\n<s>\n", "\n</s>\n" (its export's convention); ids 3..258 are the byte tokens."""
    import gguf

    from llamaforge.tokenizer import Llama2cTokenizer

    tok = Llama2cTokenizer(tokenizer_path)
    if tok.vocab_size != vocab_size:
        raise UserError(f"{tokenizer_path}: {tok.vocab_size} pieces, but the model has vocab_size {vocab_size}")
    tokens, types = [], []
    for i, piece in enumerate(tok.pieces):
        if i == 0:
            piece, kind = b"<unk>", gguf.TokenType.UNKNOWN
        elif i in (tok.bos_id, tok.eos_id):
            piece, kind = piece.strip(), gguf.TokenType.CONTROL
        elif tok.BYTE_OFFSET <= i < tok.BYTE_OFFSET + 256:
            kind = gguf.TokenType.BYTE  # "<0x0A>"
        else:
            piece, kind = piece.replace(b" ", "\u2581".encode()), gguf.TokenType.NORMAL
        tokens.append(piece)
        types.append(kind)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(tok.scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(tok.bos_id)
    writer.add_eos_token_id(tok.eos_id)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def save(model, path: Path, tokenizer_path=None, dtype=None) -> None:
    """Write a GGUF file; dtype "f32" (default), "f16", "bf16" or "q8_0" (or the torch dtype).

    q8_0 quantizes the 2-D weights whose rows are a multiple of 32 (its block size); other 2-D weights are f16."""
    import gguf

    kind = _dtype_name(dtype)
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[kind]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)  # what an export killed earlier left (a temporary as large as the model)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # GGUFWriter opens its file by name
    try:
        _write(gguf, tmp, model, kind, qtype, file_type, tokenizer_path)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write(gguf, tmp: Path, model, kind: str, qtype, file_type, tokenizer_path) -> None:
    args: ModelArgs = model.args
    writer = gguf.GGUFWriter(str(tmp), ARCH)
    writer.add_name(tmp.name.split(".tmp-")[0].lstrip(".").removesuffix(".gguf"))
    writer.add_context_length(args.max_seq_len)
    writer.add_embedding_length(args.dim)
    writer.add_block_count(args.n_layers)
    writer.add_feed_forward_length(args.ffn_hidden_dim)
    writer.add_head_count(args.n_heads)
    writer.add_head_count_kv(args.n_kv_heads)
    writer.add_layer_norm_rms_eps(args.norm_eps)
    writer.add_rope_freq_base(args.rope_theta)
    writer.add_rope_dimension_count(args.head_dim)
    writer.add_vocab_size(args.vocab_size)
    writer.add_file_type(file_type)
    from llamaforge.tokenizer import is_tiktoken_file

    tiktoken = tokenizer_path is not None and Path(tokenizer_path).suffix == ".model" and is_tiktoken_file(
        tokenizer_path)
    template = chat_template_of(tokenizer_path) if tokenizer_path is not None else None
    if template is None and tiktoken:  # a Llama 3 vocabulary without its own template: Llama 3's
        from llamaforge.formats.hf_tokenizer import LLAMA3_TEMPLATE

        template = LLAMA3_TEMPLATE
    if template is not None:  # llama.cpp's tokenizer.chat_template
        writer.add_chat_template(template)
    if tiktoken:
        _add_tiktoken_vocab(writer, Path(tokenizer_path), args.vocab_size)
    elif tokenizer_path is not None and Path(tokenizer_path).suffix == ".model":
        _add_sentencepiece_vocab(writer, Path(tokenizer_path), args.vocab_size)
    elif tokenizer_path is not None and Path(tokenizer_path).suffix == ".bin":
        _add_llama2c_vocab(writer, Path(tokenizer_path), args.vocab_size)
    else:
        writer.add_tokenizer_model("no_vocab")  # token ids in, token ids out
    if args.rope_scaling_factor is not None:
        for key, value in zip(SCALING_KEYS, (args.rope_scaling_factor, args.rope_low_freq_factor,
                                             args.rope_high_freq_factor)):
            writer.add_float32(f"llamaforge.rope_scaling.{key}", value)
        writer.add_uint32("llamaforge.rope_scaling.original_context_length", args.rope_original_max_seq_len)
        writer.add_tensor("rope_freqs.weight", rope_freq_factors(args))
    for name, tensor in model.state_dict().items():
        if name == "output.weight" and args.tie_embeddings:
            continue  # llama.cpp uses token_embd for a missing output
        data = tensor.detach().to("cpu", torch.float32).numpy()
        if data.ndim == 1 or kind == "f32":
            writer.add_tensor(gguf_name(name), data)  # norms stay f32
        elif kind == "bf16" or (kind == "q8_0" and data.shape[-1] % 32 == 0):  # numpy has no bf16: raw bytes
            writer.add_tensor(gguf_name(name), gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name(name), data.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_tiktoken_vocab(writer, tokenizer_path: Path, vocab_size: int) -> None:
    """Llama 3's vocabulary as llama.cpp's convert_hf_to_gguf writes it (module docstring)."""
    import gguf

    from llamaforge.formats.hf_tokenizer import tiktoken_vocab_merges, token_string
    from llamaforge.tokenizer import TiktokenTokenizer

    tok = TiktokenTokenizer(tokenizer_path)
    if tok.vocab_size != vocab_size:
        raise UserError(f"{tokenizer_path}: {tok.vocab_size} tokens, but the model has vocab_size {vocab_size}")
    ranks = sorted(tok.enc._mergeable_ranks.items(), key=lambda kv: kv[1])
    names = sorted(tok.specials, key=tok.specials.get)
    _, merges = tiktoken_vocab_merges(tok)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list([token_string(t) for t, _ in ranks] + names)
    writer.add_token_types([gguf.TokenType.NORMAL] * len(ranks) + [gguf.TokenType.CONTROL] * len(names))
    writer.add_token_merges([f"{left} {right}" for left, right in merges])
    writer.add_bos_token_id(tok.bos_id)
    writer.add_eos_token_id(tok.eos_id)
    eot = tok.special_token_id("<|eot_id|>")
    if eot is not None:
        writer.add_eot_token_id(eot)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def _tiktoken_from(reader, path: Path):
    """A Llama 3 tiktoken tokenizer from a "gpt2" / "llama-bpe" GGUF vocabulary: NORMAL tokens in id order are the
    BPE ranks, the CONTROL tokens after them the special tokens."""
    import gguf

    from llamaforge.formats.hf_tokenizer import bytes_to_unicode
    from llamaforge.tokenizer import TiktokenTokenizer

    pre = _field(reader, "tokenizer.ggml.pre")
    if pre != "llama-bpe":
        raise UserError(f"{path}: tokenizer.ggml.pre is {pre!r}; only Llama 3's 'llama-bpe' byte-level BPE is read")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type") or [int(gguf.TokenType.NORMAL)] * len(tokens)
    inverse = {c: b for b, c in bytes_to_unicode().items()}
    n_base = next((i for i, k in enumerate(types) if int(k) != int(gguf.TokenType.NORMAL)), len(tokens))
    if any(int(k) == int(gguf.TokenType.NORMAL) for k in types[n_base:]):
        raise UserError(f"{path}: tokenizer.ggml.token_type: expected the ordinary tokens first, special ones after")
    try:
        ranks = {bytes(inverse[c] for c in t): i for i, t in enumerate(tokens[:n_base])}
    except KeyError:
        raise UserError(f"{path}: tokenizer.ggml.tokens: not byte-level (GPT-2) token strings") from None
    return TiktokenTokenizer(path, special_tokens=list(tokens[n_base:]), ranks=ranks)


def load_tokenizer(path: Path):
    """The tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata: model "llama" rebuilt as a SentencePiece
    model, model "gpt2" with Llama 3's pre-tokenizer as a tiktoken tokenizer; None when the file carries no
    vocabulary. A truncated or malformed file is a one-line UserError."""
    try:
        return _load_tokenizer(path)
    except UserError:
        raise
    except (ValueError, OSError, KeyError, IndexError, TypeError, RuntimeError) as e:
        raise UserError(f"{path}: cannot read its tokenizer ({type(e).__name__}: {e})") from None


def _load_tokenizer(path: Path):
    import tempfile

    import gguf
    from sentencepiece import sentencepiece_model_pb2 as pb

    from llamaforge.tokenizer import SentencePieceTokenizer

    try:
        reader = GGUFFile(path)
    except (ValueError, OSError, KeyError, IndexError, struct.error) as e:
        raise UserError(f"{path}: not a readable GGUF file ({e})") from None
    if _field(reader, "tokenizer.ggml.model") == "gpt2":
        return _tiktoken_from(reader, Path(path))
    if _field(reader, "tokenizer.ggml.model") != "llama":
        return None
    tokens = _field(reader, "tokenizer.ggml.tokens")
    scores = _field(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
    types = _field(reader, "tokenizer.ggml.token_type") or [int(gguf.TokenType.NORMAL)] * len(tokens)
    proto = pb.ModelProto()
    for piece, score, kind in zip(tokens, scores, types):  # GGUF's token types number SentencePiece's
        proto.pieces.add(piece=piece, score=float(score), type=int(kind))
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE  # LLaMA's scores are BPE merge priorities
    spec.vocab_size = len(tokens)
    spec.byte_fallback = any(int(k) == int(gguf.TokenType.BYTE) for k in types)
    spec.unk_id = int(_field(reader, "tokenizer.ggml.unknown_token_id", 0))
    spec.bos_id = int(_field(reader, "tokenizer.ggml.bos_token_id", -1))
    spec.eos_id = int(_field(reader, "tokenizer.ggml.eos_token_id", -1))
    spec.pad_id = -1
    norm = proto.normalizer_spec  # Meta's: no normalization, a dummy "▁" prefix, spaces kept as they are
    norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces, norm.escape_whitespaces = (
        "identity", bool(_field(reader, "tokenizer.ggml.add_space_prefix", True)), False, True)
    with tempfile.NamedTemporaryFile(suffix=".model") as f:  # SentencePiece loads it into memory
        f.write(proto.SerializeToString())
        f.flush()
        return SentencePieceTokenizer(f.name)
