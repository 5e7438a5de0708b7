"""`llamaforge demo [--out runs/demo]`: the shipped `demo` flow (`llamaforge run demo`, what `make demo` runs), then
samples from the trained model.

The flow (src/llamaforge/flows/demo.toml), offline on a CPU in minutes: the built-in corpus (the standard library's
code and the English text of its documentation, two sources with their own weights) -> a SentencePiece tokenizer with
Meta's spec on a sample following the weights -> token shards -> the `demo` recipe -> validation loss per source and
a few zero-shot tasks where ../shared/data is present -> HF and GGUF exports checked against the native model ->
OUT/report/report.md. A second run skips every finished stage; a killed run resumes.

Options map onto the flow: --corpus-mb -> sources.*.options.max_mb, --vocab-size -> tokenizer.vocab_size; a recipe
override --section.key=value (e.g. --training.steps=50) -> train.set; flow keys (--eval.limit=10 ...) pass as they are.
"""

from __future__ import annotations

from pathlib import Path

ACCEPTS_EXTRA_ARGS = True
FLOW_SECTIONS = ("run", "sources", "tokenizer", "train", "eval", "export")


def add_arguments(parser) -> None:
    """--out (runs/demo), --corpus-mb, --vocab-size, --workers, --no-progress; other --section.key=value arguments
    arrive in `args.extra` (see `flow_overrides`)."""
    parser.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument("--corpus-mb", type=float, default=None, help="megabytes of text per source (default 3)")
    parser.add_argument("--vocab-size", type=int, default=None, help="tokenizer vocabulary (default 4096)")
    parser.add_argument("--workers", type=int, default=None, help="processes for tokenizing (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.epilog = "Recipe overrides work as in `train`, e.g. --training.steps=50; flow keys as in `run`"


def flow_overrides(args) -> list[str]:
    """The demo's options as overrides of the `demo` flow."""
    out = [f"--run.out={args.out}"]
    if args.corpus_mb is not None:
        out += [f"--sources.{s}.options.max_mb={args.corpus_mb}" for s in ("code", "docs")]
    if args.vocab_size is not None:
        out.append(f"--tokenizer.vocab_size={args.vocab_size}")
    if args.workers is not None:
        out.append(f"--run.workers={args.workers}")
    for arg in args.extra:  # recipe keys go to train.set; flow keys stay
        section = arg[2:].split(".", 1)[0] if arg.startswith("--") else ""
        out.append(arg if section in FLOW_SECTIONS else f"--train.set.{arg[2:]}")
    return out


def run(args) -> int:
    """The shipped `demo` flow with this command's overrides, then three samples from OUT/train/final and the report's
    path. Returns 0; a mistake in an override or the flow is a UserError before any stage runs."""
    from llamaforge.run import Flow, load_flow

    flow = Flow(load_flow("demo", flow_overrides(args)), progress=not args.no_progress)
    flow.run()
    print_samples(flow.out / "train" / "final")
    print(f"report: {flow.out / 'report' / 'report.md'}")
    return 0


def print_samples(model_dir: Path) -> None:
    """Print a 48-token continuation of three fixed prompts (code and prose) from the model in `model_dir`, sampled at
    temperature 0.7, top-p 0.9, seed 0 (the same text on every run of the same model)."""
    from llamaforge import generate, load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(model_dir)
    for prompt in ("def ", "import os\n", "The "):
        text = generate(model, tok, prompt, max_new_tokens=48, temperature=0.7, top_p=0.9, seed=0)
        print(f"--- sample, prompt {prompt!r}:\n{prompt}{text}")
