"""`llamaforge eval MODEL [--tokenizer PATH] --tasks NAMES --data-dir DIR [--shots K] [--limit N] [--batch-size B]
[--out FILE] [--task-file F.jsonl] [--text FILE ... --context C --stride S]`.

Prints the markdown table (task, metric, shots, n, value, stderr, the paper's number when MODEL has a paper
preset's shape) and, with --out, writes FILE (JSON) and FILE.md.
"""

from __future__ import annotations

from llamaforge.commands.args import (add_device_arguments, add_model_argument, add_tokenizer_argument,
                                      load_model_args)


def add_arguments(parser) -> None:
    """MODEL (optional with --list-tasks), --tokenizer, the device arguments, and what to score: --tasks with
    --data-dir, --task-file, --text (perplexity with --context/--stride); --shots, --limit, --batch-size (16),
    --samples (1), --temperature, --out, --unsafe-exec, --judge, --list-tasks."""
    add_model_argument(parser, optional=True)
    add_tokenizer_argument(parser)
    parser.add_argument("--tasks", default="", help="comma-separated task names (see --list-tasks)")
    parser.add_argument("--data-dir", default=None, help="folder with the benchmark files (layout of SOURCES.md)")
    parser.add_argument("--task-file", action="append", default=[], help="a JSONL task file (repeatable)")
    parser.add_argument("--text", action="append", default=[], help="a text file for perplexity (repeatable)")
    parser.add_argument("--context", type=int, default=None, help="perplexity window (default: max_seq_len)")
    parser.add_argument("--stride", type=int, default=None, help="perplexity stride (default: = context, disjoint)")
    parser.add_argument("--shots", type=int, default=None, help="few-shot examples (default: the paper's per task)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N items of each task")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="forward-pass size: the tokens of this many of the longest requests (scoring), "
                             "sequences (generation)")
    parser.add_argument("--samples", type=int, default=1, help="samples per problem (GSM8K maj@k, code pass@k)")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature when --samples > 1")
    add_device_arguments(parser)
    parser.add_argument("--out", default=None, help="write results JSON here (and a .md table beside it)")
    parser.add_argument("--unsafe-exec", action="store_true",
                        help="run generated code (HumanEval, MBPP) even where the OS sandbox (bwrap namespaces) is "
                             "unavailable, with only rlimits and a Python-level guard")
    parser.add_argument("--judge", default=None,
                        help="truthfulqa_gen: URL of a judge that answers POST {question, answer} with "
                             "{truthful, informative} (none by default: answers only)")
    parser.add_argument("--list-tasks", action="store_true", help="list the task names and exit")


def run(args) -> int:
    """Score MODEL on the named tasks, task files and texts and print the markdown table (with --out, also write FILE
    and FILE.md). Returns 0. Raises UserError before the model is loaded for nothing to score, --tasks without
    --data-dir, a count out of range, or a --text file that is missing or not UTF-8 text; later for a task's missing
    or malformed data."""
    import time

    from llamaforge.errors import UserError
    from llamaforge.eval import check_counts, evaluate_task, evaluate_task_file, preset_of
    from llamaforge.eval.perplexity import perplexity, read_texts
    from llamaforge.eval.results import TaskResult, markdown_table, write_results
    from llamaforge.eval.scoring import Scorer
    from llamaforge.eval.tasks import TASKS

    if args.list_tasks:
        for name, t in TASKS.items():
            print(f"{name:14s} {t.kind:7s} shots={t.shots} metric={t.paper_metric}")
        return 0
    if args.model is None:
        raise UserError("eval: MODEL: expected a checkpoint path")
    tasks = [t for t in args.tasks.split(",") if t]
    if not (tasks or args.task_file or args.text):
        raise UserError("eval: nothing to do; give --tasks, --task-file or --text")
    if tasks and args.data_dir is None:
        raise UserError("--data-dir: required with --tasks (the folder with the benchmark files)")
    check_counts(args.limit, args.shots, prefix="--")  # before loading the model: a mistake costs nothing
    for flag, value in (("--batch-size", args.batch_size), ("--samples", args.samples), ("--context", args.context),
                        ("--stride", args.stride)):
        if value is not None and value < 1:
            raise UserError(f"{flag}: expected an integer >= 1, got {value}")
    import math

    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UserError(f"--temperature: expected a number >= 0, got {args.temperature}")  # not after scoring
    if args.judge and "truthfulqa_gen" in tasks:
        from llamaforge.eval.tasks.truthfulqa import http_judge

        http_judge(args.judge)  # a URL that is not http(s) is refused before the model is loaded

    texts = read_texts(args.text)  # read (and a binary file refused) before the model is loaded
    model, tokenizer = load_model_args(args)
    scorer = Scorer(model, tokenizer, batch_size=args.batch_size)
    preset = preset_of(model)
    options = {"samples": args.samples, "unsafe_exec": args.unsafe_exec}
    if args.temperature is not None:
        options["temperature"] = args.temperature
    if args.judge:
        options["judge"] = args.judge

    results: list[TaskResult] = []
    start = time.time()
    for name in tasks:
        results.append(evaluate_task(scorer, name, args.data_dir, args.shots, args.limit, options, preset)[0])
    for path in args.task_file:
        results.append(evaluate_task_file(scorer, path, args.limit)[0])
    if args.text:
        ppl = perplexity(model, tokenizer, texts, args.context, args.stride, args.batch_size)
        metrics = ppl.metrics()
        results.append(TaskResult("perplexity", 0, len(args.text), {k: float(v) for k, v in metrics.items()}))

    config = {
        "model": str(args.model), "tokenizer": str(tokenizer.path), "preset": preset, "device": args.device,
        "dtype": args.dtype, "batch_size": args.batch_size, "limit": args.limit, "shots": args.shots,
        "samples": args.samples, "data_dir": args.data_dir, "seconds": round(time.time() - start, 2),
        "scoring": "acc: argmax log p; acc_norm: argmax log p / chars (paper, lm-eval); "
                   "acc_uncond: argmax log p(c|ctx) - log p(c|'Answer:') (paper for OBQA, BoolQ)",
    }
    print(markdown_table(results), end="")
    if args.out:
        json_path, md_path = write_results(args.out, results, config)
        print(f"wrote {json_path} and {md_path}")
    return 0
