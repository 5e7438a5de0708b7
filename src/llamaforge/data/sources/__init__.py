"""The paper's seven data sources. Each module has `build(inputs, **options) -> Source` (shards, reader, stages).

    from llamaforge.data.sources import build_source
    from llamaforge.data import pipeline
    pipeline.run(build_source("books", ["gutenberg/"]), "out/books", workers=2)

or in one call: `prepare("books", ["gutenberg/"], "out/books", workers=2)`.
"""

from __future__ import annotations

import importlib

from llamaforge.data.pipeline import Source
from llamaforge.errors import UserError

SOURCES = ("commoncrawl", "c4", "github", "wikipedia", "books", "arxiv", "stackexchange")


def build_source(name: str, inputs: list[str], **options) -> Source:
    """The `Source` for one of `SOURCES`; options are the source module's `build` keywords."""
    if name not in SOURCES:
        raise UserError(f"SOURCE: expected one of {', '.join(SOURCES)}, got {name!r}")
    module = importlib.import_module(f"llamaforge.data.sources.{name}")
    return module.build(list(inputs), **options)


def prepare(source: str, inputs: list[str], out: str, workers: int = 1, executor: str = "local",
            ray_address: str | None = None, progress: bool = True, overwrite: bool = False,
            keep_work: bool = False, keep_dropped: int = 20, **options) -> dict:
    """Clean `inputs` of one source into gzip JSONL shards under `out`; returns the stats written to
    `out/stats.json`. A rerun into the same `out` resumes (finished shards are skipped) unless `overwrite`.
    Up to `keep_dropped` dropped documents per stage and reason go to `out/dropped/STAGE/REASON.jsonl` (0: none)."""
    from llamaforge.data import pipeline

    if overwrite:
        pipeline.clean(out)
    src = build_source(source, inputs, **options)
    return pipeline.run(src, out, workers=workers, executor=executor, ray_address=ray_address,
                        progress=progress, keep_work=keep_work, keep_dropped=keep_dropped)
