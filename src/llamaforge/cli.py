"""The one `llamaforge` command. Subcommands only parse arguments and call the modules that do the work.

Each entry names a module with `add_arguments(parser)` and `run(args)`; modules are imported on use so that
`llamaforge presets` does not pay for the data pipeline's imports.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import warnings

from llamaforge.errors import UserError, UserNotice

_python_showwarning = warnings.showwarning

COMMANDS: dict[str, tuple[str, str]] = {
    "presets": ("llamaforge.commands.presets", "list model presets with parameter counts computed from the code"),
    "convert": ("llamaforge.commands.convert", "convert a checkpoint between native, hf, meta, llama2c and gguf"),
    "generate": ("llamaforge.commands.generate", "generate text from a prompt"),
    "chat": ("llamaforge.commands.chat", "interactive chat session"),
    "serve": ("llamaforge.commands.serve", "OpenAI-compatible HTTP server"),
    "tokenizer": ("llamaforge.commands.tokenizer", "train a SentencePiece tokenizer with Meta's spec"),
    "tokenize": ("llamaforge.commands.tokenize", "turn JSONL documents into token shards"),
    "prepare": ("llamaforge.commands.prepare", "clean one of the paper's seven data sources"),
    "train": ("llamaforge.commands.train", "pretrain with the paper's recipe (torchrun for many processes)"),
    "run": ("llamaforge.commands.run", "the whole main job from one flow config: prepare -> ... -> report"),
    "finetune": ("llamaforge.commands.finetune", "instruction finetuning, full or LoRA (PEFT format adapters)"),
    "demo": ("llamaforge.commands.demo", "the whole pipeline on the built-in corpus, on a CPU in minutes"),
    "eval": ("llamaforge.commands.eval", "perplexity and the paper's benchmarks"),
    "plan": ("llamaforge.commands.plan", "FLOPs, memory and compute-optimal model size for a budget"),
    "sweep": ("llamaforge.commands.sweep", "IsoFLOP / learning-rate sweeps and scaling-law fits"),
}


def _available() -> dict[str, str]:
    """Commands whose module exists in this install."""
    out = {}
    for name, (module, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            out[name] = help_text
    return out


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `llamaforge` argument parser: one subparser per command of `COMMANDS` that this install has. With `only`,
    only that command's module is imported to declare its arguments (the others are listed by name and help), so
    `llamaforge presets` does not import the data pipeline or torch."""
    parser = argparse.ArgumentParser(prog="llamaforge", description="LLaMA end to end.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in _available().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:  # only the chosen command's module is imported
            importlib.import_module(COMMANDS[name][0]).add_arguments(p)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """The project's own warnings (`UserNotice`) as one `warning: ...` line; any other as Python shows it."""
    if issubclass(category, UserNotice):
        print(f"warning: {message}", file=sys.stderr if file is None else file)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    """Run `llamaforge ARGV` (default: sys.argv[1:]) and return its exit status: the command's own (0 on success), 2 for
    a usage mistake (argparse) or a `UserError` (printed as one `error: ...` line, no traceback), 130 on Ctrl-C. The
    project's `UserNotice` warnings print as one `warning: ...` line while the command runs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and not argv[0].startswith("-") else None
    parser = build_parser(only=command)
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    if extra and not getattr(module, "ACCEPTS_EXTRA_ARGS", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra  # `train` takes --section.key=value overrides
    try:
        with warnings.catch_warnings():  # restores showwarning afterwards (cli.main is also called from tests)
            warnings.showwarning = _show_warning
            rc = module.run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
