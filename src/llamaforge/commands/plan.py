"""`llamaforge plan`: what a training run costs, whether it fits, and which model size a budget should buy.

    llamaforge plan --model llama-65b --gpu A100-80GB --gpus 2048 --tokens 1.4T --fsdp 256 --tp 8 --ac selective
    llamaforge plan --dims dim=1024,n_layers=16,n_heads=16 --tokens 20B --gpus 8 --mfu 0.4
    llamaforge plan --budget 5.76e23 --inference-tokens 2T --constants besiroglu
    llamaforge plan --paper            # the paper's Table 15 GPU-hours, energy and emissions recomputed
    llamaforge plan --measured RUN/metrics.jsonl   # energy and emissions of a finished run (measured GPU-hours)

A CPU run's metrics give CPU-hours, not GPU-hours: `--measured` then reports the hours and no energy unless
--gpu-watts gives the power drawn per process (the paper's 400 W is an A100's, Table 15).

Energy and emissions use the paper's formula (Section 6): MWh = GPU-hours x --gpu-watts x --pue / 1e6 and
tCO2eq = MWh x --carbon-intensity (defaults: 400 W A100, PUE 1.1, 0.385 kg CO2eq/kWh).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from llamaforge.commands.args import parse_count
from llamaforge.errors import UserError
from llamaforge.io import read_json

def add_arguments(p) -> None:
    """One of --model / --dims / --budget / --paper / --measured, then the run's shape (--gpu, --gpus, --mfu, --tokens,
    --seq-len, --fsdp, --tp, --ac, --micro-batch, dtypes), the scaling-law --constants and --inference-tokens, the
    energy constants (--gpu-watts 400, --pue 1.1, --carbon-intensity 0.385: the paper's Section 6) and --json."""
    what = p.add_mutually_exclusive_group()
    what.add_argument("--model", help="a preset name (see `llamaforge presets`)")
    what.add_argument("--dims", help="model fields, e.g. dim=1024,n_layers=16,n_heads=16,vocab_size=32000")
    what.add_argument("--budget", help="training compute in FLOPs: the compute-optimal and inference-aware (N, D)")
    what.add_argument("--paper", action="store_true", help="reproduce the paper's GPU-hours (Table 15)")
    p.add_argument("--gpu", default="A100-80GB", help="GPU model from the planner's table (default A100-80GB)")
    # the flag's old name, still read so that existing scripts keep working (`--device` means cpu/cuda elsewhere)
    p.add_argument("--device", dest="gpu", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--gpus", type=int, default=1, help="number of devices")
    p.add_argument("--mfu", type=float, default=None, help="model FLOPs utilization (default: the paper's 65B, ~0.49)")
    p.add_argument("--tokens", help="training tokens, e.g. 1.4T (default: 20 tokens per parameter)")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length (default: the model's context)")
    p.add_argument("--fsdp", type=int, default=None, help="FSDP degree (default: gpus / tp)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (with sequence parallelism)")
    p.add_argument("--ac", default="none", help="activation checkpointing: none | selective | full")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per device (default: the largest that fits)")
    p.add_argument("--master-dtype", default="fp32", help="fp32 | bf16 (parameters, gradients, AdamW moments)")
    p.add_argument("--compute-dtype", default="bf16", help="bf16 | fp32 (matmuls and saved activations)")
    p.add_argument("--inference-tokens", default="0", help="with --budget: lifetime tokens to serve, e.g. 2T")
    p.add_argument("--constants", default="besiroglu",
                   help="scaling-law constants: besiroglu | hoffmann | a fit.json written by sweep")
    what.add_argument("--measured", help="a training run's metrics.jsonl (or its folder): energy and emissions "
                      "from its measured GPU-hours; a CPU run reports CPU-hours, and energy only with --gpu-watts "
                      "(the power drawn per process), never the paper's A100 400 W")
    p.add_argument("--gpu-watts", type=float, default=None,
                   help="power per GPU for energy (default: the paper's 400 W A100; with --measured on a CPU run, "
                        "the power per process, no default)")
    p.add_argument("--pue", type=float, default=1.1, help="data-centre power usage effectiveness (paper: 1.1)")
    p.add_argument("--carbon-intensity", type=float, default=0.385,
                   help="kg CO2eq per kWh (paper: 0.385, the US national average)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _model_args(args):
    from llamaforge.model import ModelArgs
    from llamaforge.presets import PRESETS

    if args.model:
        if args.model not in PRESETS:
            raise UserError(f"--model: unknown preset {args.model!r}; known: {', '.join(PRESETS)}")
        return args.model, PRESETS[args.model]
    fields = {f.name: f for f in dataclasses.fields(ModelArgs)}
    values = {}
    for item in args.dims.split(","):
        key, _, raw = item.partition("=")
        key = key.strip()
        if key not in fields or not raw:
            raise UserError(f"--dims: expected key=value pairs of {', '.join(fields)}, got {item!r}")
        values[key] = float(raw) if key in ("norm_eps", "rope_theta", "ffn_dim_multiplier") else int(raw)
    try:
        return "custom", ModelArgs(**values)
    except ValueError as e:
        raise UserError(f"--dims: {e}") from None


def _law(name: str):
    from llamaforge.plan.scaling import CONSTANTS, ScalingLaw

    if name.lower() in CONSTANTS:
        return name.lower(), CONSTANTS[name.lower()]
    path = Path(name)
    if not path.is_file():
        raise UserError(f"--constants: expected {', '.join(CONSTANTS)} or a fit.json file, got {name!r}")
    data = read_json(path)
    try:
        return str(path), ScalingLaw(**data["constants"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: constants: expected a fit written by `llamaforge sweep` ({e})") from None


def _gib(x: float) -> str:
    return f"{x / 2**30:8.2f} GiB"


def run_model(args) -> int:
    """Cost, memory and scaling view of training one model (--model or --dims): FLOPs per token and in total,
    device-hours and wall-clock at the given MFU, the memory per device for the layout and the largest micro-batch
    that fits, the law's predicted loss and compute-optimal alternative, energy and emissions. Prints text or, with
    --json, one JSON object; returns 0. Raises UserError for a --tp that does not divide --gpus, an FSDP x TP larger
    than --gpus, or a model/micro-batch that does not fit."""
    from llamaforge.plan.flops import get_gpu, paper_mfu, training_cost
    from llamaforge.plan.memory import Layout, estimate, largest_micro_batch
    from llamaforge.presets import count_params

    name, margs = _model_args(args)
    device = get_gpu(args.gpu)
    total, non_emb = count_params(margs)
    seq_len = args.seq_len or margs.max_seq_len
    tokens = parse_count(args.tokens, "--tokens") if args.tokens else 20.0 * total
    mfu = paper_mfu() if args.mfu is None else args.mfu
    cost = training_cost(margs, tokens, seq_len, device, args.gpus, mfu)

    if args.tp < 1 or args.gpus % args.tp:
        raise UserError(f"--tp: {args.tp} must divide --gpus {args.gpus}")
    fsdp = args.fsdp if args.fsdp is not None else args.gpus // args.tp
    if fsdp * args.tp > args.gpus:
        raise UserError(f"--fsdp x --tp = {fsdp * args.tp} exceeds --gpus {args.gpus}")
    layout = Layout(fsdp=fsdp, tp=args.tp, ac=args.ac, seq_len=seq_len, micro_batch=args.micro_batch or 1,
                    master_dtype=args.master_dtype, compute_dtype=args.compute_dtype)
    best = largest_micro_batch(margs, layout, device.memory_bytes)
    if best == 0:
        need = estimate(margs, dataclasses.replace(layout, micro_batch=1)).total
        raise UserError(
            f"{name} does not fit on {device.name}: one sequence of {seq_len} tokens needs {need / 2**30:.1f} GiB per "
            f"device of {device.memory_bytes / 2**30:.0f} GiB with fsdp={fsdp} tp={args.tp} ac={args.ac}; "
            "shard over more devices (--gpus/--fsdp/--tp) or checkpoint activations (--ac full)"
        )
    micro = args.micro_batch or best
    if args.micro_batch and args.micro_batch > best:
        raise UserError(f"--micro-batch: {args.micro_batch} does not fit on {device.name}; the largest that fits is {best}")
    mem = estimate(margs, dataclasses.replace(layout, micro_batch=micro))
    scaling = _scaling_view(args.constants, total, tokens)

    out = {
        "model": name, "params": total, "non_embedding_params": non_emb, "device": device.name, "gpus": args.gpus,
        "mfu": mfu, "tokens": tokens, "seq_len": seq_len, **dataclasses.asdict(cost),
        "layout": dataclasses.asdict(dataclasses.replace(layout, micro_batch=micro)),
        "memory_bytes": {
            "params": mem.params, "grads": mem.grads, "optimizer": mem.optimizer, "compute_copies": mem.compute_copies,
            "activations": mem.activations, "loss": mem.loss, "recompute": mem.recompute, "total": mem.total,
        },
        "device_memory_bytes": device.memory_bytes, "largest_micro_batch": best, "scaling": scaling,
        "carbon": _carbon(args, cost.device_hours).as_dict(),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{name}: {total / 1e9:.3f}B parameters ({non_emb / 1e9:.3f}B non-embedding), seq len {seq_len}")
    print(f"FLOPs/token          {cost.flops_per_token:.4g}   (6·N_non-embedding + 12·L·d·T)")
    print(f"training FLOPs       {cost.total_flops:.4g}   for {tokens:.4g} tokens")
    print(f"throughput           {cost.tokens_per_s_per_device:,.0f} tokens/s/device at MFU {mfu:.1%} "
          f"of {device.peak_flops / 1e12:.0f} TFLOP/s ({device.name})")
    print(f"device-hours         {cost.device_hours:,.0f}")
    footprint = _carbon(args, cost.device_hours)
    print(f"energy, emissions    {footprint.mwh:,.1f} MWh, {footprint.tco2eq:,.1f} tCO2eq   ({args.gpu_watts:g} W x "
          f"PUE {args.pue:g}, {args.carbon_intensity:g} kg/kWh; the paper's formula)")
    print(f"wall-clock           {cost.wall_clock_days:,.2f} days on {args.gpus} devices")
    print(f"memory per device    fsdp={fsdp} tp={args.tp} ac={args.ac} micro-batch={micro} "
          f"master={args.master_dtype} compute={args.compute_dtype}")
    for label, value in [("parameters", mem.params), ("gradients", mem.grads), ("AdamW moments", mem.optimizer),
                         ("gathered weights", mem.compute_copies), ("activations", mem.activations),
                         ("loss buffers", mem.loss), ("recompute", mem.recompute)]:
        print(f"  {label:<18} {_gib(value)}")
    print(f"  {'total':<18} {_gib(mem.total)} of {device.memory_bytes / 2**30:.0f} GiB; "
          f"largest micro-batch that fits: {best}")
    chin = scaling["compute_optimal"]
    print(f"scaling law          ({scaling['constants']}) predicted loss {scaling['loss']:.4f}; the compute-optimal "
          f"model for the same 6·N·D = {scaling['flops_6nd']:.3g} FLOPs: {chin['n_params'] / 1e9:.2f}B parameters, "
          f"{chin['n_tokens'] / 1e12:.3f}T tokens")
    breakeven = scaling["breakeven_inference_tokens"]
    if breakeven > 0:
        print(f"                     this model is the cheapest way to its loss if it serves {breakeven:.3g} tokens "
              "over its life (training + 2·N FLOPs per served token)")
    else:
        print("                     a smaller model trained on more tokens would reach this loss for less compute")
    return 0


def _scaling_view(constants: str, n_params: float, tokens: float) -> dict:
    """Where a (model, tokens) choice sits under the parametric law: its loss, the compute-optimal alternative,
    and the inference volume that makes it the cheapest model at its loss (LLaMA's argument)."""
    from llamaforge.plan.scaling import TRAINING_FLOPS_PER_PARAM, breakeven_inference_tokens, compute_optimal

    label, law = _law(constants)
    flops = TRAINING_FLOPS_PER_PARAM * n_params * tokens
    chin = compute_optimal(law, flops)
    return {
        "constants": label,
        "loss": float(law.loss(n_params, tokens)),
        "flops_6nd": flops,
        "compute_optimal": {"n_params": chin.n_params, "n_tokens": chin.n_tokens, "loss": chin.loss},
        "breakeven_inference_tokens": breakeven_inference_tokens(law, n_params, tokens),
    }


def run_budget(args) -> int:
    """For a compute budget C (FLOPs, --budget) and a lifetime of served tokens (--inference-tokens): the
    compute-optimal (N, D) and the inference-aware one under the chosen law (`plan.scaling.compare`). Returns 0;
    UserError for an unparsable count or unknown constants."""
    from llamaforge.plan.scaling import compare

    budget = parse_count(args.budget, "--budget")
    inference = parse_count(args.inference_tokens, "--inference-tokens")
    label, law = _law(args.constants)
    table = compare(law, budget, inference)
    if args.json:
        print(json.dumps({"constants": label, "law": law.as_dict(), "budget": budget, "inference_tokens": inference,
                          **{k: {**dataclasses.asdict(v), "total_flops": v.total_flops} for k, v in table.items()}},
                         indent=2))
        return 0
    print(f"L(N, D) = {law.E:.4g} + {law.A:.4g}/N^{law.alpha:.4g} + {law.B:.4g}/D^{law.beta:.4g}   ({label})")
    print(f"training budget {budget:.3g} FLOPs, inference {inference:.3g} tokens (2·N FLOPs each)")
    header = f"{'':<17}{'params':>10}{'tokens':>10}{'tok/param':>10}{'loss':>8}{'train':>11}{'inference':>11}{'total':>11}"
    print(header)
    for name, a in table.items():
        print(f"{name:<17}{a.n_params / 1e9:>9.2f}B{a.n_tokens / 1e12:>9.3f}T{a.tokens_per_param:>10.1f}{a.loss:>8.4f}"
              f"{a.train_flops:>11.3g}{a.inference_flops:>11.3g}{a.total_flops:>11.3g}")
    chin, llama = table["compute-optimal"], table["inference-aware"]
    if inference > 0:
        print(f"same predicted loss with a {chin.n_params / llama.n_params:.1f}x smaller model: "
              f"{1 - llama.total_flops / chin.total_flops:.0%} less compute over the model's life")
    return 0


def _carbon(args, gpu_hours: float):
    from llamaforge.plan.carbon import PAPER_GPU_WATTS, carbon

    if args.gpu_watts is None:
        args.gpu_watts = PAPER_GPU_WATTS
    return carbon(gpu_hours, args.gpu_watts, args.pue, args.carbon_intensity)


def run_measured(args) -> int:
    """Energy and emissions of a finished run from its measured device-hours (metrics.jsonl or its folder), with the
    paper's formula. A GPU run's hours are GPU-hours at --gpu-watts (default the paper's 400 W A100). A CPU run's are
    CPU-hours (wall hours x processes): labelled so, and priced only when the user gives --gpu-watts (the power
    per process), since Table 15's A100 power says nothing about a CPU; without it energy and emissions are null
    (JSON) or "not estimated" (text). Returns 0; a file without usable records is a UserError starting with
    `--measured:`."""
    from llamaforge.plan.carbon import measured_run

    watts_given = args.gpu_watts is not None
    try:
        run = measured_run(args.measured)
    except UserError as e:  # plan/ names the file; the flag is this command's word
        raise UserError(f"--measured: {e}") from None
    if not run.on_gpu:
        unit = f"{run.device_type.upper()}-hours"
        footprint = _carbon(args, run.device_hours) if watts_given else None
        if args.json:
            print(json.dumps({"measured": str(args.measured), "device_type": run.device_type,
                              "device_hours": run.device_hours, "gpu_hours": None,
                              "mwh": footprint.mwh if footprint else None,
                              "tco2eq": footprint.tco2eq if footprint else None}, indent=2))
            return 0
        if footprint is None:
            print(f"{args.measured}: {run.device_hours:,.4g} {unit} measured (a {run.device_type} run, not GPU-hours); "
                  f"energy and emissions not estimated: the paper's 400 W is an A100's, give --gpu-watts W "
                  f"(the power drawn per process) to apply its formula")
        else:
            print(f"{args.measured}: {run.device_hours:,.4g} {unit} measured -> {footprint.mwh:,.4g} MWh, "
                  f"{footprint.tco2eq:,.4g} tCO2eq ({args.gpu_watts:g} W per process (--gpu-watts) x PUE {args.pue:g}, "
                  f"{args.carbon_intensity:g} kg/kWh)")
        return 0
    footprint = _carbon(args, run.device_hours)
    if args.json:
        print(json.dumps({"measured": str(args.measured), "device_type": run.device_type, **footprint.as_dict()},
                         indent=2))
        return 0
    print(f"{args.measured}: {footprint.gpu_hours:,.4g} GPU-hours measured -> {footprint.mwh:,.4g} MWh, "
          f"{footprint.tco2eq:,.4g} tCO2eq ({args.gpu_watts:g} W x PUE {args.pue:g}, {args.carbon_intensity:g} kg/kWh)")
    return 0


def run_paper(args) -> int:
    """The paper's Table 15 recomputed: GPU-hours of each LLaMA size from its tokens at one MFU (default: the one the
    65B's 380 tokens/s/GPU implies) against the paper's, then MWh and tCO2eq from those GPU-hours. Returns 0."""
    from llamaforge.plan.carbon import paper_carbon_table
    from llamaforge.plan.flops import paper_mfu, paper_table

    mfu = paper_mfu() if args.mfu is None else args.mfu
    rows, carbon_rows = paper_table(mfu), paper_carbon_table(args.gpu_watts, args.pue, args.carbon_intensity)
    why = "implied by the 65B's 380 tokens/s/GPU" if args.mfu is None else "--mfu"  # both tables before any line
    print(f"A100-80GB (312 TFLOP/s bf16), one MFU for all sizes: {mfu:.1%} ({why})")
    print(f"{'model':<11}{'tokens':>8}{'tok/s/GPU':>11}{'GPU-hours':>12}{'paper':>12}{'ratio':>7}{'paper MFU':>11}")
    for r in rows:
        print(f"{r['preset']:<11}{r['tokens'] / 1e12:>7.1f}T{r['tokens_per_s_per_gpu']:>11,.0f}{r['gpu_hours']:>12,.0f}"
              f"{r['paper_gpu_hours']:>12,}{r['ratio']:>7.3f}{r['paper_implied_mfu']:>11.1%}")
    print(f"Table 15 from its GPU-hours: {args.gpu_watts:g} W x PUE {args.pue:g}, {args.carbon_intensity:g} kg CO2eq/kWh")
    print(f"{'model':<11}{'GPU-hours':>12}{'MWh':>8}{'paper':>8}{'tCO2eq':>9}{'paper':>8}")
    for r in carbon_rows:
        print(f"{r['preset']:<11}{r['gpu_hours']:>12,}{r['mwh']:>8.1f}{r['paper_mwh']:>8.0f}{r['tco2eq']:>9.1f}"
              f"{r['paper_tco2eq']:>8.0f}")
    return 0


def run(args) -> int:
    """Dispatch to the mode the flags name: --budget, --paper, --measured, else a model (--model or --dims). Returns 0;
    UserError when no mode is given, or for a bad energy constant (checked first: no table is half printed)."""
    from llamaforge.plan.carbon import PAPER_GPU_WATTS, carbon

    # --gpu-watts, --pue, --carbon-intensity are validated before any line is printed (args.gpu_watts stays None
    # when not given: `--measured` on a CPU run must know whether the user chose a power)
    carbon(0.0, PAPER_GPU_WATTS if args.gpu_watts is None else args.gpu_watts, args.pue, args.carbon_intensity)
    if args.gpu_watts is None and not args.measured:
        args.gpu_watts = PAPER_GPU_WATTS
    if args.budget is not None:
        return run_budget(args)
    if args.paper:
        return run_paper(args)
    if args.measured:
        return run_measured(args)
    if not (args.model or args.dims):
        raise UserError("plan: expected --model PRESET, --dims ..., --budget FLOPS, --paper or --measured METRICS")
    return run_model(args)
