"""The training loop, top to bottom (nanoGPT-style): set up processes, model, optimizer and data; resume;
then for each step accumulate gradients over micro-batches, clip, guard against spikes, update, log, validate
and checkpoint; at the end export the model, plot the loss curve.

The same loop finetunes (`finetune.base` set): the model starts from the pretrained weights, optionally with LoRA
adapters on a frozen base (`train.lora`, applied before `parallelize`), and the data are masked instruction
examples (`train.finetune`): targets -100 carry no loss; logits are computed only where a target is
(`OutputAtTargets`), and on the CPU each row of a micro-batch runs alone without its padding (`unpadded_rows`). The loss of a step is the mean over every target token of
the step (all micro-batches and processes), so examples with more response tokens weigh more, whatever the layout.

Runs as one process or under `torchrun` (FSDP2 and tensor/sequence parallelism come from `parallel.py`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from llamaforge.errors import UserError
from llamaforge.io import atomic_file, make_dir
from llamaforge.model import Transformer
from llamaforge.plan.flops import flops_per_token
from llamaforge.train import checkpoint
from llamaforge.train.config import TrainConfig, grad_accum_steps
from llamaforge.train.loader import Loader, build_loader
from llamaforge.train.metrics import (
    MetricsWriter,
    Throughput,
    bits_per_byte,
    device_peak_flops,
    memory_stats,
    plot_eval,
    plot_loss,
)
from llamaforge.train.optim import build_optimizer, build_scheduler
from llamaforge.train.parallel import build_mesh, mesh_shape, parallelize

# ----------------------------------------------------------------------------------------------------------------
# Setup


def init_processes(device_pref: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun (WORLD_SIZE set) joins the process group: NCCL on GPU, gloo on CPU."""
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise UserError("training.device: 'cuda' requested but no GPU is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return rank, world, device


def set_determinism(seed: int, deterministic: bool) -> None:
    """Seed torch's generators; with `deterministic`, also require deterministic kernels (and cuBLAS's workspace
    setting).
    """
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.backends.cudnn.benchmark = False


def check_vocab(cfg: TrainConfig, vocab_size: int) -> None:
    """Every token id the data, its tokenizer or the `[eval]` tokenizer (evaluation during training, when
    eval.tasks is set) can produce must have a row in the embedding table. Raises UserError naming the file and
    the field; the eval tokenizer used to pass here and end the first evaluation in an IndexError traceback."""
    tokenizers = [("", cfg.data.tokenizer)]
    if cfg.eval.tasks.strip() and cfg.eval.tokenizer:
        tokenizers.append(("eval.tokenizer: ", cfg.eval.tokenizer))
    for field, path in tokenizers:
        if not path:
            continue
        from llamaforge.tokenizer import load_tokenizer

        tok = load_tokenizer(path)
        if tok.vocab_size > vocab_size:
            raise UserError(
                f"{path}: {field}vocab_size: the tokenizer has {tok.vocab_size} tokens, more than the "
                f"model's {vocab_size}; set --model.vocab_size={tok.vocab_size}"
            )
    if cfg.data.kind == "shards":
        from llamaforge.data.shards import TokenShard

        for name, path in cfg.data.sources.items():
            shard = TokenShard(path)  # checks sizes and offsets: an empty or corrupt shard is one clear error
            if shard.vocab_size > vocab_size:
                raise UserError(
                    f"{path}: vocab_size: shards of source {name!r} use {shard.vocab_size} token ids, more than "
                    f"the model's {vocab_size}; set --model.vocab_size={shard.vocab_size}"
                )


class SpikeGuard:
    """Skip the update of a step whose loss or gradient norm is not finite (always), or, when `window` > 0, a large
    outlier (z-score against a window of recent accepted steps; llm.c has the same rule). The paper has no guard,
    so the z-score rule is off by default. `skipped` counts every skipped update, across resumes."""

    def __init__(self, window: int, zscore: float, min_history: int = 10):
        self.window, self.zscore, self.min_history = window, zscore, min_history
        self.losses: list[float] = []
        self.norms: list[float] = []
        self.skipped = 0

    @staticmethod
    def _z(history: list[float], x: float) -> float:
        mean = sum(history) / len(history)
        std = math.sqrt(sum((h - mean) ** 2 for h in history) / len(history))
        return (x - mean) / max(std, 1e-8)

    def check(self, loss: float, grad_norm: float) -> str | None:
        """The reason to skip this update, or None; accepted values enter the window."""
        reason = self._reason(loss, grad_norm)
        if reason is not None:
            self.skipped += 1
            return reason
        if self.window:
            self.losses = (self.losses + [loss])[-self.window:]
            self.norms = (self.norms + [grad_norm])[-self.window:]
        return None

    def _reason(self, loss: float, grad_norm: float) -> str | None:
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return "non-finite loss or grad-norm"
        if self.window and len(self.losses) >= self.min_history:
            if self._z(self.losses, loss) > self.zscore:
                return f"loss {loss:.4f} is an outlier"
            if self._z(self.norms, grad_norm) > self.zscore:
                return f"grad-norm {grad_norm:.4f} is an outlier"
        return None

    def state_dict(self) -> dict:
        """The guard's window and skip count, JSON-serializable (saved with every checkpoint)."""
        return {"losses": self.losses, "norms": self.norms, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        """Restore the window and skip count from `state_dict`."""
        self.losses, self.norms = list(state["losses"]), list(state["norms"])
        self.skipped = int(state.get("skipped", 0))


def all_reduce_mean(x: torch.Tensor) -> float:
    """Mean over all processes (gloo has no AVG: sum then divide)."""
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x.item()


def all_reduce_sum(x: torch.Tensor, group=None) -> torch.Tensor:
    """Sum over the processes of `group` (default: all); a copy, the input is unchanged."""
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x, group=group)
    return x


def full_value(x) -> float:
    """A plain float from a tensor or a DTensor (the grad norm of sharded parameters is a DTensor)."""
    if isinstance(x, DTensor):
        x = x.full_tensor()
    return float(x)


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed next-token loss over the positions that have a target; target -100 marks positions without one
    (padding, and in finetuning the prompt and template tokens). logits [..., V], targets [...]."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                           reduction="sum")


def n_targets(targets: torch.Tensor) -> torch.Tensor:
    """The number of positions that carry a target (target != -100), as a 0-d tensor on targets' device."""
    return (targets != -100).sum()


class OutputAtTargets(nn.Linear):
    """The output projection, applied only at the positions that carry a target while `positions` is set.

    In finetuning most positions are prompt, template or padding (target -100): their logits are never used, yet
    the vocabulary-wide projection and softmax are the largest single cost of a small model's step. Set from
    outside (`model.output = OutputAtTargets(model.output)`, before `parallelize`; not with tensor parallelism,
    whose plan expects the sequence-split input), it keeps the same `weight` Parameter, so names and checkpoints do
    not change. With `positions` None it is the plain projection. h [B, T, D] -> [N, V] for N positions."""

    def __init__(self, base: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", None)
        self.positions: torch.Tensor | None = None  # indices into the flattened [B * T] positions

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, T, D] -> logits [B, T, V], or [N, V] at the flattened `positions` when they are set."""
        if self.positions is not None:
            h = h.flatten(0, -2)[self.positions]
        return F.linear(h, self.weight)


@contextlib.contextmanager
def logits_at(model, targets: torch.Tensor):
    """Within the block, `model(x)` returns logits [N, V] for the N positions of `targets` [B, T] that are not -100
    (when the model's output is an `OutputAtTargets`); yields those targets [N]. Otherwise logits stay [B, T, V]
    and the targets are yielded unchanged."""
    out = getattr(model, "output", None)
    if not isinstance(out, OutputAtTargets):
        yield targets
        return
    flat = targets.reshape(-1)
    out.positions = (flat != -100).nonzero().squeeze(1)
    try:
        yield flat[out.positions]
    finally:
        out.positions = None


def unpadded_rows(x: torch.Tensor, y: torch.Tensor, multiple: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The rows of a micro-batch (x, y [B, T]) one by one, each cut after its last target (target != -100):
    [(x [1, T_b], y [1, T_b])]. Under causal attention a position only influences later ones, so positions after
    a row's last target (its padding) cannot change the loss or any gradient: running the rows alone gives the same
    loss and gradients as the padded batch (up to float summation order) without the padding's FLOPs. A row with
    no target keeps one position (every process then runs the same number of forward passes, as FSDP needs).
    `multiple`: each cut is rounded up to a multiple of it (the tensor-parallel degree; sequence parallelism splits
    every sequence evenly), never past T."""
    positions = torch.arange(1, y.shape[1] + 1, device=y.device)
    ends = torch.where(y != -100, positions, 0).amax(1).clamp(min=1).tolist()  # one host sync per micro-batch
    # sequence parallelism splits every sequence evenly: a cut rounded up to a multiple of the tp degree
    ends = [min(-(-end // multiple) * multiple, y.shape[1]) for end in ends]
    return [(x[b : b + 1, :end], y[b : b + 1, :end]) for b, end in enumerate(ends)]


def skips_padding(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether finetuning runs each row of a micro-batch alone (`finetune.padding`; "auto": on the CPU, where a
    row's matmuls are already wide enough and padding costs its full FLOPs; a GPU keeps the batch)."""
    if cfg.data.kind != "instructions":  # pretraining rows are full: nothing to skip
        return False
    return cfg.finetune.padding == "skip" or (cfg.finetune.padding == "auto" and device.type == "cpu")


@torch.no_grad()
def evaluate(model, loader: Loader, n_batches: int, device, autocast, source: str | None = None) -> float:
    """Mean cross-entropy (nats/token) over every target token of `n_batches` held-out batches.

    The held-out batches are the same on every process and in every layout (`Loader.val_batches` is not sharded),
    and each token weighs the same (a sum over tokens divided by their count, not a mean of batch means), so
    1 process, FSDP and TP measure the same number (issue #18: 4.671 vs 4.6817 under 2-way FSDP before).
    With `source` (a MixtureLoader source name), only that source's held-out documents (the flow's per-source
    validation loss); UserError when it has none. The model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    batches = loader.val_batches(n_batches) if source is None else loader.val_batches(n_batches, source=source)
    for x, y in batches:
        y = y.to(device)
        with autocast(), logits_at(model, y) as kept:  # finetuning: logits only where a target is
            total += cross_entropy_sum(model(x.to(device)).float(), kept).double()
        count += int((y != -100).sum())
    model.train(was_training)
    return all_reduce_mean(total / max(count, 1))  # identical on every rank: the mean only removes float noise


def validate(model, loader: Loader, cfg: TrainConfig, device, autocast) -> dict:
    """{"val_loss": nats/token, "val_bpb": bits per UTF-8 byte (only when the data has text)} over
    `cfg.metrics.val_batches` held-out batches; collective (every process takes part)."""
    val = evaluate(model, loader, cfg.metrics.val_batches, device, autocast)
    record = {"val_loss": val}
    bpb = bits_per_byte(val, loader.val_bytes_per_token())
    if bpb is not None:
        record["val_bpb"] = bpb
    return record


def load_base(cfg: TrainConfig) -> Transformer:
    """The pretrained model a finetuning run starts from (fp32 on the CPU), checked against the data's context and
    tokenizers. Raises UserError when `data.seq_len` exceeds the model's context, or when `data.tokenizer` or the
    `[eval]` tokenizer (with eval.tasks) has more tokens than the model has embedding rows (another model's
    tokenizer: its ids would index past the table, an IndexError deep in the forward pass;
    `formats.check_tokenizer_fits`, as generate/eval check it)."""
    from llamaforge.formats import check_tokenizer_fits, load_model

    model = load_model(cfg.finetune.base, device="cpu", dtype=torch.float32)
    if cfg.data.seq_len > model.args.max_seq_len:
        raise UserError(f"data.seq_len: {cfg.data.seq_len} exceeds the base model's context "
                        f"{model.args.max_seq_len} ({cfg.finetune.base})")
    from llamaforge.tokenizer import load_tokenizer

    # the data's tokenizer, and [eval]'s (the base is scored before training, so check_vocab would come too late)
    for path in (cfg.data.tokenizer, cfg.eval.tokenizer if cfg.eval.tasks.strip() else ""):
        if path:
            check_tokenizer_fits(load_tokenizer(path), model)
    return model


def build_model(cfg: TrainConfig, args, mesh, device: torch.device, param_dtype: torch.dtype,
                base: Transformer | None = None) -> torch.nn.Module:
    """The model of this process, already parallelized (`parallelize`: TP -> AC -> compile -> FSDP2).

    With `training.meta_init` the shapes are built on the meta device, sharded, then only this process's shards
    are allocated and initialized; otherwise every rank builds the same full model from the same seed, so any
    layout starts from identical weights. Finetuning (`base` given): every rank holds the whole pretrained model,
    then the LoRA adapters (before parallelize, which FSDP2 needs: it shards adapters with their block), then the
    output projection that skips positions without a target, then parallelize.
    """
    if base is not None:
        model = base.to(device)
        if cfg.finetune.method == "lora":
            from llamaforge.train.lora import apply_lora

            apply_lora(model, cfg.lora)
        if cfg.parallel.tp == 1:  # prompt and padding positions carry no loss: skip their logits
            model.output = OutputAtTargets(model.output)
        return parallelize(model, mesh, cfg, param_dtype=param_dtype)
    if cfg.training.meta_init:
        with torch.device("meta"):
            model = Transformer(args)
        model = parallelize(model, mesh, cfg, param_dtype=param_dtype)
        model.to_empty(device=device)
        model.init_rope(device)
        model.init_weights()
        return model
    model = Transformer(args).to(device)
    return parallelize(model, mesh, cfg, param_dtype=param_dtype)


@dataclass(frozen=True)
class TrainSummary:
    """What `train()` returns, on every process.

    step:      optimizer steps done (`training.steps` at the end; the resumed step when nothing was left to do)
    val_loss:  validation loss at `step`, nats/token (mean over all processes)
    val_bpb:   the same in bits per UTF-8 byte of text, tokenizer-independent; None on synthetic data
    loss:      training loss of the last step, nats/token; None when this call trained no step
    metrics:   rank 0: the last record written to metrics.jsonl (lr, grad_norm, tokens_per_s, mfu on a known
               GPU, memory, ...); {} on other ranks
    data:      rank 0: the realized mixture per source (weight, share, epochs, tokens, tokens_per_epoch); {}
               on other ranks and for synthetic data
    final:     the exported native model folder (`out_dir/final`, with the tokenizer when the data has one)
    skipped_updates: optimizer updates the spike guard skipped over the whole run (across resumes)
    """

    step: int
    val_loss: float
    val_bpb: float | None
    loss: float | None
    final: Path
    skipped_updates: int = 0
    metrics: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)


def full_state_dict(model) -> dict:
    """The unsharded weights on CPU (collective under FSDP/TP), with plain parameter names."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def export_final(cfg: TrainConfig, args, state: dict, out_dir: Path) -> None:
    """Rank 0: the final model as a native folder (load_model reads it), with the tokenizer; HF on request.
    A LoRA run also writes its adapters in PEFT's format (`adapter/`), and `final/` is the merged model."""
    from llamaforge.formats import save_model

    if cfg.finetune.base and cfg.finetune.method == "lora":
        from llamaforge.train import lora

        lora.save_adapter(state, args, cfg.lora, out_dir / "adapter", base_model=cfg.finetune.base)
        state = lora.merge_state_dict(state, lora.scaling(cfg.lora))

    with torch.device("meta"):
        plain = Transformer(args)
    plain.load_state_dict(state, assign=True)  # assign: take the CPU tensors, the meta model allocated nothing
    plain.init_rope("cpu")
    tokenizer = cfg.data.tokenizer or None
    if tokenizer is None and cfg.data.kind == "shards":  # the one `tokenize` recorded in every shard's header
        from llamaforge.data.shards import recorded_tokenizer

        tokenizer = recorded_tokenizer(cfg.data.sources.values())
    save_model(plain, out_dir / "final", format="native", tokenizer_path=tokenizer)
    if cfg.checkpoint.export_hf:
        save_model(plain, out_dir / "final_hf", format="hf", tokenizer_path=tokenizer)


# ----------------------------------------------------------------------------------------------------------------
# The loop


def train(cfg: TrainConfig, out_dir, resume: str | None = None, trust_checkpoint: bool = False,
          on_eval=None, examples=None) -> TrainSummary:
    """Train per `cfg`, writing config.json, metrics.jsonl, checkpoints/, final/ (and loss.png, data_stats.json)
    under `out_dir`; `resume` is "auto" (the newest complete checkpoint there), a checkpoint path, or None.

    Returns a `TrainSummary`. Raises UserError for a config, data or checkpoint mistake, before anything is
    written where it can be checked first (vocabulary sizes, shards). Resuming unpickles DCP's `.metadata`, which
    can run code: a checkpoint outside out_dir/checkpoints (not written by this run) is refused unless
    `trust_checkpoint` (`--trust-checkpoint`).

    `on_eval(model, step) -> {name: value}` (optional) is called every `cfg.eval.every` steps and at the end, on a
    single-process run, with the model in eval mode; its values are logged as `eval/NAME` beside `tokens` (the
    paper's Figure 2; `llamaforge train` passes the benchmark evaluation of `[eval]` here, so this room needs no
    import of eval/), and eval.png plots them at the end.
    `examples`: the rendered instruction examples (`train.finetune.Examples`) when `data.kind` is
    "instructions" (finetuning, `finetune.base` set).
    """
    out_dir = Path(out_dir)
    t = cfg.training
    base = load_base(cfg) if cfg.finetune.base else None
    args = base.args if base is not None else cfg.model_args()
    check_vocab(cfg, args.vocab_size)  # before anything is started or written
    rank, world, device = init_processes(t.device)
    master = rank == 0
    set_determinism(t.seed, t.deterministic)

    # Layout: dp_shard x tp processes; every tensor-parallel group reads the same data.
    dp, tp = mesh_shape(world, cfg.parallel.dp_shard, cfg.parallel.tp)
    mesh = build_mesh(device.type, dp, tp) if world > 1 else None
    dp_rank = mesh["dp_shard"].get_local_rank() if mesh is not None else 0
    accum = grad_accum_steps(cfg, dp)

    # Mixed precision: bf16 compute on GPU with fp32 master weights (FSDP casts per block; else autocast).
    bf16 = t.dtype == "bf16" and device.type == "cuda"
    fsdp = dp > 1
    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and not fsdp else contextlib.nullcontext()

    model = build_model(cfg, args, mesh, device, param_dtype=torch.bfloat16 if bf16 else torch.float32, base=base)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, t.steps)
    loader = build_loader(cfg, args.vocab_size, dp_rank, dp, examples)

    def dp_sum(x: torch.Tensor) -> torch.Tensor:  # over the data-parallel processes (tp ranks share their data)
        return all_reduce_sum(x, mesh["dp_shard"].get_group()) if fsdp else x
    guard = SpikeGuard(t.spike_window, t.spike_zscore)
    if master and cfg.data.kind == "shards":  # the mixture says what it will do before it does it (issue #11)
        from llamaforge.data.mixture import format_plan

        # every sequence takes seq_len + 1 tokens from its source (inputs and the shifted targets)
        sequences = t.steps * cfg.training.batch_tokens // cfg.data.seq_len
        print(format_plan(*loader.plan(sequences * (cfg.data.seq_len + 1))), flush=True)

    start, elapsed_before = 0, 0.0  # wall seconds the run spent before this process (a resumed run's earlier part)
    ckpt_root = out_dir / "checkpoints"
    if resume:
        path = checkpoint.latest(ckpt_root) if resume == "auto" else Path(resume)
        if path is not None and not trust_checkpoint:
            checkpoint.check_written_here(path, ckpt_root)
        if path is not None:
            train_state, rank_state = checkpoint.load(path, model, optimizer, cfg.to_dict())
            start = train_state["step"]
            scheduler.load_state_dict(train_state["scheduler"])
            guard.load_state_dict(train_state["spike_guard"])
            elapsed_before = float(train_state.get("elapsed_s", 0.0))  # absent in checkpoints of older versions
            loader.load_state_dict(rank_state["loader"])
            if master:
                print(f"resumed from {path} at step {start}")
        elif master:
            print(f"no checkpoint in {ckpt_root}: starting from scratch")

    writer = None
    if master:
        make_dir(out_dir)  # a destination under a file: one error line, not a traceback
        with atomic_file(out_dir / "config.json", "w") as f:
            f.write(json.dumps(cfg.to_dict(), indent=2) + "\n")
        writer = MetricsWriter(out_dir, cfg.metrics.tensorboard, resume_step=start)
        n_total, n_nonemb = Transformer.num_params(model), Transformer.num_params(model, non_embedding=True)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"model: {args.n_layers} layers, dim {args.dim}; {n_total / 1e6:.2f}M parameters "
              f"({n_nonemb / 1e6:.2f}M non-embedding, {n_train / 1e6:.3f}M trainable); "
              f"{world} process(es) as dp_shard {dp} x tp {tp}; "
              f"{cfg.training.batch_tokens} tokens/step = {accum} micro-batch(es) of {t.micro_batch_size} x "
              f"{cfg.data.seq_len} per process")
    fpt = flops_per_token(args, cfg.data.seq_len)
    speed = Throughput(fpt, device_peak_flops(device), world)
    progress = None
    if master and cfg.metrics.progress:
        from tqdm import tqdm

        progress = tqdm(total=t.steps, initial=start, unit="step", dynamic_ncols=True)

    model.train()
    unpad = skips_padding(cfg, device)
    tokens_since_log, last, loss_value, val = 0, {}, None, {}
    started = time.time()
    for step in range(start, t.steps):
        # 1. forward/backward over micro-batches. The step's loss is a mean over all its target tokens: count them
        # first (all micro-batches, all data-parallel processes), then each micro-batch adds sum / count.
        batches = [loader.next_batch() for _ in range(accum)]
        count = dp_sum(sum(n_targets(y) for _, y in batches).to(device)).clamp(min=1)
        loss_sum = torch.zeros((), device=device)
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for xr, yr in unpadded_rows(x, y, cfg.parallel.tp) if unpad else [(x, y)]:  # finetuning on CPU: no FLOPs on padding
                with autocast(), logits_at(model, yr) as kept:
                    loss = cross_entropy_sum(model(xr), kept)
                (loss * (dp / count)).backward()  # x dp: FSDP averages gradients over the dp processes
                loss_sum += loss.detach()
        loss_value = (dp_sum(loss_sum) / count).item()

        # 2. clip (returns the norm before clipping), then update unless this step is a spike
        grad_norm = full_value(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip))
        lr = scheduler.get_last_lr()[0]
        skipped = guard.check(loss_value, grad_norm)
        if skipped is None:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()  # the schedule follows the step count even for skipped updates

        # 3. metrics
        done = step + 1
        tokens_since_log += cfg.training.batch_tokens
        if master and (done % cfg.metrics.log_every == 0 or done == t.steps or skipped):  # every skip is logged
            last = {"step": done, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                    **speed.update(tokens_since_log), **memory_stats(device),
                    "elapsed_s": elapsed_before + time.time() - started, "devices": world,
                    "device_type": device.type}  # for `plan --measured` (GPU-hours only when on GPUs)
            if skipped:
                last["skipped"] = skipped
                (progress.write if progress is not None else print)(f"step {done}: update skipped: {skipped}")
            writer.write(last)
            tokens_since_log = 0
            if progress is not None:
                progress.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{last['tokens_per_s']:.0f}",
                                     skipped=guard.skipped)
        if progress is not None:
            progress.update(1)

        # 4. validation every val_every steps and at the end
        if (cfg.metrics.val_every and done % cfg.metrics.val_every == 0) or done == t.steps:
            val = validate(model, loader, cfg, device, autocast)
            if master:
                record = {"step": done, **val}
                for name, st in loader.stats().items():  # realized mixture so far: share and epochs per source
                    record[f"data/{name}/share"], record[f"data/{name}/epochs"] = st["share"], st["epochs"]
                writer.write(record)
                last.update(record)

        # 4b. benchmark accuracy (the paper's Figure 2), through the caller's callback
        if on_eval is not None and ((cfg.eval.every and done % cfg.eval.every == 0) or done == t.steps):
            if world == 1:
                model.eval()
                scores = on_eval(model, done)
                model.train()
                record = {"step": done, "tokens": done * cfg.training.batch_tokens,
                          **{f"eval/{k}": v for k, v in scores.items()}}
                writer.write(record)
                last.update(record)
            elif master and done == t.steps:  # said once, not skipped silently
                print("eval during training: runs only in single-process runs; evaluate final/ with `llamaforge eval`")

        # 5. checkpoint (collective)
        if (cfg.checkpoint.every and done % cfg.checkpoint.every == 0) or done == t.steps:
            train_state = {"scheduler": scheduler.state_dict(), "spike_guard": guard.state_dict(),
                           "config": cfg.to_dict(), "elapsed_s": elapsed_before + time.time() - started}
            checkpoint.save(ckpt_root, done, model, optimizer, train_state,
                            {"loader": loader.state_dict()}, cfg.checkpoint.keep_last_k)

    if progress is not None:
        progress.close()
    if start >= t.steps:  # resumed a finished run: nothing trained, but still report where it stands
        val = validate(model, loader, cfg, device, autocast)
    state = full_state_dict(model)  # collective: every rank takes part in the gather
    stats = {}
    if master:
        export_final(cfg, args, state, out_dir)
        writer.close()
        plot_loss(out_dir / "metrics.jsonl", out_dir / "loss.png")
        plot_eval(out_dir / "metrics.jsonl", out_dir / "eval.png")
        stats = loader.stats()
        if stats:
            with atomic_file(out_dir / "data_stats.json", "w") as f:
                f.write(json.dumps(stats, indent=2) + "\n")
        if guard.skipped:
            print(f"{guard.skipped} of {t.steps} updates were skipped by the spike guard (see metrics.jsonl)")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return TrainSummary(step=max(start, t.steps), val_loss=val["val_loss"], val_bpb=val.get("val_bpb"),
                        loss=loss_value, final=out_dir / "final", skipped_updates=guard.skipped, metrics=last,
                        data=stats)
