"""The paper's seven data sources. Each module has `build(inputs, **options) -> Source` (shards, reader, stages).

    from llamaforge.data.sources import build_source
    from llamaforge.data import pipeline
    pipeline.run(build_source("books", ["gutenberg/"]), "out/books", workers=2)

or in one call: `prepare("books", ["gutenberg/"], "out/books", workers=2)`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path

from llamaforge.data.pipeline import Source
from llamaforge.errors import UserError

SOURCES = ("commoncrawl", "c4", "github", "wikipedia", "books", "arxiv", "stackexchange")


def _check_name(name: str) -> None:
    if name not in SOURCES:
        raise UserError(f"SOURCE: expected one of {', '.join(SOURCES)}, got {name!r}")


def source_options(name: str) -> tuple[str, ...]:
    """The options source `name` takes: the keywords of its module's `build(inputs, ...)`."""
    _check_name(name)
    build = importlib.import_module(f"llamaforge.data.sources.{name}").build
    return tuple(p for p in inspect.signature(build).parameters if p != "inputs")


def check_options(name: str, options, spell: Callable[[str], str] = str) -> None:
    """Refuse an option that source `name` does not take, in one line naming the option (as `spell` writes it:
    the CLI passes `--lang-threshold`, the API keeps `lang_threshold`) and the sources that do take it."""
    takes = source_options(name)
    for key in options:
        if key not in takes:
            others = [s for s in SOURCES if key in source_options(s)]
            which = f"only {', '.join(others)} take{'s' if len(others) == 1 else ''} it" if others \
                else "no source takes it"
            raise UserError(f"{spell(key)}: the {name} source does not take this option; {which}")


def build_source(name: str, inputs: list[str], **options) -> Source:
    """The `Source` for one of `SOURCES`; options are the source module's `build` keywords.

    Raises UserError for an unknown source or an option that source does not take (see `check_options`)."""
    check_options(name, options)
    module = importlib.import_module(f"llamaforge.data.sources.{name}")
    return module.build(list(inputs), **options)


def check_inputs(name: str, inputs: list[str], **options) -> None:
    """Every check `build_source` makes on `inputs` and `options` (missing files, files of another kind, bad
    option values), without its work: a source module's `check(inputs, **options)` when it has one (commoncrawl:
    its build trains models), else its `build`. Raises UserError; `run` calls it for every source before any
    stage, so a wrong file in the last source is not found after the first one was prepared."""
    check_options(name, options)
    module = importlib.import_module(f"llamaforge.data.sources.{name}")
    getattr(module, "check", module.build)(list(inputs), **options)


def first_missing(path) -> Path | None:
    """The topmost folder of `path` (itself included) that does not exist yet: what a writer that creates `path`
    creates, and so what it removes again when it fails (None when `path` exists)."""
    p, top = Path(path).absolute(), None
    while not p.exists():
        p, top = p.parent, p
    return top


def prepare(source: str, inputs: list[str], out: str, workers: int = 1, executor: str = "local",
            ray_address: str | None = None, progress: bool = True, overwrite: bool = False,
            keep_work: bool = False, keep_dropped: int = 20, max_doc_bytes: int | None = None, **options) -> dict:
    """Clean `inputs` of one source into gzip JSONL shards under `out`; returns the stats written to
    `out/stats.json`. A rerun into the same `out` resumes (finished shards are skipped) unless `overwrite`.
    Up to `keep_dropped` dropped documents per stage and reason go to `out/dropped/STAGE/REASON.jsonl` (0: none).
    On a UserError the folders this call created are removed again (a killed run keeps its work, to resume)."""
    import shutil

    from llamaforge.data import pipeline

    created = first_missing(out)
    try:
        if overwrite:
            pipeline.clean(out)
        if "work_dir" in source_options(source):  # where a source builds its models once (commoncrawl: OUT/models)
            options = {"work_dir": str(out), **options}
        src = build_source(source, inputs, **options)
        return pipeline.run(src, out, workers=workers, executor=executor, ray_address=ray_address,
                            progress=progress, keep_work=keep_work, keep_dropped=keep_dropped,
                            **({"max_doc_bytes": max_doc_bytes} if max_doc_bytes is not None else {}))
    except UserError:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
