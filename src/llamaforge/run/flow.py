"""`llamaforge run FLOW.toml`: every arrow of the house plan in order, in one run folder.

    prepare (per source) -> tokenizer -> tokenize (per source) -> train -> eval -> export -> report

Run folder (`run.out`):

    flow.json                the resolved config of the last run
    prepare/<source>/        cleaned JSONL shards + stats.json (the data pipeline's own resume markers inside)
    tokenizer/               tokenizer.model, trained on a sample that follows the mixture weights; sample.json
    tokens/<source>/         token shards
    train/                   the trainer's folder: checkpoints/, metrics.jsonl, loss.png, final/ (model + tokenizer)
    eval/                    results.json / results.md (tasks), val_loss.json (validation loss per source)
    export/                  hf/, model.gguf ... (each with its tokenizer), parity.json
    report/                  report.md, report.json, *.png
    .done/<stage>[.<source>].json   completion markers: the hash of the stage's config (its upstream hashes included)

A stage whose marker holds the same hash is skipped; one without a marker runs, and resumes what a killed run left
(the pipeline's per-shard markers, the trainer's checkpoints; tokenizer and token shards are written atomically).
A finished stage whose config changed is refused with one line: results made with other settings are never reused
silently. `--from STAGE` forgets that stage and the ones after it (markers and outputs) and runs them again;
`--until STAGE` stops after it. This is what torchtitan (resume from the newest checkpoint), datatrove (per-task
completion files) and litgpt (one config per run) do for their part, put end to end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

from llamaforge.errors import UserError
from llamaforge.io import atomic_file, make_dir
from llamaforge.run.config import FlowConfig, missing_input

STAGES = ("prepare", "tokenizer", "tokenize", "train", "eval", "export", "report")
# each stage's folder under the run folder
STAGE_FOLDERS = {"prepare": "prepare", "tokenizer": "tokenizer", "tokenize": "tokens", "train": "train", "eval": "eval",
                 "export": "export", "report": "report"}
ASSUMED_BYTES_PER_TOKEN = 4.0  # for estimates before a tokenizer exists (LLaMA's tokenizer: ~4 bytes of English)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _abs(paths) -> list[str]:
    return [str(Path(p).resolve()) for p in paths]


def _write_json(path: Path, obj) -> None:
    with atomic_file(path, "w") as f:
        f.write(json.dumps(obj, indent=2, default=str) + "\n")


def _diff(old, new, prefix="") -> list[str]:
    """'key: old -> new' for the leaves that differ (for the one-line refusal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _diff(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


class Flow:
    """One run of a flow config; `run(until, start)` executes the stages, `plan()` only describes them."""

    def __init__(self, cfg: FlowConfig, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, cfg.out, progress
        self.names = sorted(cfg.sources)
        self.weights = cfg.weights()

    # -- folders

    def prepared_dir(self, name: str) -> Path:
        """OUT/prepare/NAME: where the prepare stage writes source `name`'s cleaned JSONL shards and stats.json."""
        return self.out / "prepare" / name

    def prepared_files(self, name: str) -> list[Path]:
        """The documents of a source after prepare: its JSONL shards (a prepared-JSONL source: its inputs)."""
        from llamaforge.data.readers import input_files

        spec = self.cfg.sources[name]
        if spec.kind == "jsonl":
            return input_files(spec.inputs, (".jsonl", ".jsonl.gz"))
        return input_files([self.prepared_dir(name)], (".jsonl", ".jsonl.gz"))

    @property
    def tokenizer_file(self) -> Path:
        """Where the tokenizer stage puts the flow's tokenizer: `OUT/tokenizer/` under the standard name of the
        given file's type (`formats.TOKENIZER_NAMES`; the config refused any other suffix), or the trained
        SentencePiece `tokenizer.model`."""
        if self.cfg.tokenizer.path:
            from llamaforge.formats import TOKENIZER_NAMES

            return self.out / "tokenizer" / TOKENIZER_NAMES[Path(self.cfg.tokenizer.path).suffix]
        return self.out / "tokenizer" / "tokenizer.model"

    def source_options(self, name: str) -> dict:
        """A source's `prepare` options as the flow runs it. CommonCrawl's last two paper steps (the CCNet LM
        buckets and the Wikipedia-reference classifier) are trained on Wikipedia, as CCNet does per language: when
        the flow has a Wikipedia source and the CommonCrawl source names neither `wikipedia` nor `models`, that
        source's dump is passed on, so every paper step runs by default (see data/sources/commoncrawl.py)."""
        spec = self.cfg.sources[name]
        options = dict(spec.options)
        if spec.kind == "commoncrawl" and "wikipedia" not in options and "models" not in options:
            wiki = [s for s in self.cfg.sources.values() if s.kind == "wikipedia"]
            if wiki:
                options["wikipedia"] = [p for s in wiki for p in _wikipedia_files(s)]
        return options

    # -- stage configs: what each marker's hash covers (upstream hashes included, so a change flows downstream)

    def stage_configs(self) -> dict[str, dict]:
        """Per stage key (prepare.NAME, tokenizer, tokenize.NAME, train, eval, export), what its completion marker's
        hash covers: its own settings plus the hashes of the stages it reads, so a change upstream marks everything
        downstream as changed. A given tokenizer is covered by its sha256. Raises UserError when `tokenizer.path` is
        not a file."""
        c = self.cfg
        confs: dict[str, dict] = {}
        for n in self.names:
            s = c.sources[n]
            confs[f"prepare.{n}"] = {"kind": s.kind, "inputs": _abs(s.inputs), "options": self.source_options(n)}
        prepared = {n: _hash(confs[f"prepare.{n}"]) for n in self.names}
        if c.tokenizer.path:
            from llamaforge.data.shards import file_sha256

            tok_path = Path(c.tokenizer.path)
            if not tok_path.is_file():
                raise UserError(f"{c.path}: tokenizer.path: {tok_path}: no such file")
            confs["tokenizer"] = {"path": str(tok_path.resolve()), "sha256": file_sha256(tok_path)}
        else:
            confs["tokenizer"] = {"vocab_size": c.tokenizer.vocab_size, "sample_mb": c.tokenizer.sample_mb,
                                  "seed": c.tokenizer.seed, "weights": self.weights, "prepared": prepared}
        tok = _hash(confs["tokenizer"])
        for n in self.names:
            confs[f"tokenize.{n}"] = {"tokenizer": tok, "prepared": prepared[n]}
        confs["train"] = {"recipe": c.train.recipe, "set": c.train.set, "weights": self.weights,
                          "tokens": {n: _hash(confs[f"tokenize.{n}"]) for n in self.names}}
        train = _hash(confs["train"])
        confs["eval"] = {"tasks": c.eval.tasks, "data_dir": str(Path(c.eval.data_dir).resolve()),
                         "limit": c.eval.limit, "val_batches": c.eval.val_batches, "train": train}
        confs["export"] = {"formats": c.export.formats, "train": train}
        return confs

    def marker(self, key: str) -> Path:
        """The completion marker of stage `key`: OUT/.done/KEY.json."""
        return self.out / ".done" / f"{key}.json"

    def status(self, key: str, conf: dict) -> str:
        """'done' (same config), 'changed' (finished with another config) or 'todo'."""
        m = self.marker(key)
        if not m.is_file():
            return "todo"
        saved = json.loads(m.read_text())
        return "done" if saved.get("hash") == _hash(conf) else "changed"

    def check_unchanged(self, key: str, conf: dict) -> bool:
        """True when the stage is done with this config; a changed config of a finished stage is a UserError."""
        st = self.status(key, conf)
        if st == "changed":
            saved = json.loads(self.marker(key).read_text()).get("config", {})
            changes = "; ".join(_diff(saved, conf)[:3]) or "its inputs changed"
            stage = key.split(".")[0]
            raise UserError(f"{self.cfg.path}: {key}: {self.out} holds this stage finished with another config "
                            f"({changes}); use another run.out, or --from {stage} to redo it and the stages after it")
        return st == "done"

    def mark(self, key: str, conf: dict, **info) -> None:
        """Record stage `key` as finished with `conf` (its hash, the config itself for the diff a later change shows,
        the time and `info`), written atomically."""
        _write_json(self.marker(key), {"hash": _hash(conf), "config": conf, "finished": time.time(), **info})

    def forget_from(self, stage: str) -> None:
        """--from STAGE: remove the markers and outputs of STAGE and every stage after it."""
        later = STAGES[STAGES.index(stage):]
        for s in later:
            for m in (self.out / ".done").glob(f"{s}*.json"):
                if m.stem == s or m.stem.startswith(f"{s}."):
                    m.unlink()
            shutil.rmtree(self.out / STAGE_FOLDERS[s], ignore_errors=True)

    # -- the run

    def run(self, until: str = "report", start: str | None = None) -> dict:
        """Run the stages in order up to `until`, skipping those finished with the same config; with `start`, first
        remove the markers and outputs of that stage and every later one. Every check that can fail (stage order,
        recipe keys, a finished stage whose config changed) runs before any stage does. Returns {"out": run folder};
        raises UserError for those mistakes."""
        if start is not None:
            if STAGES.index(start) > STAGES.index(until):
                raise UserError(f"--from {start}: comes after --until {until}")
            self.forget_from(start)
        confs = self.stage_configs()
        if STAGES.index(until) >= STAGES.index("train"):
            self.train_config()  # a bad recipe key is found now, not after an hour of prepare
        for key, conf in confs.items():  # refuse before doing any work, not after an hour of prepare
            if STAGES.index(key.split(".")[0]) <= STAGES.index(until):
                self.check_unchanged(key, conf)
        self.check_before_work(confs, until)
        from llamaforge.data.sources import first_missing

        created = first_missing(self.out)
        try:
            make_dir(self.out)
            _write_json(self.out / "flow.json", self.cfg.to_dict())
            t0 = time.perf_counter()
            for stage in STAGES[: STAGES.index(until) + 1]:
                print(f"\n== {stage}", flush=True)
                t = time.perf_counter()
                folder = self.out / STAGE_FOLDERS[stage]
                new_folder = not folder.exists()
                try:
                    getattr(self, f"stage_{stage}")(confs)
                except UserError:
                    if new_folder:  # the failed stage's own folder, when it made it (an empty tokenizer/ was left)
                        shutil.rmtree(folder, ignore_errors=True)
                    raise
                print(f"({stage}: {time.perf_counter() - t:.0f}s)", flush=True)
        except UserError:
            # a run folder this run created and in which no stage finished is removed again; finished stages
            # stay (a rerun after the fix resumes from them, as after a kill)
            if created is not None and not any((self.out / ".done").glob("*.json")):
                shutil.rmtree(created, ignore_errors=True)
            raise
        print(f"\nflow done in {(time.perf_counter() - t0) / 60:.1f} minutes; run folder {self.out}")
        return {"out": str(self.out)}

    def check_before_work(self, confs: dict, until: str) -> None:
        """What can be checked before any stage, so that a mistake is not found after hours of work: every source
        not prepared yet gets its `prepare` checks (files of another kind, bad options:
        `data.sources.check_inputs`), `tokenizer.path` must load, `eval.data_dir` must be a folder. Raises
        UserError."""
        from llamaforge.data.sources import check_inputs

        c = self.cfg
        for n in self.names:
            spec = c.sources[n]
            if spec.kind not in ("builtin", "jsonl") and not self.check_unchanged(f"prepare.{n}", confs[f"prepare.{n}"]):
                check_inputs(spec.kind, spec.inputs, **self.source_options(n))
        if c.tokenizer.path and STAGES.index(until) >= STAGES.index("tokenizer"):
            from llamaforge.tokenizer import load_tokenizer

            try:
                load_tokenizer(c.tokenizer.path)
            except UserError as e:
                raise UserError(f"{c.path}: tokenizer.path: {e}") from None
        if c.eval.tasks and STAGES.index(until) >= STAGES.index("eval") and not Path(c.eval.data_dir).is_dir():
            raise UserError(f"{c.path}: eval.data_dir: {c.eval.data_dir}: no such folder (paths are relative to the "
                            f"current directory {Path.cwd()}); expected the folder holding the tasks' data, e.g. "
                            "../shared/data")

    # -- stages

    def stage_prepare(self, confs: dict) -> None:
        """Prepare each source not yet done: a paper source through its pipeline, the built-in corpus written as one
        JSONL, prepared JSONL counted as it is; prints each source's stage table."""
        from llamaforge.data.pipeline import format_stats_table

        for n in self.names:
            key = f"prepare.{n}"
            if self.check_unchanged(key, confs[key]):
                print(f"{n}: done before")
                continue
            spec = self.cfg.sources[n]
            stats = self._prepare_one(n, spec)
            print(f"{n} ({spec.kind}):\n{format_stats_table(stats)}", flush=True)
            self.mark(key, confs[key])

    def _prepare_one(self, name: str, spec) -> dict:
        out = self.prepared_dir(name)
        if spec.kind == "builtin":
            from llamaforge.data import builtin_corpus as bc

            part = spec.options["part"]
            max_mb = spec.options.get("max_mb")
            cap = None if max_mb is None else int(float(max_mb) * 1e6)
            drops: dict = {}
            docs = bc.code_documents(cap, drops=drops) if part == "code" else bc.docs_documents(cap)
            written = bc.write_jsonl(out / f"{part}.jsonl", docs)
            stage = {"docs_in": written["docs"] + sum(drops.values()), "docs_out": written["docs"],
                     "bytes_in": written["bytes"], "bytes_out": written["bytes"], "drops": drops}
            stats = {"source": name, "shards": 1, "inputs": [str(bc.stdlib_root())],
                     "stages": {f"builtin_{part}": stage}, "outputs": [f"{part}.jsonl"]}
            _write_json(out / "stats.json", stats)
            return stats
        if spec.kind == "jsonl":
            from llamaforge.io import read_jsonl

            files = self.prepared_files(name)
            n_docs = n_bytes = 0
            for f in files:
                for _, doc in read_jsonl(f):
                    n_docs += 1
                    n_bytes += len(doc["text"].encode("utf-8"))
            stage = {"docs_in": n_docs, "docs_out": n_docs, "bytes_in": n_bytes, "bytes_out": n_bytes, "drops": {}}
            stats = {"source": name, "shards": len(files), "inputs": [str(f) for f in files],
                     "stages": {"read": stage}, "outputs": [str(f) for f in files]}
            _write_json(out / "stats.json", stats)
            return stats
        from llamaforge.data.sources import prepare

        return prepare(spec.kind, spec.inputs, str(out), workers=self.cfg.run.workers, progress=self.progress,
                       **self.source_options(name))

    def stage_tokenizer(self, confs: dict) -> None:
        """Copy `tokenizer.path` into OUT/tokenizer under its standard name, or train a SentencePiece tokenizer with
        Meta's spec on a sample that follows the mixture weights (`weighted_sample`), recording the sample's make-up
        in sample.json."""
        if self.check_unchanged("tokenizer", confs["tokenizer"]):
            print(f"{self.tokenizer_file}: done before")
            return
        c = self.cfg.tokenizer
        folder = self.out / "tokenizer"
        folder.mkdir(parents=True, exist_ok=True)
        if c.path:
            from llamaforge.formats import copy_tokenizer

            path = copy_tokenizer(c.path, folder)
            _write_json(folder / "sample.json", {"given": str(Path(c.path).resolve())})
            print(f"using {c.path} -> {path}")
        else:
            from llamaforge.data.tokenizer_training import train_on_sentences, weighted_sample

            files = {n: self.prepared_files(n) for n in self.names}
            sample, stats = weighted_sample(files, self.weights, int(c.sample_mb * 1e6), seed=c.seed)
            for n, s in stats.items():
                print(f"{n}: weight {s['weight']:.3f}, {s['bytes_sampled'] / 1e6:.2f} MB of "
                      f"{s['bytes_available'] / 1e6:.2f} MB in the tokenizer's sample")
            path = train_on_sentences(sample, c.vocab_size, folder / "tokenizer")
            _write_json(folder / "sample.json", stats)
            print(f"wrote {path} (vocab {c.vocab_size}, Meta's trainer spec)")
        self.mark("tokenizer", confs["tokenizer"])

    def stage_tokenize(self, confs: dict) -> None:
        """Tokenize each source's prepared documents into OUT/tokens/NAME with the flow's tokenizer (skipping finished
        ones), and print each shard's documents, tokens and bytes per token."""
        from llamaforge.data.shards import HEADER, tokenize

        for n in self.names:
            key = f"tokenize.{n}"
            if not self.check_unchanged(key, confs[key]):
                tokenize(self.prepared_files(n), self.tokenizer_file, self.out / "tokens", source=n,
                         workers=self.cfg.run.workers, progress=self.progress)
                self.mark(key, confs[key])
            h = json.loads((self.out / "tokens" / n / HEADER).read_text())
            print(f"{n}: {h['n_docs']:,} documents, {h['n_tokens']:,} tokens "
                  f"({h['n_bytes'] / h['n_tokens']:.2f} bytes/token)")

    def train_config(self):
        """The training config: the recipe, the flow's `train.set`, and the data this flow made."""
        from llamaforge.tokenizer import load_tokenizer
        from llamaforge.train.config import load_config, set_key, validate

        c = self.cfg
        tcfg = load_config(c.train.recipe)
        for key, value in c.train.set.items():
            section, field = key.split(".", 1)
            set_key(tcfg, section, field, value, f"{c.path}: train.set.{key}")
        tcfg.data.kind = "shards"
        tcfg.data.sources = {n: str(self.out / "tokens" / n) for n in self.names}
        tcfg.data.weights = dict(self.weights)
        tcfg.data.tokenizer = str(self.tokenizer_file)
        if self.tokenizer_file.is_file():
            tcfg.model.overrides["vocab_size"] = load_tokenizer(self.tokenizer_file).vocab_size
        elif not c.tokenizer.path:
            tcfg.model.overrides["vocab_size"] = c.tokenizer.vocab_size
        validate(tcfg, f"{c.path}: train")
        return tcfg

    def stage_train(self, confs: dict) -> None:
        """Train with `train_config()` into OUT/train (resuming from the newest checkpoint of a killed run), the
        `[eval]` section of the recipe as the evaluation callback; writes train/summary.json. `run --no-progress`
        also turns off the training bar."""
        from llamaforge.train import train

        if self.check_unchanged("train", confs["train"]):
            print(f"{self.out / 'train' / 'final'}: done before")
            return
        from llamaforge.eval import evaluator_from_section  # [eval] of the train config: Figure-2 scores

        cfg = self.train_config()
        if not self.progress:  # `run --no-progress` covers the training bar too (not part of the stage's hash)
            cfg.metrics.progress = False
        on_eval = evaluator_from_section(cfg.eval, cfg.data.tokenizer)
        summary = train(cfg, self.out / "train", resume="auto", on_eval=on_eval)
        _write_json(self.out / "train" / "summary.json", dataclasses.asdict(summary))
        self.mark("train", confs["train"])

    def stage_eval(self, confs: dict) -> None:
        """Validation loss per source and the listed tasks on OUT/train/final (`run.evaluate.evaluate_flow`)."""
        if self.check_unchanged("eval", confs["eval"]):
            print(f"{self.out / 'eval'}: done before")
            return
        from llamaforge.run.evaluate import evaluate_flow

        evaluate_flow(self)
        self.mark("eval", confs["eval"])

    def stage_export(self, confs: dict) -> None:
        """Write each export format with the tokenizer and check it against the native model
        (`run.evaluate.export_flow`); a failed parity check is a UserError."""
        if self.check_unchanged("export", confs["export"]):
            print(f"{self.out / 'export'}: done before")
            return
        from llamaforge.run.evaluate import export_flow

        export_flow(self)
        self.mark("export", confs["export"])

    def stage_report(self, confs: dict) -> None:
        """Write OUT/report (report.md, report.json and the plots) from what the stages left, and print its path."""
        from llamaforge.run.report import write_report

        path = write_report(self)
        print(f"report: {path}")


def _refused_inputs(flow: Flow, name: str) -> str | None:
    """Why `prepare` would refuse source `name`'s inputs or options (`data.sources.check_inputs`), or None."""
    from llamaforge.data.sources import check_inputs

    spec = flow.cfg.sources[name]
    if spec.kind in ("builtin", "jsonl"):
        return None
    try:
        check_inputs(spec.kind, spec.inputs, **flow.source_options(name))
    except UserError as e:
        return str(e)
    return None


def describe(flow: Flow, until: str = "report", start: str | None = None) -> str:
    """`--dry-run`: the inputs found per source, each stage's state, the estimated tokens and steps, the mixture
    plan. Reads only (input listings, markers, shard headers); writes nothing."""
    from llamaforge.data.mixture import TABLE1, format_plan, plan_mixture

    cfg, lines = flow.cfg, []
    lines.append(f"flow {cfg.path} -> {flow.out}")
    lines.append("\ninputs found:")
    available: dict[str, int] = {}
    for n in flow.names:
        spec = cfg.sources[n]
        header = flow.out / "tokens" / n / "header.json"
        stats = flow.prepared_dir(n) / "stats.json"
        if spec.kind == "builtin":
            from llamaforge.data.builtin_corpus import stdlib_root

            found = f"the standard library at {stdlib_root()} ({spec.options['part']})"
            raw = None if spec.options.get("max_mb") is None else int(float(spec.options["max_mb"]) * 1e6)
        elif missing_input(n, spec):
            lines.append(f"  {n:<14} {spec.kind:<13} NO INPUTS: {missing_input(n, spec)} (the run refuses)")
            continue
        elif (wrong := _refused_inputs(flow, n)) is not None:
            lines.append(f"  {n:<14} {spec.kind:<13} WRONG INPUTS: {wrong} (the run refuses)")
            continue
        else:
            files = _input_files(spec)
            raw = sum(Path(f).stat().st_size if Path(f).is_file() else _folder_size(Path(f)) for f in files)
            found = f"{len(files)} shard(s), {raw / 1e6:.1f} MB raw"
        if header.is_file():
            h = json.loads(header.read_text())
            available[n] = h["n_tokens"] + 2 * h["n_docs"]
            est = f"{available[n]:,} tokens (tokenized)"
        elif stats.is_file():
            s = json.loads(stats.read_text())
            out_bytes = list(s["stages"].values())[-1]["bytes_out"]
            available[n] = int(out_bytes / ASSUMED_BYTES_PER_TOKEN)
            est = f"~{available[n]:,} tokens ({out_bytes / 1e6:.1f} MB prepared / {ASSUMED_BYTES_PER_TOKEN:g} bytes/token)"
        elif raw is None:
            est = "size known after prepare (no max_mb)"
        else:
            available[n] = int(raw / ASSUMED_BYTES_PER_TOKEN)
            if any(_compressed(f) for f in files):  # a 1.7 MB .bz2 dump is ~6 MB of text: no upper bound here
                est = (f"~{available[n]:,} tokens (compressed bytes / {ASSUMED_BYTES_PER_TOKEN:g}: the text is "
                       "larger; prepare drops some)")
            else:
                est = f"at most ~{available[n]:,} tokens (raw bytes / {ASSUMED_BYTES_PER_TOKEN:g}; prepare drops some)"
        lines.append(f"  {n:<14} {spec.kind:<13} {found}; {est}")
    confs = flow.stage_configs()
    lines.append("\nstages:")
    for stage in STAGES:
        if STAGES.index(stage) > STAGES.index(until):
            lines.append(f"  {stage:<10} not run (--until {until})")
            continue
        keys = [k for k in confs if k == stage or k.startswith(f"{stage}.")]
        if start is not None and STAGES.index(stage) >= STAGES.index(start):
            state = "redo (--from)"
        elif stage == "report":
            state = "run"
        else:
            states = [flow.status(k, confs[k]) for k in keys]
            state = ("changed: refused (use --from or another run.out)" if "changed" in states
                     else "done: skipped" if all(s == "done" for s in states) else "to run")
        lines.append(f"  {stage:<10} {state}")
    try:
        tcfg = flow.train_config()
    except UserError as e:
        if STAGES.index(until) >= STAGES.index("train"):
            raise  # the run would refuse it before any work (`Flow.run`): so does its dry run, with exit 2
        lines.append(f"\ntraining: not planned: {e}")
        return "\n".join(lines)
    try:
        t = tcfg.training
        total = t.steps * t.batch_tokens // tcfg.data.seq_len * (tcfg.data.seq_len + 1)
        lines.append(f"\ntraining: {t.steps:,} steps x {t.batch_tokens:,} tokens = {t.steps * t.batch_tokens:,} "
                     f"tokens (recipe {cfg.train.recipe}, preset {tcfg.model.preset})")
        unknown = [n for n in flow.names if n not in available]
        if unknown:
            lines.append(f"mixture plan: after prepare (size unknown for {', '.join(unknown)})")
        else:
            rows, warnings = plan_mixture(available, flow.weights, total,
                                          {n: (TABLE1.get(cfg.sources[n].kind) or {}).get("epochs")
                                           for n in flow.names})
            lines.append("mixture plan (estimated until tokenized):")
            lines.append(format_plan(rows, warnings))
    except UserError as e:
        lines.append(f"\ntraining: not planned: {e}")
    return "\n".join(lines)


def _wikipedia_files(spec) -> list[str]:
    """A Wikipedia source's dump files as its own input rules find them (a folder of split parts included); the
    paths as given when they cannot be listed (the prepare stage then says what is wrong)."""
    try:
        return [str(Path(f).resolve()) for f in _input_files(spec)]
    except UserError:
        return _abs(spec.inputs)


def _input_files(spec) -> list[str]:
    """The shards `prepare` would read for a source (its own input rules), or the JSONL files given."""
    if spec.kind == "jsonl":
        from llamaforge.data.readers import input_files

        return [str(f) for f in input_files(spec.inputs, (".jsonl", ".jsonl.gz"))]
    from llamaforge.data.sources import build_source

    return build_source(spec.kind, spec.inputs, **spec.options).shards


def _compressed(path) -> bool:
    """Whether `path` (a file, or any file in a folder) is gzip / bz2 / xz compressed, by magic bytes."""
    p = Path(path)
    for f in ([p] if p.is_file() else [x for x in p.rglob("*") if x.is_file()] if p.is_dir() else []):
        with open(f, "rb") as fh:
            if fh.read(6).startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ")):
                return True
    return False


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0
