"""`llamaforge finetune MODEL --data FILE --out DIR [--method full|lora] [--template NAME] [--tokenizer PATH]
[--recipe NAME] [--resume auto|PATH] [--show-example] [--eval TASK --eval-data DIR --eval-limit N] [--samples N]
[--section.key=value ...]`.

Instruction finetuning (the paper's LLaMA-I) through the pretraining loop: recipe `finetune-full` or
`finetune-lora` unless --recipe names another; every config key can be overridden as for `train`. Also runs under
`torchrun --nproc_per_node N -m llamaforge finetune ...` (FSDP2). Writes under DIR: `final/` (the finetuned model;
for LoRA the merged one) with its tokenizer and `tokenizer_config.json` holding the chat template, `adapter/` (LoRA, PEFT's format),
checkpoints, metrics, and `finetune_report.md` (eval before/after, chat samples).
"""

from __future__ import annotations

import json

ACCEPTS_EXTRA_ARGS = True  # --section.key=value overrides arrive in args.extra


def add_arguments(parser) -> None:
    parser.add_argument("model", help="the pretrained model (native / HF folder, Meta folder, llama2.c .bin, .gguf)")
    parser.add_argument("--data", required=True, help="Alpaca JSON/JSONL, chat JSONL ({'messages': [...]}) or "
                                                      "prompt/completion JSONL")
    parser.add_argument("--out", default=None, help="output folder (default runs/finetune-<method>)")
    parser.add_argument("--method", choices=["full", "lora"], default="full")
    parser.add_argument("--template", default=None, help="chat template: plain, chatml, llama2, or a Jinja file "
                                                         "(default: the recipe's, plain)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer file (default: the one in the model folder)")
    parser.add_argument("--recipe", default=None, help="default: finetune-<method>")
    parser.add_argument("--resume", default=None, help="'auto': the newest complete checkpoint in OUT; or a path")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow --resume from a checkpoint this run did not write (DCP metadata is pickled)")
    parser.add_argument("--show-example", action="store_true",
                        help="print the first example's tokens with the masked spans marked, and exit")
    parser.add_argument("--eval", default=None, help="an eval task (e.g. mmlu) scored before and after")
    parser.add_argument("--eval-data", default=None, help="folder with the benchmark files (--eval)")
    parser.add_argument("--eval-limit", type=int, default=200, help="items of --eval to score (0: all)")
    parser.add_argument("--samples", type=int, default=3, help="held-out prompts answered in the report")
    parser.epilog = "Any config key can be overridden: --optim.lr=1e-4 --lora.rank=16 --lora.targets=all"


def _quoted(value) -> str:
    return json.dumps(str(value))  # a TOML basic string: any path survives the override parser


def run(args) -> int:
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
    if args.tokenizer is None and not Path(args.model).is_dir():
        raise UserError(f"--tokenizer: required when MODEL is a single file ({args.model}); give the tokenizer file")
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    fixed = [f"--finetune.base={_quoted(args.model)}", f"--finetune.data={_quoted(args.data)}",
             f"--finetune.method={_quoted(args.method)}", "--data.kind=\"instructions\"",
             f"--data.tokenizer={_quoted(tokenizer.path)}"]
    if args.template is not None:
        fixed.append(f"--finetune.template={_quoted(args.template)}")
    cfg = load_config(args.recipe or f"finetune-{args.method}", fixed + list(args.extra))
    check_name(cfg.finetune.template)
    template = load_chat_format(cfg.finetune.template, tokenizer)
    examples = build_examples(cfg.finetune.data, template, cfg.data.seq_len, cfg.finetune.overflow,
                              cfg.finetune.max_examples)
    if args.show_example:
        print(show_example(tokenizer, examples.ids[0], examples.masks[0]))
        return 0
    if master:
        for line in examples.summary(cfg.finetune.data, cfg.data.seq_len):
            print(line)
    out = Path(args.out) if args.out else Path("runs") / f"finetune-{cfg.finetune.method}"

    before = _score(args, cfg.finetune.base, tokenizer) if master and args.eval and not args.resume else None
    base_loss = _held_out_loss(cfg, examples) if master and not args.resume else None
    from llamaforge.train import train

    summary = train(cfg, out, resume=args.resume, trust_checkpoint=args.trust_checkpoint, examples=examples)
    if not master:
        return 0
    _write_template(out / "final", template, tokenizer)
    after = _score(args, out / "final", tokenizer) if args.eval else None
    samples = _chat_samples(out / "final", tokenizer, template, cfg, examples, args.samples)
    report = _report(cfg, summary, before, after, samples, args, base_loss)
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


def _held_out_loss(cfg, examples) -> float:
    """The base model's loss on the run's held-out responses (the same examples and function the trainer's
    validation uses), for the report's before/after."""
    import contextlib

    import torch

    from llamaforge.train.loader import build_loader
    from llamaforge.train.trainer import evaluate, load_base

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_base(cfg).to(device)
    loader = build_loader(cfg, model.args.vocab_size, 0, 1, examples)
    return evaluate(model, loader, cfg.metrics.val_batches, device, contextlib.nullcontext)


def _score(args, model_path, tokenizer):
    """The --eval task's result on a model (rank 0, CPU or the first GPU)."""
    import torch

    from llamaforge.errors import UserError
    from llamaforge.eval import evaluate_task
    from llamaforge.eval.scoring import Scorer
    from llamaforge.formats import load_model

    if args.eval_data is None:
        raise UserError("--eval-data: required with --eval (the folder with the benchmark files)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(model_path, device=device)
    result, _ = evaluate_task(Scorer(model, tokenizer), args.eval, args.eval_data, limit=args.eval_limit or None)
    return result


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


def _report(cfg, summary, before, after, samples, args, base_loss=None) -> str:
    held_out = f"{summary.val_loss:.4f}" if base_loss is None else f"{base_loss:.4f} (base) -> {summary.val_loss:.4f}"
    train_loss = summary.loss if summary.loss is not None else float("nan")
    lines = [f"# Finetune report ({cfg.finetune.method})", "",
             f"- base: `{cfg.finetune.base}`; data: `{cfg.finetune.data}`; template: `{cfg.finetune.template}`",
             (f"- steps: {summary.step}; final train loss {train_loss:.4f}; "
              f"held-out response loss ({cfg.finetune.val_examples} examples) {held_out}"), ""]
    if before is not None or after is not None:
        lines += [f"## {args.eval} before and after (as the paper's Table 10)", "",
                  "| model | metric | n | value |", "|---|---|---|---|"]
        for name, r in (("base", before), ("finetuned", after)):
            if r is not None:
                for metric, value in r.metrics.items():
                    lines.append(f"| {name} | {metric} | {r.n} | {100 * value:.1f} |")
        lines.append("")
    if samples:
        lines += ["## Chat samples (held-out prompts, greedy, with the template)", ""]
        for prompt, answer in samples:
            lines += ["```", prompt.strip(), "---", answer.strip(), "```", ""]
    return "\n".join(lines)
