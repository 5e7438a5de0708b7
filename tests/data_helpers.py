"""Helpers shared by the data tests: run a source through `prepare` and read back the documents it wrote; cut the
staged Common Crawl sample into small input shards."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from conftest import shared_path

from llamaforge.data.shards import HEADER
from llamaforge.data.sources import prepare
from llamaforge.errors import UserError

# real CCNet / dolma documents in ../shared/data
CC_SAMPLES = ["commoncrawl/dolma-tests/multiple_files_cc_en_head-0091.jsonl.gz",
              "commoncrawl/dolma-tests/multiple_files_cc_en_head-0174.jsonl.gz",
              "commoncrawl/dolma-tests/provided_documents_000.json.gz"]


def read_jsonl_gz(path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def output_docs(out) -> list[dict]:
    """Every document `prepare` wrote to `out`, in shard order."""
    return [doc for p in sorted(Path(out).glob("*.jsonl.gz")) for doc in read_jsonl_gz(p)]


def run_source(source: str, inputs, out, **options) -> tuple[dict, list[dict]]:
    """`prepare` one source without a progress bar; returns its stats and the documents it wrote."""
    stats = prepare(source, [str(p) for p in inputs], str(out), progress=False, **options)
    return stats, output_docs(out)


def cc_input_shards(folder: Path, per_shard: int = 4) -> list[str]:
    """The real CC documents re-cut into JSONL shards of `per_shard` documents, so a run has several tasks."""
    docs = [d for rel in CC_SAMPLES for d in read_jsonl_gz(shared_path(rel))]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(0, len(docs), per_shard):
        p = folder / f"part-{i // per_shard:03d}.jsonl"
        p.write_text("".join(json.dumps({"text": d["text"], "url": d["id"]}) + "\n" for d in docs[i:i + per_shard]))
        paths.append(str(p))
    return paths


def source_paths(root) -> dict[str, Path]:
    """{source name: folder} for every token shard folder directly under `root` (as written by `tokenize`)."""
    root = Path(root)
    # names starting with "." are temporary folders of an interrupted `tokenize`
    shard_dirs = sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []
    found = {p.name: p for p in shard_dirs if (p / HEADER).is_file()}
    if not found:
        raise UserError(f"{root}: no token shard folders (with header.json) found")
    return found


def write_dump_slice(dump: str, pages: int, dst: Path, extra_pages=()) -> Path:
    """A bz2 MediaWiki dump at `dst`: the header and first `pages` pages of the staged dump `dump` (a path under
    ../shared/data), then `extra_pages` (raw `<page>` XML), closed by `</mediawiki>`."""
    import bz2

    out, n = [], 0
    with bz2.open(shared_path(dump), "rt", encoding="utf-8") as f:
        for line in f:
            out.append(line)
            if line.strip() == "</page>":
                n += 1
                if n == pages:
                    break
    out += [*extra_pages, "</mediawiki>\n"]
    dst.write_bytes(bz2.compress("".join(out).encode("utf-8")))
    return dst
