"""Multiple-choice scoring speed: llamaforge's Scorer vs lm-evaluation-harness's HF backend, same model, same
items, same batch size, same process. Prints items/s for both, their ratio, the work each side did, and checks the
accuracies agree.

    .venv/bin/python bench/eval_mc.py [--items 200] [--batch-size 16] [--model stories260K|random-15m|random-110m]
        [--task hellaswag|mmlu] [--mmlu-sample spread|subject] [--threads 1] [--repeats 3]

stories260K: the real 260K-parameter llama2.c model with its 512-token tokenizer (overhead-bound).
random-15m: stories15M's shape (dim 288, 6 layers) with random weights and Meta's 32000-token tokenizer
(compute-bound, like a real model); random-110m: stories110M's shape (dim 768, 12 layers), same tokenizer.
lm-eval gets the HF export of the same weights; both score HellaSwag validation items (the first N; 4 endings each,
zero-shot) or MMLU test items (5-shot, the answer letters; long contexts, one-token continuations). MMLU sample
`spread`: every 50th test item (2-5 items per subject, each subject's 5-shot prompt shared by few items: the hard
case for sharing); `subject`: the first N items in test order (a full run's structure: a subject's items share
its prompt).

Fairness: one process, runs interleaved (ours, lm-eval, ours, ...), best of `repeats` for each; the same fp32
weights (lm-eval's model is `LlamaForCausalLM` loaded in float32 from our HF export), the same tokenizer (ours behind
transformers' API, so only scoring differs), the same torch thread count for both (`--threads`, set once for the
process), the same `--batch-size` for both (lm-eval: requests per forward pass; ours: a forward pass's KV cache holds
at most the positions of that many of the longest requests, in prefix-tree segments); lm-eval's best batch size on this
machine (16 of 16/32/64 on all four cells, BENCHMARKS.md) is the default. lm-eval runs under
`torch.no_grad` (its own), ours under `torch.inference_mode`. Work counted over every run of each side (per run): tokens
through the model body (padding included) and positions through the output layer; "work ratio" is their FLOP
ratio (2 x parameters per token for the body and the output layer; attention scores left out).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LLAMAFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))


def build(name: str):
    from llamaforge import load_model, load_tokenizer
    from llamaforge.model import ModelArgs, Transformer

    if name == "stories260K":
        return load_model(DATA / "stories260K/stories260K.bin"), load_tokenizer(DATA / "stories260K/tok512.bin")
    tok = load_tokenizer(DATA / "llama2-tokenizer/tokenizer.model")
    torch.manual_seed(0)
    if name == "random-110m":
        args = ModelArgs(dim=768, n_layers=12, n_heads=12, vocab_size=tok.vocab_size, max_seq_len=1024, hidden_dim=2048)
    else:
        args = ModelArgs(dim=288, n_layers=6, n_heads=6, vocab_size=tok.vocab_size, max_seq_len=1024, hidden_dim=768)
    return Transformer(args).eval(), tok


def time_interleaved(fns, repeats=3):
    """Best wall time of each function over `repeats` rounds, run alternately (the machine is shared: noise)."""
    best, outs = [float("inf")] * len(fns), [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            outs[i] = fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best, outs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default="stories260K", choices=["stories260K", "random-15m", "random-110m"])
    parser.add_argument("--task", default="hellaswag", choices=["hellaswag", "mmlu"])
    parser.add_argument("--mmlu-sample", default="spread", choices=["spread", "subject"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import lm_eval
    import transformers
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from llamaforge import save_model
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the peer adapter the parity tests use
    from peer_helpers import hf_tokenizer
    from llamaforge.eval.items import score_choice_items
    from llamaforge.eval.scoring import Scorer
    from llamaforge.eval.tasks.multiple_choice import load_hellaswag, load_mmlu

    model, tok = build(args.model)
    if args.task == "mmlu":  # spread: every 50th test item (many subjects); subject: the first items in order
        items = load_mmlu(DATA, 5)[:: 50 if args.mmlu_sample == "spread" else 1][: args.items]
    else:
        items = load_hellaswag(DATA)[: args.items]

    scorer = Scorer(model, tok, batch_size=args.batch_size)

    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, Path(tmp) / "hf", format="hf")
        hf = transformers.LlamaForCausalLM.from_pretrained(Path(tmp) / "hf", dtype=torch.float32).eval()
    # Both sides tokenize with the same tokenizer (ours behind transformers' API), so only scoring differs.
    lm = HFLM(pretrained=hf, tokenizer=hf_tokenizer(tok), batch_size=args.batch_size, max_length=model.args.max_seq_len)
    requests = [Instance("loglikelihood", {}, (c, x), k) for it in items for k, (c, x) in
                enumerate(zip(it.contexts, it.continuations))]

    # Work counters (summed over the repeats; the hooks cost microseconds per forward pass): lm-eval feeds
    # input_ids [rows, padded length] through body and output layer; ours feeds segments [rows, width] through the
    # body and the output layer at the heads only.
    work = {"theirs": [0, 0], "ours": [0, 0, 0]}  # theirs: tokens (= head positions); ours: body, real, heads

    def count_theirs(module, args_, kwargs):
        ids = kwargs.get("input_ids", args_[0] if args_ else None)
        work["theirs"][0] += ids.numel()

    hf.register_forward_pre_hook(count_theirs, with_kwargs=True)
    run_segments = getattr(scorer, "_run", None)

    def count_ours(batch, segs, stash):
        widths = [len(segs[i].seq) - segs[i].start for i in batch]
        work["ours"][0] += max(widths) * len(batch)
        work["ours"][1] += sum(widths)
        work["ours"][2] += sum(len(segs[i].heads) for i in batch)
        return run_segments(batch, segs, stash)

    if hasattr(scorer, "_run"):  # (an older Scorer, benched for a before/after comparison, is not counted)
        scorer._run = count_ours
    (ours_s, theirs_s), (ours, theirs) = time_interleaved(
        [lambda: score_choice_items(scorer, items), lambda: lm.loglikelihood(requests, disable_tqdm=True)],
        args.repeats,
    )

    # Same accuracy (acc, argmax of the raw log-likelihoods) from both, as a check that the work is the same.
    at, agree = 0, 0
    for it, mine in zip(items, ours):
        lls = [ll for ll, _ in theirs[at : at + len(it.choices)]]
        agree += int(max(range(len(lls)), key=lls.__getitem__) == max(range(len(lls)), key=mine["loglikelihoods"].__getitem__))
        at += len(it.choices)

    n = len(items)
    body = 2 * sum(p.numel() for p in model.layers.parameters())  # FLOPs per token through the blocks
    head = 2 * model.output.weight.numel()  # FLOPs per position through the output layer
    (t_tokens, _), (o_body, o_real, o_heads) = [[x / args.repeats for x in w] for w in work.values()]
    print(f"model {args.model} ({model.num_params() / 1e6:.2f}M params), {n} {args.task} items x 4 choices, "
          f"batch size {args.batch_size}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"lm-eval {lm_eval.__version__}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"work per item: lm-eval {t_tokens / n:.1f} tokens through body and output layer; llamaforge "
          f"{o_body / n:.1f} through the body ({o_real / n:.1f} without padding), {o_heads / n:.1f} through the output "
          f"layer; work ratio {t_tokens * (body + head) / (o_body * body + o_heads * head):.2f}x "
          f"({t_tokens * (body + head) / (o_real * body + o_heads * head):.2f}x without our padding)" if o_body else
          f"work per item: lm-eval {t_tokens / n:.1f} tokens through body and output layer")
    print(f"llamaforge Scorer       : {n / ours_s:8.1f} items/s ({ours_s:.2f} s)")
    print(f"lm-eval HF backend      : {n / theirs_s:8.1f} items/s ({theirs_s:.2f} s)")
    print(f"ratio (ours / lm-eval)  : {theirs_s / ours_s:.2f}x; same argmax on {agree}/{n} items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
