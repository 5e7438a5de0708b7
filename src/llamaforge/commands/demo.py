"""`llamaforge demo --out runs/demo`: the whole main job offline on a CPU, in minutes.

1. the built-in corpus: the standard library's code and the English text of its documentation (two sources);
2. a SentencePiece tokenizer trained on it with Meta's spec and a small vocabulary;
3. token shards for both sources;
4. pretraining of a small LLaMA with the paper's recipe (recipe `demo`), mixing the two sources by weight;
5. validation loss and bits-per-byte, the loss curve (OUT/train/loss.png), and samples from the trained model.
Each step is skipped when its output is already there, so a second run goes straight to training.
"""

from __future__ import annotations

import time
from pathlib import Path

ACCEPTS_EXTRA_ARGS = True  # --section.key=value overrides of the demo recipe


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--corpus-mb", type=float, default=3.0, help="megabytes of text per source (default 3)")
    parser.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary (default 4096)")
    parser.add_argument("--workers", type=int, default=2, help="tokenizer processes (default 2)")
    parser.epilog = "Recipe overrides work as in `train`, e.g. --training.steps=50"


def _stage(title: str):
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run(args) -> int:
    import json

    from llamaforge.data.builtin_corpus import write_builtin_corpus
    from llamaforge.data.shards import tokenize
    from llamaforge.data.tokenizer_training import train_tokenizer
    from llamaforge.train import load_config, train

    out = Path(args.out)
    t_start = time.perf_counter()
    cfg = load_config("demo", args.extra)  # fail on a bad override before doing any work

    corpus = out / "corpus"
    t = _stage("1/5 built-in corpus: standard-library code + documentation text")
    if not ((corpus / "code.jsonl").is_file() and (corpus / "docs.jsonl").is_file()):
        stats = write_builtin_corpus(corpus, max_mb=args.corpus_mb)
        for name, s in stats.items():
            print(f"{name}: {s['docs']} documents, {s['bytes'] / 1e6:.1f} MB -> {s['path']}")
    else:
        print(f"using {corpus}")
    print(f"({time.perf_counter() - t:.0f}s)")

    tokenizer = out / "tokenizer.model"
    t = _stage(f"2/5 SentencePiece tokenizer, Meta's spec, vocab {args.vocab_size}")
    if not tokenizer.is_file():
        train_tokenizer([corpus / "code.jsonl", corpus / "docs.jsonl"], args.vocab_size, out / "tokenizer",
                        max_sentences=100_000)
    print(f"{tokenizer} ({time.perf_counter() - t:.0f}s)")

    tokens = out / "tokens"
    t = _stage("3/5 token shards")
    for name in ("code", "docs"):
        if not (tokens / name / "header.json").is_file():
            tokenize(corpus / f"{name}.jsonl", tokenizer, tokens, source=name, workers=args.workers)
        header = json.loads((tokens / name / "header.json").read_text())
        print(f"{name}: {header['n_docs']} documents, {header['n_tokens']:,} tokens "
              f"({header['n_bytes'] / header['n_tokens']:.2f} bytes/token)")
    print(f"({time.perf_counter() - t:.0f}s)")

    t = _stage("4/5 pretraining (recipe demo)")
    cfg.data.sources = {name: str(tokens / name) for name in ("code", "docs")}
    cfg.data.tokenizer = str(tokenizer)
    cfg.model.overrides["vocab_size"] = args.vocab_size
    summary = train(cfg, out / "train", resume="auto")
    print(f"({time.perf_counter() - t:.0f}s)")

    t = _stage("5/5 results")
    bpb = summary.val_bpb if summary.val_bpb is not None else float("nan")
    print(f"validation loss {summary.val_loss:.3f} nats/token, {bpb:.3f} bits/byte")
    for name, s in summary.data.items():
        print(f"{name}: weight {s['weight']:.2f}, realized share {s['share']:.3f}, {s['epochs']:.2f} epochs")
    print(f"loss curve: {out / 'train' / 'loss.png'}; model: {out / 'train' / 'final'}")
    print_samples(out / "train" / "final")
    print(f"\ndemo done in {(time.perf_counter() - t_start) / 60:.1f} minutes")
    return 0


def print_samples(model_dir: Path) -> None:
    from llamaforge import generate, load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(model_dir)
    for prompt in ("def ", "import os\n", "The "):
        text = generate(model, tok, prompt, max_new_tokens=48, temperature=0.7, top_p=0.9, seed=0)
        print(f"--- sample, prompt {prompt!r}:\n{prompt}{text}")
