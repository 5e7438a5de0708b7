"""`llamaforge finetune MODEL --data FILE --out DIR [--method full|lora] [--template NAME] [--tokenizer PATH]
[--recipe NAME] [--resume auto|PATH] [--show-example] [--samples N] [--section.key=value ...]`.

Benchmarks before and after (the paper's Table 10): the `[eval]` section as for `train`, e.g.
`--eval.tasks=mmlu --eval.limit=200 --eval.data_dir=../shared/data` (off by default: no tasks); the base model is
scored before training, the finetuned one at the end (and every `eval.every` steps into metrics.jsonl).

Instruction finetuning (the paper's LLaMA-I) through the pretraining loop: recipe `finetune-full` or
`finetune-lora` unless --recipe names another; every config key can be overridden as for `train`. Also runs under
`torchrun --nproc_per_node N -m llamaforge finetune ...` (FSDP2). Writes under DIR: `final/` (the finetuned model;
for LoRA the merged one) with its tokenizer and `tokenizer_config.json` holding the chat template, `adapter/` (LoRA, PEFT's format),
checkpoints, metrics, and `finetune_report.md` (eval before/after, chat samples).
"""

from __future__ import annotations

import json

from llamaforge.commands.args import add_resume_arguments, check_out_free

ACCEPTS_EXTRA_ARGS = True  # --section.key=value overrides arrive in args.extra


def add_arguments(parser) -> None:
    """MODEL, --data, --out, --method full|lora, --template, --tokenizer, --recipe, --resume, --trust-checkpoint,
    --show-example, --samples (3); config overrides (--section.key=value) arrive in `args.extra`."""
    parser.add_argument("model", help="the pretrained model (native / HF folder, Meta folder, llama2.c .bin, .gguf)")
    parser.add_argument("--data", required=True, help="Alpaca JSON/JSONL, chat JSONL ({'messages': [...]}) or "
                                                      "prompt/completion JSONL")
    parser.add_argument("--out", default=None, help="output folder (default runs/finetune-<method>)")
    parser.add_argument("--method", choices=["full", "lora"], default="full")
    from llamaforge.infer.templates import template_choices

    parser.add_argument("--template", default=None, help=f"chat template: {template_choices(' | ')} (default: the "
                                                         "recipe's, plain)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer file (default: the one in the model folder)")
    parser.add_argument("--recipe", default=None, help="default: finetune-<method>")
    add_resume_arguments(parser)
    parser.add_argument("--show-example", action="store_true",
                        help="print the first example's tokens with the masked spans marked, and exit")
    parser.add_argument("--samples", type=int, default=3, help="held-out prompts answered in the report")
    parser.epilog = ("Any config key can be overridden: --optim.lr=1e-4 --lora.rank=16 --lora.targets=all; "
                     "benchmarks before/after: --eval.tasks=mmlu --eval.limit=200 --eval.data_dir=../shared/data")


def _quoted(value) -> str:
    return json.dumps(str(value))  # a TOML basic string: any path survives the override parser


