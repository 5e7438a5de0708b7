"""Training configuration: dataclasses, named TOML recipes, and `--section.key=value` overrides.

A recipe is a TOML file with one table per section below. `llamaforge train --recipe NAME` reads
`llamaforge/recipes/NAME.toml` (or any path to a .toml file); every key can then be overridden on the
command line, e.g. `--optim.lr=1e-3 --training.steps=100`. Values are parsed as TOML and type-checked
against the dataclass field; an unknown section or key is a one-line `UserError` that names it.

The batch is given in tokens, as in the paper (4M tokens per optimizer step): gradient accumulation is derived
from it, the sequence length, the per-process micro-batch and the number of data-parallel processes.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from llamaforge.errors import UserError, check_range
from llamaforge.model import ModelArgs

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


@dataclass
class ModelConfig:
    """[model]: a preset name from `llamaforge.presets.PRESETS` and ModelArgs fields that override it."""
    preset: str = "tiny-1m"  # a name from llamaforge.presets.PRESETS
    overrides: dict = field(default_factory=dict)  # any ModelArgs field, e.g. n_layers = 2


@dataclass
class DataConfig:
    """[data]: where the token shards are and how they mix. kind "shards" reads `sources` (name -> folder written
    by `llamaforge tokenize`) with `weights` (normalized sampling proportions; equal when empty) through
    `data.mixture.MixtureLoader`; "synthetic" is the counting task of `train.synthetic`. seq_len is in tokens and
    becomes the model's max_seq_len.
    """
    kind: str = "shards"  # "shards": token shards read by llamaforge.data.mixture; "synthetic": a built-in toy task
    sources: dict = field(default_factory=dict)  # source name -> folder of token shards
    weights: dict = field(default_factory=dict)  # source name -> sampling proportion (normalized)
    seq_len: int = 2048
    tokenizer: str = ""  # checked against the model's vocabulary and copied next to the final model


@dataclass
class OptimConfig:
    """[optim]: AdamW and its schedule. The defaults are the paper's (§2.2): beta1 0.9, beta2 0.95, eps 1e-8,
    weight decay 0.1, 2000 warmup steps, cosine decay to 10% of the peak lr, gradient clipping at 1.0; the peak lr
    is per model size (Table 2: 3e-4 for 7B/13B, 1.5e-4 for 33B/65B, set by the recipes).
    """
    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 2000
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak lr
    grad_clip: float = 1.0


@dataclass
class TrainingConfig:
    """[training]: length, batch and precision. batch_tokens counts tokens per optimizer step over all
    processes and micro-batches (the paper: 4M); gradient accumulation makes up the difference
    (`grad_accum_steps`). dtype "bf16" is bf16 compute with fp32 master weights on a GPU (fp32 on a CPU).
    """
    steps: int = 1000
    batch_tokens: int = 4 * 1024 * 1024  # tokens per optimizer step, all processes and micro-batches together
    micro_batch_size: int = 1  # sequences per process per forward/backward
    seed: int = 0
    dtype: str = "bf16"  # "bf16": autocast with fp32 master weights (on GPU); "fp32"
    compile: bool = False  # torch.compile each transformer block
    activation_checkpointing: str = "none"  # "none" | "full" | "selective"
    deterministic: bool = False
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    meta_init: bool = False  # build on the meta device and initialize after sharding (big models); off: every
    #                          process builds the full model from the seed, so all layouts start identical
    # The spike guard always skips an update whose loss or grad norm is not finite. Its z-score rule (skip an update
    # whose loss or grad norm is spike_zscore std above the mean of the last spike_window accepted steps) is off by
    # default, as in the paper, which has no such guard: on healthy runs it threw away ~8% of updates that clipping
    # already bounds. Turn it on with e.g. spike_window = 50.
    spike_window: int = 0
    spike_zscore: float = 6.0


@dataclass
class ParallelConfig:
    """[parallel]: the process layout, dp_shard (FSDP2) x tp (tensor + sequence parallel); dp_shard -1 takes every
    process left after tp.
    """
    dp_shard: int = -1  # FSDP2 degree; -1: all processes left after tensor parallelism
    tp: int = 1  # tensor (+sequence) parallel degree


@dataclass
class CheckpointConfig:
    """[checkpoint]: whole-state checkpoints every `every` steps (0: only at the end), the newest keep_last_k kept;
    export_hf adds final_hf/.
    """
    every: int = 1000  # steps between checkpoints (0: only at the end)
    keep_last_k: int = 2
    export_hf: bool = False  # also write the final model in Hugging Face format (final_hf/)


@dataclass
class MetricsConfig:
    """[metrics]: log every log_every steps; validate on val_batches held-out batches every val_every steps (0: only at
    the end); TensorBoard and the progress bar on request.
    """
    log_every: int = 1
    val_every: int = 0  # steps between validation passes (0: only at the end)
    val_batches: int = 8
    tensorboard: bool = False
    progress: bool = True  # tqdm progress bar


@dataclass
class EvalConfig:
    """[eval]: benchmark accuracy during training (the paper's Figure 2). Every `every` steps (0: never) and at the
    end, the comma-separated `tasks` (names of `llamaforge eval --list-tasks`) are scored on their first `limit`
    items, read from `data_dir` (the layout of SOURCES.md), with `tokenizer` (default: data.tokenizer). The scores
    go into metrics.jsonl (`eval/TASK/METRIC`) and TensorBoard, and eval.png plots them against training tokens.
    The evaluation is given to the trainer as a callback built by `eval.evaluator_from_section` (train/ does not
    import eval/).
    """
    tasks: str = ""
    every: int = 0
    limit: int = 100
    data_dir: str = ""
    tokenizer: str = ""
    batch_size: int = 16


@dataclass
class LoRAConfig:
    """Low-rank adapters (Hu et al. 2021, "LoRA"): W x + (alpha / rank) * B A dropout(x), B = 0 at the start.

    `targets`: comma-separated projection names, Meta's (wq, wk, wv, wo, w1, w2, w3) or HF's (q_proj ... down_proj),
    or "all" for all seven linear layers of every block. The default, the four attention projections, follows the
    LoRA paper's Section 7.1 (adapting all of wq, wk, wv, wo at a small rank) and torchtune's Llama recipes."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = "wq,wk,wv,wo"


@dataclass
class FinetuneConfig:
    """Instruction finetuning (the paper's Section 4, LLaMA-I): start from `base` instead of a random model and
    train on examples whose loss falls on the response tokens only (`llamaforge finetune`)."""

    base: str = ""  # pretrained model (any format `load_model` reads); empty: pretraining from scratch
    method: str = "full"  # "full": every weight trains; "lora": low-rank adapters ([lora]) on a frozen base
    data: str = ""  # Alpaca JSON/JSONL, chat JSONL ({"messages": [...]}) or prompt/completion JSONL
    template: str = "plain"  # chat format of the examples (llamaforge.infer.templates: plain, llama2, llama3, chatml,
    #                          a tokenizer_config.json or a Jinja file); the finetuned model is served with it
    overflow: str = "truncate"  # an example longer than data.seq_len + 1 tokens: "truncate" its response or "drop" it
    val_examples: int = 64  # held-out examples for the validation (response) loss
    max_examples: int = 0  # use only the first N examples of the file (0: all)
    # "skip": each row of a micro-batch runs forward/backward alone, cut after its last target (padding and anything
    # after the last response token cannot change the loss under causal attention: same loss and gradients, no
    # FLOPs on padding); "keep": the padded micro-batch runs as one batch (wider matmuls: better on a GPU);
    # "auto": skip on the CPU, keep on a GPU
    padding: str = "auto"


@dataclass
class TrainConfig:
    """A whole training run: the sections of a TOML recipe (recipes/*.toml), each a dataclass.

    Built by `load_config` (recipe + `--section.key=value` overrides, then `validate`) or `from_dict`.
    """
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def model_args(self, where: str = "config") -> ModelArgs:
        """The model shape: the preset with `model.overrides` and `max_seq_len = data.seq_len` applied.

        An inconsistent shape (e.g. `n_heads = 4` on a preset whose `n_kv_heads` is 6, or `dim` not divisible by
        `n_heads`) is a one-line UserError naming `where` and the fields, not the model's ValueError."""
        from llamaforge.presets import PRESETS, get_preset

        if self.model.preset not in PRESETS:
            raise UserError(f"{where}: model.preset: unknown preset {self.model.preset!r}; known: "
                            f"{', '.join(PRESETS)}")
        try:
            return get_preset(self.model.preset, max_seq_len=self.data.seq_len, **self.model.overrides)
        except ValueError as e:  # ModelArgs.__post_init__: the shape does not hold together
            fields = ", ".join(f"{k} = {v}" for k, v in self.model.overrides.items()) or "no overrides"
            raise UserError(f"{where}: model: {e} (preset {self.model.preset!r} with {fields}); expected a "
                            f"consistent shape: set the other field too, e.g. n_kv_heads") from None

    def to_dict(self) -> dict:
        """The config as nested plain dicts (written as config.json beside the run and inside every checkpoint)."""
        return dataclasses.asdict(self)


CHOICES = {
    ("data", "kind"): ("shards", "synthetic", "instructions"),
    ("finetune", "method"): ("full", "lora"),
    ("finetune", "overflow"): ("truncate", "drop"),
    ("finetune", "padding"): ("auto", "skip", "keep"),
    ("training", "dtype"): ("bf16", "fp32"),
    ("training", "activation_checkpointing"): ("none", "full", "selective"),
    ("training", "device"): ("auto", "cpu", "cuda"),
}

# The range of every numeric field (type, low, high, brackets): validate() refuses anything outside in one line,
# so no value reaches the loop that would train on NaN (batch_tokens = 0), clip every gradient to zero
# (grad_clip = 0), divide by zero (log_every = 0) or diverge silently (beta1 >= 1). Upper bounds are sanity
# limits far beyond any real run (the paper: 1.4T tokens = ~350k steps of 4M tokens).
BIG = 10**12
RANGES: dict[tuple[str, str], tuple] = {
    ("eval", "every"): (int, 0, BIG, "[]"),
    ("eval", "limit"): (int, 1, BIG, "[]"),
    ("eval", "batch_size"): (int, 1, 1 << 16, "[]"),
    ("data", "seq_len"): (int, 1, 1 << 24, "[]"),
    ("optim", "lr"): (float, 0, 10, "(]"),
    ("optim", "beta1"): (float, 0, 1, "[)"),
    ("optim", "beta2"): (float, 0, 1, "[)"),
    ("optim", "eps"): (float, 0, 1, "(]"),
    ("optim", "weight_decay"): (float, 0, 10, "[]"),
    ("optim", "warmup_steps"): (int, 0, BIG, "[]"),
    ("optim", "min_lr_ratio"): (float, 0, 1, "[]"),
    ("optim", "grad_clip"): (float, 0, 1e9, "(]"),
    ("training", "steps"): (int, 1, BIG, "[]"),
    ("training", "batch_tokens"): (int, 1, 1 << 40, "[]"),
    ("training", "micro_batch_size"): (int, 1, 1 << 24, "[]"),
    ("training", "seed"): (int, 0, 2**63 - 1, "[]"),
    ("training", "spike_window"): (int, 0, 1 << 20, "[]"),
    ("training", "spike_zscore"): (float, 0, 1e9, "(]"),
    ("parallel", "dp_shard"): (int, -1, 1 << 20, "[]"),  # -1: every process left after tp; 0 is refused below
    ("parallel", "tp"): (int, 1, 1 << 20, "[]"),
    ("checkpoint", "every"): (int, 0, BIG, "[]"),
    ("checkpoint", "keep_last_k"): (int, 0, 1 << 20, "[]"),  # 0: keep all
    ("metrics", "log_every"): (int, 1, BIG, "[]"),
    ("metrics", "val_every"): (int, 0, BIG, "[]"),
    ("metrics", "val_batches"): (int, 1, 1 << 20, "[]"),
    ("lora", "rank"): (int, 1, 1 << 16, "[]"),
    ("lora", "alpha"): (float, 0, 1e6, "(]"),
    ("lora", "dropout"): (float, 0, 1, "[)"),
    ("finetune", "val_examples"): (int, 0, 1 << 24, "[]"),
    ("finetune", "max_examples"): (int, 0, BIG, "[]"),  # 0: all
}

_MODEL_FIELDS = {f.name: f for f in dataclasses.fields(ModelArgs)}


def _check_type(value: Any, tp, where: str) -> Any:
    """Return `value` converted to the annotation `tp` (int -> float allowed), or raise a UserError."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _check_type(value, args[0], where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = origin or tp
    if expected is dict and isinstance(value, dict):
        return value
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise UserError(f"{where}: expected {getattr(expected, '__name__', expected)}, got {value!r}")


def _set(cfg: TrainConfig, section: str, key: str, value: Any, where: str) -> None:
    sections = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if section not in sections:
        raise UserError(f"{where}: unknown config section {section!r}; known: {', '.join(sections)}")
    sub = getattr(cfg, section)
    if section == "model" and key != "preset":  # any ModelArgs field is a model override
        if key == "overrides" and isinstance(value, dict):
            for k, v in value.items():
                _set(cfg, "model", k, v, f"{where}.{k}")
            return
        if key not in _MODEL_FIELDS:
            raise UserError(f"{where}: unknown config key 'model.{key}'; known: preset, {', '.join(_MODEL_FIELDS)}")
        tp = typing.get_type_hints(ModelArgs)[key]
        sub.overrides[key] = _check_type(value, tp, where)
        return
    fields = {f.name: f for f in dataclasses.fields(sub)}
    if "." in key and key.split(".", 1)[0] in fields:  # --data.sources.NAME=PATH: one entry of a table
        key, item = key.split(".", 1)
        if typing.get_type_hints(type(sub))[key] is not dict:
            raise UserError(f"{where}: '{section}.{key}' is not a table; expected --{section}.{key}=VALUE")
        if isinstance(value, (dict, list)):
            raise UserError(f"{where}: expected a single value for one entry, got {value!r}")
        getattr(sub, key)[item] = value
        return
    if key not in fields:
        raise UserError(f"{where}: unknown config key '{section}.{key}'; known: {', '.join(fields)}")
    value = _check_type(value, typing.get_type_hints(type(sub))[key], where)
    if (section, key) in CHOICES and value not in CHOICES[(section, key)]:
        raise UserError(f"{where}: expected one of {', '.join(CHOICES[(section, key)])}, got {value!r}")
    setattr(sub, key, value)


def set_key(cfg: TrainConfig, section: str, key: str, value: Any, where: str) -> None:
    """Set one recipe key ("training", "steps") with the same type checks as a TOML recipe or a `--section.key`
    override; `where` starts the UserError message."""
    _set(cfg, section, key, value, where)


def recipe_path(name_or_path: str) -> Path:
    """A recipe name (`debug`, `llama-7b` ...) or a path to a TOML file (`io.named_toml`)."""
    from llamaforge.io import named_toml

    return named_toml(name_or_path, RECIPES_DIR, "recipe", "--recipe")


def from_dict(data: dict, where: str = "config") -> TrainConfig:
    """A TrainConfig from nested dicts ({section: {key: value}}), defaults for what is absent.

    Raises UserError naming `where` and `section.key` for an unknown section or key or a value of the wrong type.
    """
    cfg = TrainConfig()
    for section, table in data.items():
        if not isinstance(table, dict):
            raise UserError(f"{where}: {section}: expected a [section] table, got {table!r}")
        for key, value in table.items():
            _set(cfg, section, key, value, f"{where}: {section}.{key}")
    return cfg


def parse_override(arg: str) -> tuple[str, str, Any]:
    """'--section.key=value' -> (section, key, value); the value is read as TOML, else as a bare string."""
    if not arg.startswith("--") or "=" not in arg or "." not in arg.split("=", 1)[0]:
        raise UserError(f"{arg}: expected an override of the form --section.key=value")
    name, raw = arg[2:].split("=", 1)
    section, key = name.split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare strings need no quotes on the command line
    return section, key, value


def load_config(recipe: str, overrides: list[str] = ()) -> TrainConfig:
    """The config of a recipe (a name in recipes/ or a .toml path) with `--section.key=value` overrides applied
    in order, then validated (`validate`).

    Raises UserError for an unknown recipe, a file that is not UTF-8 TOML, an unknown key, or a value out of range.
    """
    path = recipe_path(recipe)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); a recipe is a UTF-8 TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    cfg = from_dict(data, str(path))
    flags = {}  # "section.key" -> the command-line flag that set it last, so a range error names the flag
    for arg in overrides:
        section, key, value = parse_override(arg)
        flag = arg.split("=", 1)[0]
        _set(cfg, section, key, value, flag)
        flags[f"{section}.{key}"] = flag
    validate(cfg, str(path), flags)
    return cfg


def validate(cfg: TrainConfig, where: str = "config", flags: dict[str, str] | None = None) -> None:
    """Every field in its range (`RANGES`; the model's through `formats.weights.MODEL_RANGES`), then the checks
    that need more than one field. Raises UserError with one line that starts with `where` (the recipe file) and
    names the field, or, for a value set on the command line, starts with its flag (`flags`: "section.key" ->
    "--section.key"); called before anything is started or written."""
    from llamaforge.formats.weights import MODEL_RANGES, check_field

    flags = flags or {}

    def origin(name: str) -> str:
        return flags.get(name) or f"{where}: {name}"

    for (section, key), (kind, low, high, bounds) in RANGES.items():
        value = check_range(getattr(getattr(cfg, section), key), kind, low, high, origin(f"{section}.{key}"),
                            bounds)
        setattr(getattr(cfg, section), key, value)
    if cfg.parallel.dp_shard == 0:
        raise UserError(f"{origin('parallel.dp_shard')}: expected -1 (all processes left after tp) or a positive "
                        "degree, got 0")
    for name, value in cfg.model.overrides.items():
        if f"model.{name}" in flags and name in MODEL_RANGES:
            kind, low, high, bounds = MODEL_RANGES[name]
            check_range(value, kind, low, high, flags[f"model.{name}"], bounds)
        else:
            check_field(name, value, where, f"model.{name}")
    cfg.model_args(where)  # the model shape holds together (preset + overrides)
    if cfg.data.kind == "shards":
        if not cfg.data.sources:
            raise UserError(f"{where}: data.sources: expected at least one source (name = folder of token shards)")
        for name, folder in cfg.data.sources.items():
            if not isinstance(folder, str) or not folder:
                raise UserError(f"{where}: data.sources.{name}: expected a folder path, got {folder!r}")
        missing = set(cfg.data.weights) ^ set(cfg.data.sources)
        if cfg.data.weights and missing:
            raise UserError(f"{where}: data.weights: sources and weights name different sources: "
                            f"{', '.join(sorted(missing))}")
    if cfg.data.kind == "synthetic" and (cfg.data.sources or cfg.data.weights):
        raise UserError(f"{where}: data.sources: given, but data.kind is 'synthetic'; set data.kind = \"shards\"")
    for name, weight in cfg.data.weights.items():
        check_range(weight, float, 0, 1e12, f"{where}: data.weights.{name}", "(]")
    per_micro = cfg.data.seq_len * cfg.training.micro_batch_size
    if cfg.training.batch_tokens < per_micro:
        raise UserError(f"{where}: training.batch_tokens: {cfg.training.batch_tokens} is less than one micro-batch "
                        f"(data.seq_len x training.micro_batch_size = {per_micro})")
    if cfg.data.kind == "instructions" and not (cfg.finetune.data and cfg.finetune.base):
        raise UserError(f"{where}: data.kind: 'instructions' needs finetune.base and finetune.data "
                        "(use `llamaforge finetune`)")
    if cfg.finetune.base:
        if cfg.training.meta_init:
            raise UserError(f"{where}: training.meta_init: finetuning loads the base model whole on every process; "
                            "expected false")
        if cfg.finetune.method == "lora" and cfg.parallel.tp > 1:
            raise UserError(f"{where}: parallel.tp: LoRA adapters are not tensor-parallel here; expected 1 "
                            "(FSDP2 works)")
        if cfg.finetune.method == "lora":
            from llamaforge.train.lora import check

            try:
                check(cfg.lora)
            except UserError as e:  # "lora.FIELD: ...": named by its flag when the command line set it
                field, _, rest = str(e).partition(":")
                raise UserError(f"{flags[field]}:{rest}" if field in flags else f"{where}: {e}") from None


def grad_accum_steps(cfg: TrainConfig, dp_degree: int) -> int:
    """Micro-batches per optimizer step so that all processes together see `training.batch_tokens` tokens."""
    per_micro = cfg.data.seq_len * cfg.training.micro_batch_size * dp_degree
    if cfg.training.batch_tokens % per_micro:
        raise UserError(
            f"training.batch_tokens: {cfg.training.batch_tokens} is not a multiple of seq_len x micro_batch_size "
            f"x data-parallel degree = {cfg.data.seq_len} x {cfg.training.micro_batch_size} x {dp_degree}"
        )
    return cfg.training.batch_tokens // per_micro
