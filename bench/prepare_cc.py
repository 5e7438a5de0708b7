"""`prepare commoncrawl` end to end, every paper step on, against datatrove's nearest pipeline; LID and LM speeds.

    .venv/bin/python bench/prepare_cc.py [--docs 5000] [--workers 1,2] [--repeats 3]

Input: the shared Common Crawl pages (../shared/data/commoncrawl: 2 WARC captures, 1 WET, 3 CCNet/dolma JSONL
shards; 68 documents), copied until there are >= `--docs` documents. Each copy of the six files is its own group
of shards for the line dedup (`--dedup-group 6`), so a copy is deduplicated against itself only, as RedPajama's
per-shard run (`--hash_in_mem 1`) did: otherwise every line of a copy is a repeat and CCNet drops it all.
Models (SentencePiece + 5-gram KN + cut-offs + reference classifier) are built once beforehand from the shared
Wikipedia dump, and timed separately.

Measured, each in a fresh process, `--repeats` times (median and min-max are reported):
- llamaforge: `prepare commoncrawl` (read WARC/WET/JSONL, HTTP decoding + resiliparse extraction, min length,
  CCNet line dedup, fastText lid.176, SentencePiece + KN perplexity buckets, reference classifier, write);
- datatrove (the nearest pipeline it has): WarcReader + JsonlReader -> the same resiliparse extraction (as a
  datatrove extractor) -> LanguageFilter(fastText lid.176, 0.5) -> GopherRepetitionFilter -> GopherQualityFilter
  -> C4QualityFilter -> JsonlWriter, with `LocalPipelineExecutor(tasks=workers, workers=workers)`. Its lid.176 is
  the same .ftz file (datatrove would download lid.176.bin);
- language id alone (docs/s, one core): fasttext lid.176, py3langid, resiliparse;
- the LM: training tokens/s (KneserNeyLM.train on the Wikipedia pieces) and scoring docs/s, ours vs KenLM's query
  module (`kenlm.Model.score` per line on the same pieces and ARPA file) where it is installed.
docs/s/core = documents read / (wall seconds x workers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
FILES = ["commoncrawl/dolma-tests/warc_sample-0000.warc.gz", "commoncrawl/dolma-tests/warc_sample-0001.warc.gz",
         "commoncrawl/whirlwind/whirlwind.warc.wet.gz", "commoncrawl/dolma-tests/multiple_files_cc_en_head-0091.jsonl.gz",
         "commoncrawl/dolma-tests/multiple_files_cc_en_head-0174.jsonl.gz",
         "commoncrawl/dolma-tests/provided_documents_000.json.gz"]
DOCS_PER_COPY = 68  # 22 + 15 + 1 + 10 + 10 + 10
WIKI = DATA / "wikipedia-xml" / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def make_inputs(folder: Path, docs: int) -> list[str]:
    copies = -(-docs // DOCS_PER_COPY)
    paths = []
    for c in range(copies):
        for i, rel in enumerate(FILES):
            src = DATA / rel
            dst = folder / f"{c:04d}_{i}_{src.name}"
            os.symlink(src, dst)
            paths.append(str(dst))
    return paths


def run_ours(inputs: list[str], models: str, out: str, workers: int) -> dict:
    from llamaforge.data.sources import prepare

    t = time.perf_counter()
    stats = prepare("commoncrawl", inputs, out, workers=workers, progress=False, models=models, dedup_group=6)
    wall = time.perf_counter() - t
    st = stats["stages"]
    scorer = "kenlm" if any("scored by KenLM" in n for n in stats["notes"]) else "numpy"
    return {"wall": wall, "docs": st["read"]["docs_in"], "kept": st["reference_classifier"]["docs_out"],
            "steps": list(st), "lm_scorer": scorer,
            "passed": {k: v["docs_out"] for k, v in st.items()}}


def run_datatrove(inputs: list[str], out: str, workers: int) -> dict:
    import fasttext
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors.base import BaseExtractor
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LanguageFilter,
    )
    from datatrove.pipeline.readers import JsonlReader, WarcReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils import lid

    from llamaforge.data.filters.langid import lid176_path
    from llamaforge.data.sources.commoncrawl import html_to_text

    class LocalFT176(lid.FT176LID):  # the same lid.176.ftz, no download
        @property
        def model(self):
            if self._model is None:
                self._model = fasttext.load_model(lid176_path())
            return self._model

        def predict(self, doc):
            langs, scores = self.model.predict(doc.text.replace("\n", " "), k=self.k)
            pairs = {lang.split("__")[2]: float(s) for lang, s in zip(langs, scores)}
            best = max(pairs.items(), key=lambda x: x[1])
            return best, ({x: pairs.get(x, 0.0) for x in self.languages} if self.languages else pairs)

    lid.FT176LID.model = LocalFT176.model
    lid.FT176LID.predict = LocalFT176.predict
    # it asks for the fasttext-numpy2-wheel distribution; the `fasttext` module here is fasttext-predict's
    LanguageFilter._requires_dependencies = ["fasteners"]

    class Resiliparse(BaseExtractor):  # our extractor, run the datatrove way (sandboxed, with a timeout)
        name = "resiliparse"

        def __init__(self, timeout: float = 1):
            super().__init__(timeout)

        def extract(self, text: str) -> str:
            return html_to_text(text.encode("utf-8"))

    folder = str(Path(inputs[0]).parent)
    pipeline = [
        WarcReader(folder, glob_pattern="*.warc*.gz"),
        JsonlReader(folder, glob_pattern="*.json*.gz"),
        Resiliparse(),
        LanguageFilter(languages=["en"], language_threshold=0.5, backend="ft176"),
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(filter_no_terminal_punct=False),
        JsonlWriter(out),
    ]
    t = time.perf_counter()
    LocalPipelineExecutor(pipeline=pipeline, tasks=workers, workers=workers, logging_dir=out + "_logs").run()
    wall = time.perf_counter() - t
    stats = json.loads(Path(out + "_logs", "stats.json").read_text())
    read = sum(s["stats"].get("documents", {}).get("total", 0) for s in stats if "READER" in s["name"])
    return {"wall": wall, "docs": read}


def run_lid(backend: str, texts: list[str]) -> dict:
    from llamaforge.data.filters.langid import LanguageFilter

    lf = LanguageFilter(None, 0.0, backend)
    lf.setup()
    lf.predict(texts[0])
    t = time.perf_counter()
    for x in texts:
        lf.predict(x)
    return {"wall": time.perf_counter() - t, "docs": len(texts)}


def run_lm(models: str, texts: list[str]) -> dict:
    import sentencepiece as spm

    from llamaforge.data.filters.lm import KneserNeyLM, LMBundle, normalize
    from llamaforge.data.sources.commoncrawl import _read_wikipedia

    wiki, _ = _read_wikipedia([str(WIKI)])
    sp = spm.SentencePieceProcessor(model_file=f"{models}/lm/sp.model")
    lines = [x for d in wiki for x in (normalize(line) for line in d.split("\n")) if x]
    pieces = sp.encode(lines, out_type=str)
    tokens = sum(len(p) + 1 for p in pieces)
    t = time.perf_counter()
    KneserNeyLM.train(pieces, order=5)
    train = time.perf_counter() - t
    bundle = LMBundle(f"{models}/lm")
    t = time.perf_counter()
    for x in texts:
        bundle.perplexity(x)
    ours = time.perf_counter() - t
    res = {"train_tokens": tokens, "train_wall": train, "docs": len(texts), "score_wall": ours}
    try:
        import kenlm
    except ImportError:
        return res
    model = kenlm.Model(f"{models}/lm/lm.arpa.gz")
    t = time.perf_counter()
    for x in texts:  # the same work: normalise, SentencePiece, score each line
        for line in x.split("\n"):
            line = normalize(line)
            if line:
                model.score(" ".join(bundle.sp.encode(line, out_type=str)), bos=True, eos=True)
    res["kenlm_score_wall"] = time.perf_counter() - t
    return res


def run_ceiling(models: str, reps: int = 3) -> dict:
    """Each step the paper requires, alone, on the bench's documents (one core, in this process): ms per document.
    extract: WARC record -> text (HTTP decoding + resiliparse), per WARC record; langid: lid.176 on the page;
    lm: normalise + SentencePiece + 5-gram (the scorer `auto` picks), in batches of 64 as the stage runs it;
    classifier: hashed uni/bigrams + logistic regression, batches of 64. Best of `reps` passes."""
    from collections import Counter

    from llamaforge.data.filters.langid import LanguageFilter
    from llamaforge.data.filters.lm import LMBundle, resolve_scorer
    from llamaforge.data.filters.quality import ReferenceClassifier
    from llamaforge.data.sources.commoncrawl import CCReader

    texts = sample_texts(DOCS_PER_COPY * 4)
    warcs = [str(DATA / f) for f in FILES if f.endswith(".warc.gz")]
    n_warc = sum(1 for w in warcs for _ in CCReader()(w, Counter()))
    lid = LanguageFilter(["en"], 0.5, "fasttext")
    lid.setup()
    bundle = LMBundle(f"{models}/lm", resolve_scorer("auto"))
    clf = ReferenceClassifier.load(f"{models}/reference_classifier.npz")
    batches = [texts[i:i + 64] for i in range(0, len(texts), 64)]
    steps = {"extract (per WARC record)": (n_warc, lambda: [d for w in warcs for d in CCReader()(w, Counter())]),
             "langid lid.176": (len(texts), lambda: [lid.predict(t) for t in texts]),
             f"lm_perplexity ({bundle.scorer})": (len(texts), lambda: [bundle.perplexities(b) for b in batches]),
             "reference_classifier": (len(texts), lambda: [clf.predict_proba(b) for b in batches])}
    out = {}
    for name, (n, fn) in steps.items():
        fn()  # warm: models loaded, caches filled
        best = min(_timed(fn) for _ in range(reps))
        out[name] = best * 1e3 / n
    out["warc_fraction"] = 37 / DOCS_PER_COPY  # WARC records among the bench's documents
    return out


def _timed(fn) -> float:
    t = time.process_time()  # CPU seconds of this process: what a core spends, whatever the machine's load
    fn()
    return time.process_time() - t


def sample_texts(n: int) -> list[str]:
    from collections import Counter

    from llamaforge.data.sources.commoncrawl import CCReader

    base = [d["text"] for rel in FILES for d in CCReader()(str(DATA / rel), Counter())]
    return (base * (n // len(base) + 1))[:n]


def one(kind: str, args) -> dict:
    if kind == "ours":
        return run_ours(args.inputs, args.models, args.out, args.nworkers)
    if kind == "datatrove":
        return run_datatrove(args.inputs, args.out, args.nworkers)
    if kind.startswith("lid:"):
        return run_lid(kind[4:], sample_texts(args.lid_docs))
    if kind == "lm":
        return run_lm(args.models, sample_texts(500))
    if kind == "ceiling":
        return run_ceiling(args.models)
    raise ValueError(kind)


def spawn(kind: str, tmp: Path, inputs: list[str], models: str, workers: int, rep: int, lid_docs: int) -> dict:
    out = tmp / f"out_{kind.replace(':', '_')}_{workers}_{rep}"
    spec = {"kind": kind, "inputs": inputs, "models": models, "out": str(out), "nworkers": workers,
            "lid_docs": lid_docs}
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--one", str(tmp / "spec.json")], env=env, check=False,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(str(out) + "_logs", ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=5000)
    p.add_argument("--workers", default="1")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lid-docs", type=int, default=300)
    p.add_argument("--skip-datatrove", action="store_true")
    p.add_argument("--skip-lid-lm", action="store_true", help="only the end-to-end runs and the per-step ceiling")
    p.add_argument("--models-cache", help="build the models here once and reuse them on later runs")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        spec = argparse.Namespace(**json.loads(Path(args.one).read_text()))
        print(json.dumps(one(spec.kind, spec)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        inputs = make_inputs(tmp / "in", args.docs)
        sys.path.insert(0, str(REPO / "src"))
        from collections import Counter

        from llamaforge.data.filters.langid import LanguageFilter
        from llamaforge.data.sources.commoncrawl import build_models

        t = time.perf_counter()
        models = Path(args.models_cache) if args.models_cache else tmp / "models"
        info = build_models(models, [str(WIKI)], [str(DATA / f) for f in FILES], 300,
                            LanguageFilter(["en"], 0.5, "fasttext"))
        build = time.perf_counter() - t
        print(f"models built once in {build:.1f} s: {json.dumps(info['lm'])}", flush=True)
        del Counter
        rows = []
        for w in [int(x) for x in args.workers.split(",")]:
            ours, dt = [], []
            for r in range(args.repeats):  # interleaved: ours, datatrove, ours, datatrove, ...
                ours.append(spawn("ours", tmp, inputs, str(models), w, r, args.lid_docs))
                print(json.dumps({"ours": ours[-1]}), flush=True)
                if not args.skip_datatrove:
                    dt.append(spawn("datatrove", tmp, inputs, "", w, r, args.lid_docs))
                    print(json.dumps({"datatrove": dt[-1]}), flush=True)
            rate = [x["docs"] / (x["wall"] * w) for x in ours]
            row = {"workers": w, "docs": ours[0]["docs"], "kept": ours[0]["kept"], "steps": ours[0]["steps"],
                   "lm_scorer": ours[0]["lm_scorer"], "ours": spread(rate)}
            if dt:
                dt_rate = [x["docs"] / (x["wall"] * w) for x in dt]
                row.update(datatrove=spread(dt_rate), dt_docs=dt[0]["docs"],
                           ratio=f"{statistics.median(rate) / statistics.median(dt_rate):.2f}x")
            rows.append(row)
            print(json.dumps(row), flush=True)
        ceil = [spawn("ceiling", tmp, [], str(models), 1, r, args.lid_docs) for r in range(args.repeats)]
        per_step = {k: statistics.median(c[k] for c in ceil) for k in ceil[0] if k != "warc_fraction"}
        passed = ours[0]["passed"]  # documents each step sees in the pipeline: the ones the step before kept
        seen = {"extract (per WARC record)": ceil[0]["warc_fraction"],
                "langid lid.176": passed["line_dedup"] / passed["read"],
                **{k: passed["langid"] / passed["read"] for k in per_step if k.startswith("lm_perplexity")},
                "reference_classifier": passed["lm_perplexity"] / passed["read"]}
        total = sum(per_step[k] * seen[k] for k in per_step)
        print(json.dumps({"ceiling_ms_per_doc_alone": {k: round(v, 3) for k, v in per_step.items()},
                          "share_of_read_docs_each_step_sees": {k: round(v, 3) for k, v in seen.items()},
                          "ceiling_ms_per_read_doc": round(total, 3),
                          "ceiling_docs_per_s_core": round(1000 / total)}), flush=True)
        if args.skip_lid_lm:
            return
        for backend in ("fasttext", "py3langid", "resiliparse"):
            res = [spawn(f"lid:{backend}", tmp, [], "", 1, r, args.lid_docs) for r in range(args.repeats)]
            print(json.dumps({"lid": backend, "docs_per_s": spread([x["docs"] / x["wall"] for x in res])}),
                  flush=True)
        lm = [spawn("lm", tmp, [], str(models), 1, r, args.lid_docs) for r in range(args.repeats)]
        out = {"lm_train_tokens_per_s": spread([x["train_tokens"] / x["train_wall"] for x in lm]),
               "lm_score_docs_per_s": spread([x["docs"] / x["score_wall"] for x in lm])}
        if "kenlm_score_wall" in lm[0]:
            out["kenlm_score_docs_per_s"] = spread([x["docs"] / x["kenlm_score_wall"] for x in lm])
        print(json.dumps(out), flush=True)
        print(f"python {platform.python_version()}, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cpus", flush=True)


if __name__ == "__main__":
    main()