def run(args) -> int:
    """Render the instruction data through the chat template, finetune with the trainer (recipe finetune-full or
    finetune-lora unless --recipe), write the chat template beside `final/`, the before/after report and chat samples
    (rank 0 only). Returns 0. Raises UserError for a missing --data file, a single-file MODEL without --tokenizer, a
    bad override, template or data record, or an OUT holding a previous run
    without --resume."""
    import os
    from pathlib import Path

    from llamaforge.errors import UserError
    from llamaforge.infer.templates import check_name, load_chat_format
    from llamaforge.tokenizer import load_tokenizer
    from llamaforge.train import load_config
    from llamaforge.train.finetune import build_examples, show_example

    master = int(os.environ.get("RANK", "0")) == 0
    if not Path(args.data).is_file():
        raise UserError(f"--data: {args.data}: no such file")
    if not Path(args.model).exists():  # before the --tokenizer rule, which would blame the wrong argument
        raise UserError(f"{args.model}: no such file or folder; expected a checkpoint (native / HF folder, Meta "
                        "folder, llama2.c .bin, .gguf)")
    if args.tokenizer is None and not Path(args.model).is_dir():
        raise UserError(f"--tokenizer: required when MODEL is a single file ({args.model}); give the tokenizer file")
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    fixed = [f"--finetune.base={_quoted(args.model)}", f"--finetune.data={_quoted(args.data)}",
             f"--finetune.method={_quoted(args.method)}", "--data.kind=\"instructions\"",
             f"--data.tokenizer={_quoted(tokenizer.path)}"]
    if args.template is not None:
        fixed.append(f"--finetune.template={_quoted(args.template)}")
    cfg = load_config(args.recipe or f"finetune-{args.method}", fixed + list(args.extra))
    check_name(cfg.finetune.template, "--template" if args.template is not None else "finetune.template")
    template = load_chat_format(cfg.finetune.template, tokenizer)
    examples = build_examples(cfg.finetune.data, template, cfg.data.seq_len, cfg.finetune.overflow,
                              cfg.finetune.max_examples)
    if args.show_example:
        print(show_example(tokenizer, examples.ids[0], examples.masks[0]))
        return 0
    out = Path(args.out) if args.out else Path("runs") / f"finetune-{cfg.finetune.method}"
    check_out_free(out, args.resume)  # a new run over an old one would truncate its metrics
    if master:
        for line in examples.summary(cfg.finetune.data, cfg.data.seq_len):
            print(line)

    from llamaforge.eval import evaluator_from_section
    from llamaforge.train import train

    evaluator = evaluator_from_section(cfg.eval, cfg.data.tokenizer) if master else None  # [eval]: the items load now, a mistake stops us here
    base_loss, before = _base_scores(cfg, examples, evaluator) if master else (None, None)
    summary = train(cfg, out, resume=args.resume, trust_checkpoint=args.trust_checkpoint, on_eval=evaluator,
                    examples=examples)
    if not master:
        return 0
    _write_template(out / "final", template, tokenizer)
    after = _final_scores(summary, evaluator)
    samples = _chat_samples(out / "final", tokenizer, template, cfg, examples, args.samples)
    report = _report(cfg, summary, before, after, getattr(evaluator, "counts", {}), samples, base_loss)
    from llamaforge.io import atomic_file

    with atomic_file(out / "finetune_report.md", "w") as f:
        f.write(report)
    print(report, end="")
    loss = f"{summary.loss:.4f}" if summary.loss is not None else "-"
    print(f"done: step {summary.step}, loss {loss}, held-out response loss {summary.val_loss:.4f}; "
          f"finetuned model in {summary.final}"
          + (f", adapters (PEFT) in {out / 'adapter'}" if cfg.finetune.method == "lora" else ""))
    return 0


def _write_template(folder, fmt, tokenizer) -> None:
    """Record the chat format beside the finetuned model, so `serve`/`chat` (`--chat-template auto`) and the HF /
    GGUF exports use it: `tokenizer_config.json` with HF's `chat_template` (the format's Jinja `source`; every
    built-in format has one, llama2 and llama3 included) and the BOS / EOS spellings, written atomically. `auto`
    serves a built-in's exact source with the built-in itself (`infer.templates.load_chat_format`)."""
    from llamaforge.io import atomic_file

    names = {v: k for k, v in getattr(tokenizer, "specials", {}).items()}
    config = {"bos_token": names.get(tokenizer.bos_id, "<s>"), "eos_token": names.get(tokenizer.eos_id, "</s>"),
              "chat_template": fmt.source}
    path = folder / "tokenizer_config.json"
    if path.is_file():  # keep what the export wrote (tokenizer class, added tokens), add the template
        config = {**json.loads(path.read_text()), **config}
    config.pop("llamaforge_chat_format", None)  # the name older versions recorded instead of llama2's Jinja
    with atomic_file(path, "w") as f:
        f.write(json.dumps(config, indent=2) + "\n")


