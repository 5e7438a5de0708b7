"""CPU LoRA finetuning throughput and peak memory: llamaforge vs Hugging Face transformers + PEFT, same run.

Same model (the `small-42m` shape: vocab 32000, dim 512, 8 layers, 8 heads, the same random weights: HF's are
llamaforge's through `formats.hf.hf_state_dict`, fp32), same LoRA
(rank 8, alpha 16, dropout 0.05 on wq, wk, wv, wo = q/k/v/o_proj), same data (Alpaca examples from
../shared/data/alpaca rendered with the plain chat format and the Llama 2 tokenizer, masked to the responses,
micro-batches of B rows right-padded to their longest), same optimizer (AdamW lr 3e-4 over the adapters) and loop
(forward, masked next-token cross-entropy, backward, clip 1.0, step).

llamaforge runs its trainer's own pieces (`train.lora.apply_lora`, `train.trainer.cross_entropy_sum`,
`train.optim.build_optimizer`, the trainer's `OutputAtTargets`: logits only where a target is, and on the CPU
`finetune.padding=skip`: `unpadded_rows` runs each row alone, cut after its last target); HF runs
`peft.get_peft_model(LlamaForCausalLM, LoraConfig)` with `labels=` (HF's own loss) on the padded micro-batch, as
its trainers feed it by default. `--hf-packed` adds HF's padding-free form (the rows concatenated into one
sequence, `position_ids` restarting per row, as `DataCollatorWithFlattening` lays them out; `use_cache=False`, or
transformers ignores the packing and attends across rows): the fairest peer, since it too skips padding.

Fairness: the same micro-batches in the same order; every runner is credited with the same tokens (each row up to
its last target, i.e. without right padding, `real_tokens`), whatever it computes; one thread each
(`torch.set_num_threads` and OMP_NUM_THREADS); fp32 both; step-0 losses printed (B = 0: equal up to float noise,
which checks same model, same data, same loss). Each runner is a fresh process per round (peak RSS is that
process's `ru_maxrss`), rounds alternate between the runners so machine load hits all alike; tokens per CPU-second
(process time) is printed beside wall tokens/s, being less sensitive to other processes on a shared machine.

    python bench/lora_cpu.py [--steps 8] [--rounds 3] [--batch 4] [--threads 1] [--hf-packed] [--padding keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SHAPE = dict(dim=512, n_layers=8, n_heads=8, vocab_size=32000, multiple_of=32, max_seq_len=512)


def batches(n: int, batch: int, seq_len: int):
    """The same n micro-batches (inputs, targets with -100 off the responses) for both runners."""
    from llamaforge.infer.templates import load_chat_format
    from llamaforge.tokenizer import load_tokenizer
    from llamaforge.train.finetune import build_examples, collate, to_pair

    fmt = load_chat_format("plain", load_tokenizer(DATA / "llama2-tokenizer" / "tokenizer.model"))
    ex = build_examples(DATA / "alpaca" / "alpaca_5000.json", fmt, seq_len, max_examples=n * batch)
    pairs = [to_pair(i, m) for i, m in zip(ex.ids, ex.masks)]
    return [collate(pairs[k * batch:(k + 1) * batch], ex.pad_id) for k in range(n)]


def real_tokens(y) -> int:
    """Positions up to each row's last target (the row's text; right padding excluded): the tokens both runners
    are credited with, whatever they compute on padding."""
    from llamaforge.train.trainer import unpadded_rows

    return sum(yr.shape[1] for _, yr in unpadded_rows(y, y))


def run_one(runner: str, steps: int, batch: int, seq_len: int, warmup: int, out: Path,
            compile_blocks: bool = False, padding: str = "skip") -> None:
    import torch

    from llamaforge.model import ModelArgs, Transformer
    from llamaforge.train.config import LoRAConfig, OptimConfig
    from llamaforge.train.optim import build_optimizer

    torch.manual_seed(0)
    data = batches(warmup + steps, batch, seq_len)
    args = ModelArgs(**SHAPE)
    if runner == "llamaforge":
        from llamaforge.train.lora import apply_lora
        from llamaforge.train.trainer import (
            OutputAtTargets,
            cross_entropy_sum,
            logits_at,
            n_targets,
            unpadded_rows,
        )

        model = Transformer(args)
        apply_lora(model, LoRAConfig(rank=8, alpha=16, dropout=0.05, targets="wq,wk,wv,wo"))
        model.output = OutputAtTargets(model.output)  # as the trainer sets it up for finetuning
        if compile_blocks:
            for block in model.layers:
                block.compile(fullgraph=True)  # the trainer's training.compile

        def forward_backward(x, y):  # the trainer's step 1 for one micro-batch (finetune.padding on CPU: skip)
            count, total = n_targets(y), 0.0
            for xr, yr in unpadded_rows(x, y) if padding == "skip" else [(x, y)]:
                with logits_at(model, yr) as kept:
                    loss = cross_entropy_sum(model(xr), kept)
                (loss / count).backward()
                total += loss.detach()
            return total / count
    else:
        import peft
        from peers import hf_llama

        from llamaforge.formats.hf import hf_state_dict

        same = hf_state_dict(Transformer(args))  # llamaforge's weights: the first draw after the seed, as there
        hf = hf_llama(args)
        hf.load_state_dict(same)
        del same
        model = peft.get_peft_model(hf, peft.LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))

        def forward_backward(x, y):  # HF's own loss; shift_labels: y already holds each position's next token
            if runner == "hf-packed":  # transformers' padding-free form (DataCollatorWithFlattening's layout)
                from llamaforge.train.trainer import unpadded_rows

                rows = unpadded_rows(x, y)
                x, y = torch.cat([r[0] for r in rows], 1), torch.cat([r[1] for r in rows], 1)
                pos = torch.cat([torch.arange(r[0].shape[1]) for r in rows])[None]
                # use_cache=False: transformers looks for packed rows in position_ids only without a cache
                loss = model(input_ids=x, position_ids=pos, labels=y, shift_labels=y, use_cache=False).loss
            else:
                loss = model(input_ids=x, labels=y, shift_labels=y).loss
            loss.backward()
            return loss.detach()
    model.train()
    opt = build_optimizer(model, OptimConfig(lr=3e-4, weight_decay=0.0))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens, t0, c0, first = 0, None, None, None
    for k, (x, y) in enumerate(data):
        if k == warmup:
            t0, c0 = time.perf_counter(), time.process_time()
        loss = forward_backward(x, y)
        first = loss.item() if first is None else first
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if k >= warmup:
            tokens += real_tokens(y)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    out.write_text(json.dumps({"tokens_per_s": tokens / seconds, "tokens_per_cpu_s": tokens / cpu,
                               "peak_rss_gib": peak, "trainable": trainable, "first_loss": first,
                               "last_loss": loss.item()}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="llamaforge with its per-block torch.compile (HF eager)")
    p.add_argument("--padding", choices=["skip", "keep"], default="skip",
                   help="llamaforge's finetune.padding (skip: the trainer's CPU default)")
    p.add_argument("--hf-packed", action="store_true",
                   help="also run HF+PEFT padding-free (rows concatenated, position_ids restarting per row)")
    p.add_argument("--runner", default=None, help=argparse.SUPPRESS)  # internal: one runner in this process
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.runner:
        import torch

        torch.set_num_threads(a.threads)
        run_one(a.runner, a.steps, a.batch, a.seq_len, a.warmup, Path(a.out), a.compile, a.padding)
        return
    import tempfile

    import torch

    runners = {"llamaforge": "llamaforge", "hf+peft": "hf"}
    if a.hf_packed:
        runners["hf+peft packed"] = "hf-packed"
    results = {name: [] for name in runners}
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO / 'bench'}", "OMP_NUM_THREADS": str(a.threads)}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for name, runner in runners.items():
                out = Path(tmp) / f"{runner}{r}.json"
                cmd = [sys.executable, __file__, "--runner", runner, "--out", str(out), "--steps", str(a.steps),
                       "--warmup", str(a.warmup), "--batch", str(a.batch), "--seq-len", str(a.seq_len),
                       "--threads", str(a.threads), "--padding", a.padding] + (["--compile"] if a.compile else [])
                subprocess.run(cmd, check=True, env=env)
                results[name].append(json.loads(out.read_text()))
                load.append(os.getloadavg()[0])
    import peft
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
          f"{a.threads} threads; B={a.batch}, rows up to {a.seq_len} tokens, fp32; {a.rounds} rounds x {a.steps} "
          f"steps (+{a.warmup} warmup), one process per runner per round; llamaforge padding={a.padding}; "
          f"1-min load average {min(load):.1f}-{max(load):.1f}")
    print("| runner | tokens/s median (all rounds) | tokens per CPU-s median (all) | peak RSS GiB median (all) "
          "| trainable params |")
    print("|---|---|---|---|---|")
    med = {}
    for name, rs in results.items():
        tps, cps, mem = ([x[k] for x in rs] for k in ("tokens_per_s", "tokens_per_cpu_s", "peak_rss_gib"))
        med[name] = (statistics.median(tps), statistics.median(cps), statistics.median(mem))
        print(f"| {name} | {med[name][0]:.0f} ({', '.join(f'{v:.0f}' for v in tps)}) | {med[name][1]:.0f} "
              f"({', '.join(f'{v:.0f}' for v in cps)}) | {med[name][2]:.2f} ({', '.join(f'{v:.2f}' for v in mem)}) "
              f"| {rs[0]['trainable']} |")
    print("loss at step 0 (same weights and data, B = 0: equal up to float noise): "
          + ", ".join(f"{n} {rs[0]['first_loss']:.6f}" for n, rs in results.items())
          + "; last step (dropout draws differ): "
          + ", ".join(f"{n} {rs[0]['last_loss']:.4f}" for n, rs in results.items()))
    for peer in runners:
        if peer == "llamaforge":
            continue
        per_round = [o["tokens_per_s"] / t["tokens_per_s"] for o, t in zip(results["llamaforge"], results[peer])]
        print(f"ratio llamaforge / {peer}: tokens/s median {med['llamaforge'][0] / med[peer][0]:.2f}x "
              f"(per round {', '.join(f'{v:.2f}' for v in per_round)}); per CPU-s "
              f"{med['llamaforge'][1] / med[peer][1]:.2f}x; peak memory {med['llamaforge'][2] / med[peer][2]:.2f}x")


if __name__ == "__main__":
    main()
