"""The flow config: one TOML file that drives every stage of `llamaforge run`, as dataclasses.

    [run]
    out = "runs/flow"                 # the run folder: every stage writes under it
    workers = 2                       # processes for prepare and tokenize

    [sources.books]                   # one table per source; the name is yours, `kind` says what it is
    kind = "books"                    # a paper source (commoncrawl c4 github wikipedia books arxiv stackexchange),
                                      # "builtin" (the standard library's code or docs), or "jsonl" (prepared documents)
    inputs = ["../shared/data/gutenberg"]
    weight = 0.045                    # default: Table 1's share for a paper source, else 1
    options = { near_dup_threshold = 0.9 }   # the source's own `prepare` options (others are refused)

    [tokenizer]                       # trained on a sample that follows the weights, or `path` to reuse one
    vocab_size = 32000
    sample_mb = 20

    [train]                           # a training recipe plus the keys it changes (`--section.key=value` spelling)
    recipe = "demo"
    set = { "training.steps" = 250 }

    [eval]
    tasks = ["piqa", "hellaswag"]
    data_dir = "../shared/data"
    limit = 200                       # items per task (0: all)
    val_batches = 4                   # held-out batches per source for the validation loss per source

    [export]
    formats = ["hf", "gguf"]

Relative paths are taken from the current directory (as `llamaforge train` does), so a flow in the repository runs
from its root. Every key can be overridden: `--train.set.training.steps=10`, `--sources.books.inputs=["x"]`,
`--run.out=runs/y`. Every mistake is a one-line `UserError` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamaforge.errors import UserError

FLOWS_DIR = Path(__file__).resolve().parent.parent / "flows"
PAPER_SOURCES = ("commoncrawl", "c4", "github", "wikipedia", "books", "arxiv", "stackexchange")
KINDS = PAPER_SOURCES + ("builtin", "jsonl")
BUILTIN_PARTS = ("code", "docs")


@dataclass
class SourceSpec:
    """One `[sources.NAME]` table: `kind` (a paper source, "builtin" or "jsonl"), its `inputs` (files or folders), its
    mixture `weight` (None: Table 1's share for a paper source, 1 otherwise) and the source's own `prepare`
    `options`."""
    name: str
    kind: str
    inputs: list = field(default_factory=list)
    weight: float | None = None  # None: Table 1's share for a paper source, 1.0 otherwise
    options: dict = field(default_factory=dict)


@dataclass
class RunSpec:
    """`[run]`: the run folder `out` every stage writes under, and `workers` (processes for prepare and tokenize)."""
    out: str = "runs/flow"
    workers: int = 1


@dataclass
class TokenizerSpec:
    """`[tokenizer]`: an existing tokenizer file `path` (no training), or the SentencePiece training settings:
    `vocab_size`, `sample_mb` (megabytes of text in the sample, split by the mixture weights) and `seed`."""
    path: str = ""  # an existing tokenizer file: no training
    vocab_size: int = 32000
    sample_mb: float = 20.0  # megabytes of text in the training sample, split by the mixture weights
    seed: int = 0


@dataclass
class TrainSpec:
    """`[train]`: a training `recipe` (name or .toml) and `set`, its keys changed as {"section.key": value}, applied
    after the recipe."""
    recipe: str = "demo"
    set: dict = field(default_factory=dict)  # "section.key" -> value, applied after the recipe


@dataclass
class EvalSpec:
    """`[eval]`: benchmark `tasks` with their `data_dir`, `limit` items per task (0: all), `val_batches` held-out
    batches per source for the per-source validation loss, and the scoring `batch_size`."""
    tasks: list = field(default_factory=list)
    data_dir: str = "../shared/data"
    limit: int = 0
    val_batches: int = 4
    batch_size: int = 16


@dataclass
class ExportSpec:
    """`[export]`: the `formats` the trained model is written in (each checked against the native model where a peer can
    read it)."""
    formats: list = field(default_factory=lambda: ["hf", "gguf"])


@dataclass
class FlowConfig:
    """The whole flow file as dataclasses: its `path` (named in every error) and one field per section; `sources` maps
    each name to its SourceSpec. Built and validated by `load_flow`."""
    path: str
    run: RunSpec = field(default_factory=RunSpec)
    sources: dict = field(default_factory=dict)  # name -> SourceSpec
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    export: ExportSpec = field(default_factory=ExportSpec)

    @property
    def out(self) -> Path:
        """The run folder (`run.out`) as a Path."""
        return Path(self.run.out)

    def weights(self) -> dict[str, float]:
        """Each source's sampling weight: its own, Table 1's for a paper source, else 1 (normalized by the loader)."""
        from llamaforge.data.mixture import TABLE1

        return {n: s.weight if s.weight is not None else TABLE1.get(s.kind, {}).get("weight", 1.0)
                for n, s in self.sources.items()}

    def to_dict(self) -> dict:
        """The config as plain dicts and lists (dataclasses.asdict), as written to OUT/flow.json."""
        return dataclasses.asdict(self)


_TYPES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
          dict: "a table"}


def _typed(value: Any, tp, where: str) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and value is None:
        return None
    if isinstance(value, tp) and not (tp in (int, float) and isinstance(value, bool)):
        return value
    raise UserError(f"{where}: expected {_TYPES.get(tp, tp.__name__)}, got {value!r}")


def _fill(obj, table: dict, where: str) -> None:
    hints = {f.name: f.type for f in dataclasses.fields(obj)}
    types = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict,
             "float | None": float}
    for key, value in table.items():
        if key not in hints or key == "name":
            known = ", ".join(k for k in hints if k != "name")
            raise UserError(f"{where}.{key}: unknown key; known: {known}")
        setattr(obj, key, _typed(value, types[hints[key]], f"{where}.{key}"))


def set_dotted(data: dict, dotted: str, value: Any, where: str) -> None:
    """data["a"]["b"]["c"] = value for "a.b.c", creating tables on the way. Under `train.set` the rest of the key is
    one recipe key ("training.steps"), as the recipe spells it."""
    parts = dotted.split(".")
    if parts[:2] == ["train", "set"] and len(parts) > 2:
        parts = parts[:2] + [".".join(parts[2:])]
    node = data
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise UserError(f"{where}: '{p}' is a value, not a table; expected --{'.'.join(parts[:-1])}=VALUE")
        node = nxt
    node[parts[-1]] = value


def from_dict(data: dict, path: str, dry_run: bool = False) -> FlowConfig:
    """A FlowConfig from parsed TOML; checks every section, key and type (UserError: `FILE: section.key: ...`).
    `dry_run`: see `validate`."""
    cfg = FlowConfig(path=path)
    sections = {"run", "sources", "tokenizer", "train", "eval", "export"}
    for section, table in data.items():
        if section not in sections:
            raise UserError(f"{path}: {section}: unknown section; known: {', '.join(sorted(sections))}")
        if not isinstance(table, dict):
            raise UserError(f"{path}: {section}: expected a [{section}] table, got {table!r}")
        if section == "sources":
            for name, spec in table.items():
                where = f"{path}: sources.{name}"
                if not isinstance(spec, dict):
                    raise UserError(f"{where}: expected a [sources.{name}] table with kind and inputs")
                source = SourceSpec(name=name, kind="")
                _fill(source, spec, where)
                cfg.sources[name] = source
        else:
            _fill(getattr(cfg, section), table, f"{path}: {section}")
    validate(cfg, dry_run)
    return cfg


def missing_input(name: str, spec: SourceSpec) -> str | None:
    """Why source `name`'s inputs cannot be read (the first one that does not exist, and the flag that points it
    elsewhere), or None. The real run refuses with it; a dry run lists it beside the source (`run.flow.describe`)."""
    for item in spec.inputs:
        if not Path(item).exists():
            return (f"{item}: no such file or folder (paths are relative to the current directory {Path.cwd()}); "
                    f"pass --sources.{name}.inputs='[\"DIR\"]'")
    return None


def validate(cfg: FlowConfig, dry_run: bool = False) -> None:
    """Checks beyond types: kinds, inputs, weights, the sources' own options, stage settings. With `dry_run`, a
    source whose inputs do not exist is let through (the dry run flags it in its plan); the real run refuses it."""
    import re

    from llamaforge.data import sources as data_sources

    path = cfg.path
    if not cfg.sources:
        raise UserError(f"{path}: sources: expected at least one [sources.NAME] table")
    if cfg.run.workers < 1:
        raise UserError(f"{path}: run.workers: expected a positive integer, got {cfg.run.workers}")
    for name, s in cfg.sources.items():  # before any path is built from them
        if not all(isinstance(i, str) for i in s.inputs):
            raise UserError(f"{path}: sources.{name}.inputs: expected a list of paths (strings), got {s.inputs!r}")
    with_inputs = [s for s in cfg.sources.values() if s.kind != "builtin" and s.inputs]
    relative = [i for s in with_inputs for i in s.inputs if not Path(i).is_absolute()]
    if not dry_run and len(with_inputs) > 1 and relative and all(missing_input(s.name, s) for s in with_inputs):
        # every source missing: the directory, not one source's paths (the shipped flows point at ../shared/data)
        raise UserError(f"{path}: sources: none of the inputs exist from the current directory {Path.cwd()} (e.g. "
                        f"{relative[0]}); expected to run where the flow's relative paths point (the shipped flows: "
                        "the repository root, beside ../shared/data)")
    for name, s in cfg.sources.items():
        where = f"{path}: sources.{name}"
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
            raise UserError(f"{where}: expected a name of letters, digits, '_', '.', '-'")
        if s.kind not in KINDS:
            raise UserError(f"{where}.kind: expected one of {', '.join(KINDS)}, got {s.kind!r}")
        if s.weight is not None and not (s.weight >= 0 and s.weight != float("inf")):
            raise UserError(f"{where}.weight: expected a non-negative number, got {s.weight}")
        if s.kind == "builtin":
            unknown = set(s.options) - {"part", "max_mb"}
            if s.options.get("part") not in BUILTIN_PARTS or unknown:
                raise UserError(f"{where}.options: expected {{ part = \"code\" or \"docs\", max_mb = N }}, "
                                f"got {s.options}")
            continue
        if not s.inputs:
            raise UserError(f"{where}.inputs: expected at least one file or folder")
        missing = missing_input(name, s)
        if missing and not dry_run:
            raise UserError(f"{where}.inputs: {missing}")
        if s.kind == "jsonl":
            if s.options:
                raise UserError(f"{where}.options: prepared JSONL takes no options, got {s.options}")
            continue
        accepted = [p for p in data_sources.source_options(s.kind) if p != "_"]
        for key in s.options:
            if key not in accepted:
                raise UserError(f"{where}.options.{key}: {s.kind} takes no such option; it takes: "
                                f"{', '.join(accepted) or 'none'}")
    if sum(cfg.weights().values()) <= 0:
        raise UserError(f"{path}: sources: weights: expected a positive sum")
    if cfg.tokenizer.path:
        from llamaforge.formats import TOKENIZER_NAMES

        given = Path(cfg.tokenizer.path)
        if given.suffix not in TOKENIZER_NAMES:  # no loader reads it, and a model folder could not carry it
            raise UserError(f"{path}: tokenizer.path: {given}: expected a .model, .tiktoken, .json or .bin "
                            "tokenizer file")  # (a missing file: Flow.stage_configs, before any stage runs)
    if not cfg.tokenizer.path and cfg.tokenizer.vocab_size < 260:  # 256 byte pieces + unk, bos, eos and one more
        raise UserError(f"{path}: tokenizer.vocab_size: expected at least 260 (Meta's spec has 256 byte pieces), "
                        f"got {cfg.tokenizer.vocab_size}")
    if cfg.tokenizer.sample_mb <= 0:
        raise UserError(f"{path}: tokenizer.sample_mb: expected a positive number, got {cfg.tokenizer.sample_mb}")
    if cfg.eval.limit < 0 or cfg.eval.val_batches < 0 or cfg.eval.batch_size < 1:
        raise UserError(f"{path}: eval: limit and val_batches >= 0, batch_size >= 1 expected")
    if cfg.eval.tasks:
        from llamaforge.eval.tasks import TASKS

        for t in cfg.eval.tasks:
            if t not in TASKS:
                raise UserError(f"{path}: eval.tasks: unknown task {t!r}; expected some of: {', '.join(TASKS)}")
    for fmt in cfg.export.formats:
        if fmt not in ("native", "hf", "meta", "llama2c", "gguf"):
            raise UserError(f"{path}: export.formats: unknown format {fmt!r}; expected some of: native, hf, meta, "
                            "llama2c, gguf")
    for key in cfg.train.set:
        if "." not in key:
            raise UserError(f"{path}: train.set: {key!r}: expected a recipe key as \"section.key\"")


def flow_path(name_or_path: str) -> Path:
    """A flow name shipped with the package (`demo`, `seven-sources`) or a path to a TOML file (`io.named_toml`)."""
    from llamaforge.io import named_toml

    return named_toml(name_or_path, FLOWS_DIR, "flow", "FLOW")


_SECTIONS = {"run": RunSpec, "tokenizer": TokenizerSpec, "train": TrainSpec, "eval": EvalSpec, "export": ExportSpec}


def _list_typed(dotted: str) -> bool:
    """Whether the flow key "a.b.c" is a list field (`sources.NAME.inputs`, `eval.tasks`, `export.formats`)."""
    parts = dotted.split(".")
    if parts[0] == "sources" and len(parts) == 3:
        spec = SourceSpec
    elif parts[0] in _SECTIONS and len(parts) == 2:
        spec = _SECTIONS[parts[0]]
    else:
        return False
    return {f.name: f.type for f in dataclasses.fields(spec)}.get(parts[-1]) in ("list", list)


def load_flow(name_or_path: str, overrides: list[str] = (), dry_run: bool = False) -> FlowConfig:
    """Read a flow, apply `--a.b.c=value` overrides (values read as TOML, else as bare strings; a single value for a
    list field such as `--sources.NAME.inputs=/path` is a one-element list, the element's type still checked), validate
    (`dry_run`: missing inputs are left for the dry run to flag, see `validate`)."""
    from llamaforge.train.config import parse_override

    path = flow_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    flags = {}  # "a.b.c" -> the flag that set it last
    for arg in overrides:
        section, key, value = parse_override(arg)
        if _list_typed(f"{section}.{key}") and not isinstance(value, list):
            value = [value]  # --sources.X.inputs=/path: one value is a one-element list (torchtitan/litgpt style)
        set_dotted(data, f"{section}.{key}", value, arg.split("=", 1)[0])
        flags[f"{section}.{key}"] = arg.split("=", 1)[0]
    try:
        return from_dict(data, str(path), dry_run)
    except UserError as e:
        # Every message starts "FILE: a.b.c: ..."; a value given on the command line is blamed on its flag instead
        # (the longest matching key: --train.set.optim.lr before --train.set).
        message = str(e)
        for dotted in sorted(flags, key=len, reverse=True):
            if message.startswith(f"{path}: {dotted}: "):
                raise UserError(f"{flags[dotted]}: {message[len(f'{path}: {dotted}: '):]}") from None
        raise
