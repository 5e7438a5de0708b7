"""Documents per second per core of the CommonCrawl (CCNet) and C4 stages, against datatrove where it can run.

    .venv/bin/python bench/data_filters.py [--repeat 40]

Input: the real Common Crawl samples in ../shared/data/commoncrawl (CCNet / dolma JSONL shards and WARC captures
turned into text by our reader), repeated `--repeat` times. Everything runs in this one process (one core).

- C4 rules: `llamaforge.data.sources.c4.clean_page` vs datatrove's `C4QualityFilter` with TFDS's numbers
  (min_words_per_line=5, min_num_sentences=3). Not the same sentence splitter: datatrove uses spaCy's, we count
  sentence-final punctuation (NLTK punkt, what TFDS used, is a download).
- CommonCrawl: CCNet line dedup (observe + resolve + apply), py3langid / resiliparse language id, and WARC reading +
  HTML-to-text. datatrove's equivalents need downloads (fastText lid.176 for `LanguageFilter`) or have no
  counterpart (CCNet's group line dedup), so those are absolute figures.
datatrove is a bench-only extra (`pip install datatrove spacy`); without it only our figures are printed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "commoncrawl"
JSONL = ["dolma-tests/multiple_files_cc_en_head-0091.jsonl.gz", "dolma-tests/multiple_files_cc_en_head-0174.jsonl.gz",
         "dolma-tests/provided_documents_000.json.gz"]
WARCS = ["dolma-tests/warc_sample-0000.warc.gz", "dolma-tests/warc_sample-0001.warc.gz"]


def load_texts() -> list[str]:
    from llamaforge.data.sources.commoncrawl import CCReader

    texts = []
    for rel in JSONL:
        with gzip.open(DATA / rel, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    for rel in WARCS:
        texts += [d["text"] for d in CCReader()(str(DATA / rel), Counter())]
    return texts


def rate(fn, docs) -> float:
    """Documents per second of `fn` over `docs` (best of two passes)."""
    best = 0.0
    for _ in range(2):
        t = time.perf_counter()
        fn(docs)
        best = max(best, len(docs) / (time.perf_counter() - t))
    return best


def ours_c4(texts):
    from llamaforge.data.sources.c4 import clean_page

    for t in texts:
        clean_page(t)


def datatrove_c4_factory():
    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter

    f = C4QualityFilter(min_num_sentences=3, min_words_per_line=5)

    def run(texts):
        for i, t in enumerate(texts):
            f.filter(Document(text=t, id=str(i)))
    return run


def ours_line_dedup(texts):
    from llamaforge.data.filters.dedup import LineDedup

    stage = LineDedup(mode="ccnet", group_size=None)
    for i, t in enumerate(texts):
        stage.observe(i, {"text": t, "meta": {}})
    (decision,) = stage.resolve([stage.summary()])
    for i, t in enumerate(texts):
        stage.apply(i, {"text": t, "meta": {}}, decision)


def langid_factory(backend: str):
    from llamaforge.data.filters.langid import LanguageFilter

    f = LanguageFilter(["en"], 0.5, backend)
    f.setup()

    def run(texts):
        for t in texts:
            f({"text": t, "meta": {}})
    return run


def ours_warc(copies: int) -> float:
    """WARC records -> text documents per second (fastwarc + resiliparse), reading `copies` of each file."""
    from llamaforge.data.sources.commoncrawl import CCReader

    n, t = 0, time.perf_counter()
    for _ in range(copies):
        for rel in WARCS:
            n += sum(1 for _ in CCReader()(str(DATA / rel), Counter()))
    return n / (time.perf_counter() - t)


def end_to_end(copies: int) -> float:
    """`prepare commoncrawl` (read + min_length + line dedup + langid + write) on WARC copies, one process."""
    from llamaforge.data.sources import prepare

    tmp = Path(tempfile.mkdtemp())
    try:
        inputs = []
        for c in range(copies):
            for rel in WARCS:
                p = tmp / "in" / f"{c:03d}-{Path(rel).name}"
                p.parent.mkdir(exist_ok=True)
                shutil.copy(DATA / rel, p)
                inputs.append(str(p))
        t = time.perf_counter()
        # each shard deduplicated on its own, so every copy does the same work
        stats = prepare("commoncrawl", inputs, str(tmp / "out"), progress=False, dedup_group=1)
        return stats["stages"]["read"]["docs_out"] / (time.perf_counter() - t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=40)
    args = ap.parse_args()
    base = load_texts()
    texts = base * args.repeat
    print(f"{len(texts)} documents ({len(base)} distinct real CC pages x {args.repeat}), "
          f"mean {sum(map(len, base)) // len(base)} chars; {platform.processor() or platform.machine()}, 1 process")

    rows = []
    try:
        from importlib.metadata import version

        dt = datatrove_c4_factory()
        dt_version = f"datatrove {version('datatrove')}, spacy {version('spacy')}"
    except ImportError as e:
        dt, dt_version = None, f"unavailable ({e})"
    c4_docs = texts[: len(base) * 4]  # datatrove's spaCy sentence splitting is slow: a smaller slice, same for both
    ours = rate(ours_c4, c4_docs)
    theirs = rate(dt, c4_docs) if dt else None
    rows.append(("C4 rules (TFDS numbers)", ours, theirs))
    rows.append(("CCNet line dedup (observe+resolve+apply)", rate(ours_line_dedup, texts), None))
    rows.append(("language id, py3langid", rate(langid_factory("py3langid"), texts[: len(base) * 4]), None))
    rows.append(("language id, resiliparse", rate(langid_factory("resiliparse"), texts), None))
    rows.append(("WARC -> text (fastwarc + resiliparse)", ours_warc(4), None))
    rows.append(("prepare commoncrawl end to end (WARC)", end_to_end(4), None))

    print(f"peer: {dt_version}")
    print(f"{'stage':45s} {'ours docs/s/core':>17s} {'datatrove':>12s} {'ratio':>7s}")
    for name, a, b in rows:
        b_s = f"{b:12.0f}" if b else f"{'-':>12s}"
        r_s = f"{a / b:7.2f}" if b else f"{'-':>7s}"
        print(f"{name:45s} {a:17.0f} {b_s} {r_s}")


if __name__ == "__main__":
    main()
