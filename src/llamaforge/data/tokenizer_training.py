"""Train a SentencePiece BPE tokenizer with Meta's LLaMA trainer spec (SPEC.md §3), on prepared shards or text.

Meta's `tokenizer.model` carries its trainer spec; `META_TRAINER_SPEC` below is that spec field for field (only the
vocabulary size is ours to choose). What it means in practice: numbers split into single digits, any character
outside the vocabulary falls back to its UTF-8 bytes (`<0xNN>` pieces, so nothing is ever `<unk>`), no Unicode
normalization, whitespace kept as is, and ids unk/bos/eos = 0/1/2 with no pad.

SentencePiece trains on "sentences", one per line, each at most `max_sentence_length` (4192) bytes. We split every
document into its lines, cut longer lines at spaces, and keep a uniform sample of at most `max_sentences` of them
(reservoir sampling with a seeded RNG over the inputs in sorted order), so the result depends only on the inputs,
the sample size and the seed. SentencePiece's result also depends on its thread count (ties between equally frequent
merges fall differently), so the count is a fixed default rather than the machine's core count.

For several sources (`llamaforge run`), `weighted_sample` takes each source's share of the sample from the
pretraining mixture weights instead, so the tokenizer sees the sources as the model will (issue #11).
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

from llamaforge.data import readers
from llamaforge.errors import UserError
from llamaforge.io import atomic_file, read_text

META_TRAINER_SPEC = dict(
    model_type="bpe",
    character_coverage=0.99995,
    input_sentence_size=200_000_000,
    shuffle_input_sentence=True,
    seed_sentencepiece_size=1_000_000,
    shrinking_factor=0.75,
    num_sub_iterations=2,
    max_sentence_length=4192,
    max_sentencepiece_length=16,
    split_by_unicode_script=True,
    split_by_whitespace=True,
    split_by_number=True,
    split_digits=True,
    treat_whitespace_as_suffix=False,
    allow_whitespace_only_pieces=True,
    byte_fallback=True,
    hard_vocab_limit=True,
    use_all_vocab=False,
    vocabulary_output_piece_score=True,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    unk_surface=" \u2047 ",  # Meta's model also records self_test_sample_size 0, a flag SentencePiece 0.2 ignores
    normalization_rule_name="identity",  # no NFKC
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
)
NUM_THREADS = 8  # fixed, so that the same inputs give the same model on any machine
TEXT_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".txt", ".txt.gz")


def input_files(inputs: Iterable) -> list[Path]:
    """Files as given; folders as their sorted JSONL and text files (top level only, see `readers.input_files`)."""
    return readers.input_files(inputs, TEXT_SUFFIXES)


def documents(path: Path) -> Iterator[str]:
    """Texts of a JSONL file (`{"text": ...}` per line; gzip or plain), or the whole of a text file. Raises
    UserError for a bad JSONL line (FILE:LINE) or a text file holding binary data (`io.read_text`)."""
    if readers.is_jsonl(path):
        yield from readers.jsonl_texts(path)
    else:
        yield read_text(path)  # a binary file given as text is refused, not learned as replacement characters


def sentences(text: str, max_bytes: int) -> Iterator[str]:
    """The non-blank lines of a document, lines over max_bytes cut at spaces (or anywhere, failing that)."""
    for line in text.splitlines():
        if not line.strip():
            continue
        while len(encoded := line.encode("utf-8")) > max_bytes:
            head = encoded[:max_bytes].decode("utf-8", errors="ignore")  # a character cut in two goes to the next piece
            cut = head.rfind(" ")
            head = head[:cut] if cut > 0 else head
            yield head
            line = line[len(head) :]
        if line.strip():
            yield line


def sample_sentences(files: list[Path], max_sentences: int, seed: int, max_bytes: int) -> list[str]:
    """A uniform sample of at most max_sentences sentences (reservoir sampling, Algorithm R), in a fixed order."""
    rng = random.Random(seed)
    sample: list[str] = []
    seen = 0
    for path in files:
        for text in documents(path):
            for s in sentences(text, max_bytes):
                seen += 1
                if len(sample) < max_sentences:
                    sample.append(s)
                else:
                    j = rng.randrange(seen)
                    if j < max_sentences:
                        sample[j] = s
    if not sample:
        raise UserError(f"{', '.join(map(str, files))}: no text to train a tokenizer on")
    return sample


def weighted_sample(sources: dict[str, list[Path]], weights: dict[str, float], total_bytes: int, seed: int = 0,
                    max_bytes: int = META_TRAINER_SPEC["max_sentence_length"]) -> tuple[list[str], dict[str, dict]]:
    """Sentences of several sources in the proportions of the pretraining mixture, not of their sizes.

    Source s (files of prepared JSONL) gets a budget of `total_bytes * w_s / sum(w)` UTF-8 bytes: a first pass counts
    its sentence bytes, a second keeps each sentence with probability budget / available (seeded Bernoulli, in file
    order) until the budget is spent; a source smaller than its budget gives all of it. Returns the sentences and,
    per source, {"bytes_available", "bytes_sampled", "sentences"} for the report. Why: a uniform sample of lines is
    dominated by the largest source (books), and the tokenizer then compresses the others poorly."""
    total_w = sum(weights[n] for n in sources)
    if total_w <= 0:
        raise UserError(f"tokenizer sample: weights: expected a positive sum, got {weights}")
    sample: list[str] = []
    stats: dict[str, dict] = {}
    for i, name in enumerate(sorted(sources)):
        files = sources[name]
        available = sum(len(x.encode("utf-8")) for f in files for t in documents(f) for x in sentences(t, max_bytes))
        budget = int(total_bytes * weights[name] / total_w)
        p = min(1.0, budget / available) if available else 0.0
        rng = random.Random(f"{seed}:{name}")  # per source: the sample of one does not depend on the others
        taken = n = 0
        for f in files:
            for text in documents(f):
                for x in sentences(text, max_bytes):
                    if taken < budget and rng.random() < p:
                        sample.append(x)
                        taken += len(x.encode("utf-8"))
                        n += 1
        stats[name] = {"bytes_available": available, "bytes_sampled": taken, "sentences": n,
                       "weight": weights[name] / total_w}
    if not sample:
        raise UserError(f"{', '.join(sorted(sources))}: no text to train a tokenizer on")
    return sample, stats


def train_tokenizer(inputs, vocab_size: int, out_prefix, max_sentences: int = 2_000_000, seed: int = 0,
                    num_threads: int = NUM_THREADS, verbose: bool = False) -> Path:
    """Train on `inputs` (files or folders) and write `out_prefix.model` (atomically) and `out_prefix.vocab`.

    Returns the `.model` path; it loads with `llamaforge.load_tokenizer`. Raises UserError for a `vocab_size` or
    `max_sentences` below 1 (before reading anything), missing inputs, or a vocabulary the sample cannot fill.
    """
    for flag, value in (("--vocab-size", vocab_size), ("--max-sentences", max_sentences)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{flag}: expected a positive integer, got {value!r}")
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files = input_files(inputs)
    sample = sample_sentences(files, max_sentences, seed, META_TRAINER_SPEC["max_sentence_length"])
    return train_on_sentences(sample, vocab_size, out_prefix, num_threads=num_threads, verbose=verbose)


def train_on_sentences(sample: list[str], vocab_size: int, out_prefix, num_threads: int = NUM_THREADS,
                       verbose: bool = False) -> Path:
    """SentencePiece with Meta's spec on these sentences (in this order); writes `out_prefix.model` atomically and
    `out_prefix.vocab`; returns the `.model` path. A vocabulary the sample cannot fill is a UserError."""
    import sentencepiece as spm

    spec = dict(META_TRAINER_SPEC, vocab_size=int(vocab_size), input_sentence_size=0, shuffle_input_sentence=False,
                num_threads=num_threads)  # input_sentence_size 0: the sample is already a random subset
    model_path = Path(f"{out_prefix}.model")
    buffer = io.BytesIO()
    quiet = {} if verbose else {"minloglevel": 2}  # SentencePiece logs every step to stderr by default
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(sample), model_writer=buffer, **quiet, **spec)
    except RuntimeError as e:  # e.g. "INTERNAL: trainer_interface.cc(744) [...] Vocabulary size too high (N)..."
        message = str(e).strip().splitlines()[-1].rsplit("] ", 1)[-1]
        raise UserError(f"{model_path}: vocab_size={vocab_size}: {message}") from None

    with atomic_file(model_path) as f:
        f.write(buffer.getvalue())
    write_vocab(model_path, Path(f"{out_prefix}.vocab"))
    return model_path


def write_vocab(model_path: Path, vocab_path: Path):
    """`piece<TAB>score` per id, the same listing `spm_train` writes beside the model, for reading by eye."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    lines = (f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))
    with atomic_file(vocab_path) as f:
        f.write("".join(lines).encode("utf-8"))