def _base_scores(cfg, examples, evaluator) -> tuple[float, dict | None]:
    """The base model's held-out response loss (the same examples and function the trainer's validation uses) and,
    with `evaluator` (the `[eval]` callback), its benchmark scores {"TASK/METRIC": value}: the report's "before"."""
    import contextlib

    import torch

    from llamaforge.train.loader import build_loader
    from llamaforge.train.trainer import evaluate, load_base

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_base(cfg).to(device)
    loader = build_loader(cfg, model.args.vocab_size, 0, 1, examples)
    loss = evaluate(model, loader, cfg.metrics.val_batches, device, contextlib.nullcontext)
    if evaluator is None:
        return loss, None
    model.eval()
    return loss, evaluator(model, 0)


def _final_scores(summary, evaluator) -> dict | None:
    """The finetuned model's benchmark scores: the trainer's end-of-run `eval/` record (single process), else (a
    torchrun run, or a resumed run that had nothing left to train) the exported final/ scored here."""
    if evaluator is None:
        return None
    scores = {k.removeprefix("eval/"): v for k, v in summary.metrics.items() if k.startswith("eval/")}
    if scores and summary.metrics.get("step") == summary.step:
        return scores
    import torch

    from llamaforge.formats import load_model

    model = load_model(summary.final, device="cuda" if torch.cuda.is_available() else "cpu")
    return evaluator(model.eval(), summary.step)


def _chat_samples(model_path, tokenizer, template, cfg, examples, n: int) -> list[tuple[str, str]]:
    """(prompt, greedy answer) for the first n held-out examples, rendered with the template."""
    import torch

    from llamaforge.formats import load_model
    from llamaforge.generate import generate_tokens

    if n <= 0:
        return []
    model = load_model(model_path, device="cuda" if torch.cuda.is_available() else "cpu")
    order = torch.randperm(len(examples.ids), generator=torch.Generator().manual_seed(cfg.training.seed)).tolist()
    out = []
    for i in order[: min(n, cfg.finetune.val_examples)]:
        ids, mask = examples.ids[i], examples.masks[i]
        prompt_ids = ids[: mask.index(True)]
        room = max(1, min(128, model.args.max_seq_len - len(prompt_ids)))
        stop_ids = sorted(template.stop_ids | {tokenizer.eos_id})
        answer = tokenizer.decode(generate_tokens(model, prompt_ids, room, stop_ids=stop_ids))
        for stop in template.stop_strings:  # the format's end-of-turn strings end the answer as the server's would
            answer = answer.split(stop)[0]
        out.append((tokenizer.decode(prompt_ids), answer))
    return out


def _report(cfg, summary, before, after, counts, samples, base_loss) -> str:
    """The run's markdown report: held-out response loss base -> finetuned, the `[eval]` benchmarks of both side
    by side (as the paper's Table 10; values in %), and the chat samples."""
    held_out = f"{base_loss:.4f} (base) -> {summary.val_loss:.4f}"
    train_loss = summary.loss if summary.loss is not None else float("nan")
    lines = [f"# Finetune report ({cfg.finetune.method})", "",
             f"- base: `{cfg.finetune.base}`; data: `{cfg.finetune.data}`; template: `{cfg.finetune.template}`",
             (f"- steps: {summary.step}; final train loss {train_loss:.4f}; "
              f"held-out response loss ({cfg.finetune.val_examples} examples) {held_out}"), ""]
    if before is not None and after is not None:
        lines += ["## Benchmarks before and after finetuning (as the paper's Table 10)", "",
                  "| task | metric | shots | items | base | finetuned | change |", "|---|---|---|---|---|---|---|"]
        from llamaforge.eval.tasks import get_task

        for key in before:
            task, metric = key.split("/", 1)
            b, a = 100 * before[key], 100 * after.get(key, float("nan"))
            lines.append(f"| {task} | {metric} | {get_task(task).shots} | {counts.get(task, '-')} | {b:.1f} | "
                         f"{a:.1f} | {a - b:+.1f} |")
        lines.append("")
    if samples:
        lines += ["## Chat samples (held-out prompts rendered with the template, greedy answers)", ""]
        for prompt, answer in samples:
            lines += ["```", prompt.strip(), "---", answer.strip(), "```", ""]
    return "\n".join(lines)
