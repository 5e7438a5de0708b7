"""Hugging Face tokenizer files built offline from a `tokenizer.model`, so that `AutoTokenizer.from_pretrained(folder)`
gives the same ids as the original file.

- SentencePiece (LLaMA-1/2): a BPE `tokenizer.json` as transformers' `LlamaConverter` (legacy mode) builds it: the
  pieces as vocabulary, merges from every split of a piece into two pieces (ordered by the merged piece's score,
  `SentencePieceExtractor`), byte fallback, a normalizer that prepends "▁" and turns every space into "▁" (so
  runs of spaces stay runs: "with  x" -> [411, 29871, 921], as sentencepiece), and BOS added by the
  post-processor.
- tiktoken (Llama 3.x): a byte-level BPE `tokenizer.json` as transformers' `TikTokenConverter` builds it: tokens
  as GPT-2 byte-to-unicode strings, every split of a token into two tokens as a merge in rank order,
  `ignore_merges` (a pre-token that is a whole token is that token, as in tiktoken), Meta's regex as an isolated
  `Split` pre-tokenizer, and the 256 special tokens added after the 128,000 ranks.

`tokenizer_config.json` names the class `PreTrainedTokenizerFast` (transformers 5: the tokenizers backend, which uses
the file as written; `LlamaTokenizer` would rebuild its own normalizer), the special tokens, and the chat template.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from llamaforge.errors import UserError


# Meta's Llama 3 chat format (llama3 ChatFormat, `llamaforge.infer.templates.Llama3Chat`) as a Jinja chat_template,
# for folders whose tokenizer came without one; a test checks both give the same ids.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE vocabularies are written in it)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


def token_string(token: bytes) -> str:
    """A token's bytes as a byte-level BPE vocabulary spells them (" world" -> "Ġworld")."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def tiktoken_vocab_merges(tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a `TiktokenTokenizer`, as transformers' TikTokenConverter extracts them: every split
    of a token into two tokens is a merge, ordered by the rank of the token (then of its halves). tiktoken merges
    the adjacent pair whose concatenation has the lowest rank, which is the order of this list."""
    ranks = tokenizer.enc._mergeable_ranks
    vocab, merges = {}, []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        vocab[token_string(token)] = rank
        local = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in ranks and token[k:] in ranks]
        merges += sorted(local, key=lambda lr: (ranks[lr[0]], ranks[lr[1]]))
    return vocab, [(token_string(left), token_string(right)) for left, right in merges]


def tiktoken_tokenizer_json(tokenizer) -> str:
    """`tokenizer.json` text for a `TiktokenTokenizer` (Llama 3.x)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    from llamaforge.tokenizer import LLAMA3_PATTERN

    vocab, merges = tiktoken_vocab_merges(tokenizer)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    names = sorted(tokenizer.specials, key=tokenizer.specials.get)
    tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    bos = {v: k for k, v in tokenizer.specials.items()}.get(tokenizer.bos_id)
    steps = [processors.ByteLevel(trim_offsets=False)]
    if bos is not None:
        steps.append(processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                   special_tokens=[(bos, tokenizer.bos_id)]))
    tok.post_processor = processors.Sequence(steps)
    return tok.to_str()


def sentencepiece_tokenizer_json(tokenizer) -> str:
    """`tokenizer.json` text for a `SentencePieceTokenizer` of BPE type with byte fallback (LLaMA-1/2)."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    sp = tokenizer.sp
    proto = pb.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    if proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
        raise UserError(f"{tokenizer.path}: only BPE SentencePiece models convert to tokenizer.json (this one is "
                        f"{pb.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)})")
    n = sp.vocab_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    mergeable = {sp.id_to_piece(i): i for i in range(n) if sp.is_control(i) is False and not sp.is_byte(i)
                 and not sp.is_unknown(i)}
    merges = []
    for piece, i in sorted(mergeable.items(), key=lambda kv: (-sp.get_score(kv[1]), kv[1])):
        local = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in mergeable and piece[k:] in mergeable]
        merges += sorted(local, key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
    unk = sp.id_to_piece(sp.unk_id()) if sp.unk_id() >= 0 else None
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                               byte_fallback=proto.trainer_spec.byte_fallback))
    norm = [normalizers.Prepend("▁")] if proto.normalizer_spec.add_dummy_prefix else []
    tok.normalizer = normalizers.Sequence(norm + [normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if norm else []))
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False)
                            for p, _ in sorted(tokenizer.specials.items(), key=lambda kv: kv[1])])
    if tokenizer.bos_id >= 0:
        bos = sp.id_to_piece(tokenizer.bos_id)
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tokenizer.bos_id)])
    return tok.to_str()


def tokenizer_config(tokenizer, chat_template: str | None = None) -> dict:
    """`tokenizer_config.json` for the tokenizers backend: special tokens by name, ids in added_tokens_decoder."""
    names = {v: k for k, v in tokenizer.specials.items()}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "model_input_names": ["input_ids", "attention_mask"],
              "added_tokens_decoder": {str(i): {"content": name, "lstrip": False, "normalized": False,
                                                "rstrip": False, "single_word": False, "special": True}
                                       for i, name in sorted(names.items())}}
    for key, i in (("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id)):
        if i in names:
            config[key] = names[i]
    unk = getattr(getattr(tokenizer, "sp", None), "unk_id", lambda: -1)()
    if unk in names:
        config["unk_token"] = names[unk]
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


def write_hf_tokenizer(tokenizer_path, folder: Path, chat_template: str | None = None) -> None:
    """Put the tokenizer in `folder` so that both llamaforge and `AutoTokenizer` load it with the same ids:
    the original file under its standard name, plus tokenizer.json and tokenizer_config.json. A chat template
    already in a tokenizer_config.json beside the source is carried over unless `chat_template` is given."""
    from llamaforge.formats import chat_template_of, copy_tokenizer
    from llamaforge.tokenizer import HFTokenizer, SentencePieceTokenizer, TiktokenTokenizer, load_tokenizer

    src = Path(tokenizer_path)
    copy_tokenizer(src, folder)
    tok = load_tokenizer(src)
    if chat_template is None:
        chat_template = chat_template_of(src)
    if isinstance(tok, TiktokenTokenizer):
        (folder / "tokenizer.json").write_text(tiktoken_tokenizer_json(tok), encoding="utf-8")
        if chat_template is None:
            chat_template = LLAMA3_TEMPLATE
    elif isinstance(tok, SentencePieceTokenizer):
        (folder / "tokenizer.json").write_text(sentencepiece_tokenizer_json(tok), encoding="utf-8")
    elif not isinstance(tok, HFTokenizer):
        return  # llama2.c's tokenizer.bin: no HF form; the file itself is carried
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tok, chat_template), indent=2) + "\n",
                                                  encoding="utf-8")
