"""The flow's report: what happened to the data and the model, as `report/report.md`, `report/report.json` and PNGs.

Sections: per source and stage, documents and bytes in/out and drops by reason (with short dropped samples where
the pipeline kept some); the tokenizer's spec, its sample per source and bytes/token per source; tokens per source,
the mixture plan and the realized share and epochs against Table 1; the loss curve and validation loss per source;
the evaluation table with chance level and the paper's 7B number; export paths and their parity checks.
Every number is read from the files the stages wrote, so the report can be rebuilt at any time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llamaforge.io import atomic_file

SAMPLE_CHARS = 160  # dropped-document samples are cut to this many characters


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def gather(flow) -> dict:
    """Everything the report shows, from the run folder (missing stages are absent keys)."""
    from llamaforge.data.mixture import TABLE1, plan_mixture

    out, cfg = flow.out, flow.cfg
    rep: dict = {"flow": cfg.path, "run_folder": str(out), "sources": {}}
    for n in flow.names:
        spec = cfg.sources[n]
        src = {"kind": spec.kind, "inputs": spec.inputs, "weight": flow.weights[n] / sum(flow.weights.values()),
               "paper": TABLE1.get(spec.kind)}
        stats = _load(flow.prepared_dir(n) / "stats.json")
        if stats:
            src["stages"] = stats["stages"]
            src["samples"] = _dropped_samples(flow.prepared_dir(n))
        header = _load(out / "tokens" / n / "header.json")
        if header:
            src["tokens"] = header["n_tokens"]
            src["docs"] = header["n_docs"]
            src["bytes_per_token"] = header["n_bytes"] / header["n_tokens"]
        rep["sources"][n] = src
    sample = _load(out / "tokenizer" / "sample.json")
    if flow.tokenizer_file.is_file():
        rep["tokenizer"] = {"path": str(flow.tokenizer_file), "spec": _tokenizer_spec(flow.tokenizer_file),
                            "sample": sample}
    summary = _load(out / "train" / "summary.json")
    if summary:
        rep["train"] = {k: v for k, v in summary.items() if k != "data"}
        rep["mixture"] = summary.get("data", {})
        tcfg = _load(out / "train" / "config.json")
        if tcfg:
            steps, bt, seq = tcfg["training"]["steps"], tcfg["training"]["batch_tokens"], tcfg["data"]["seq_len"]
            available = {n: s["tokens_per_epoch"] for n, s in rep["mixture"].items()}
            rows, warnings = plan_mixture(available, flow.weights, steps * bt // seq * (seq + 1),
                                          {n: (TABLE1.get(cfg.sources[n].kind) or {}).get("epochs")
                                           for n in flow.names})
            rep["plan"] = {"rows": rows, "warnings": warnings}
    rep["val_loss"] = _load(out / "eval" / "val_loss.json")
    rep["eval"] = _load(out / "eval" / "results.json")
    rep["eval_reference"] = _load(out / "eval" / "tasks.json")
    rep["export"] = _load(out / "export" / "parity.json")
    return rep


def _dropped_samples(folder: Path) -> dict:
    """Short samples of dropped documents per stage and reason, where the pipeline wrote them
    (`dropped/<stage>/<reason>.jsonl`); {} when it did not."""
    samples: dict = {}
    root = folder / "dropped"
    if not root.is_dir():
        root = folder / "_work" / "dropped"
    for f in sorted(root.glob("*/*.jsonl*")) if root.is_dir() else []:
        from llamaforge.io import read_jsonl

        texts = [doc["text"][:SAMPLE_CHARS] for _, doc in read_jsonl(f)][:3]
        samples.setdefault(f.parent.name, {})[f.name.split(".")[0]] = texts
    return samples


def _tokenizer_spec(path: Path) -> dict:
    if path.suffix != ".model":
        return {"file": path.name}
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(path.read_bytes())
    t = proto.trainer_spec
    return {"model_type": pb.TrainerSpec.ModelType.Name(t.model_type), "vocab_size": len(proto.pieces),
            "byte_fallback": t.byte_fallback, "split_digits": t.split_digits,
            "character_coverage": round(t.character_coverage, 6), "normalization": proto.normalizer_spec.name,
            "add_dummy_prefix": proto.normalizer_spec.add_dummy_prefix,
            "remove_extra_whitespaces": proto.normalizer_spec.remove_extra_whitespaces}


def _plots(rep: dict, folder: Path, flow) -> list[str]:
    from llamaforge.train.metrics import plot_loss, pyplot, save_png

    plt = pyplot()
    made = []
    metrics = flow.out / "train" / "metrics.jsonl"
    if metrics.is_file():  # training loss, validation loss over the run, and each source's held-out loss at the end
        held_out = {name: v["val_loss"] for name, v in (rep.get("val_loss") or {}).items()}
        plot_loss(metrics, folder / "loss.png", held_out=held_out)
        made.append("loss.png")
    eval_png = flow.out / "train" / "eval.png"  # benchmark scores during training (Figure 2), when [eval] ran
    if eval_png.is_file():
        shutil.copy(eval_png, folder / "eval.png")
        made.append("eval.png")
    names = list(rep["sources"])
    if rep.get("mixture"):
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
        x = range(len(names))
        a.bar([i - 0.2 for i in x], [rep["sources"][n]["weight"] for n in names], 0.4, label="weight")
        a.bar([i + 0.2 for i in x], [rep["mixture"].get(n, {}).get("share", 0) for n in names], 0.4,
              label="realized share")
        a.set_xticks(list(x), names, rotation=30, ha="right")
        a.set_title("token share per source")
        a.legend()
        b.bar([i - 0.2 for i in x], [rep["mixture"].get(n, {}).get("epochs", 0) for n in names], 0.4, label="epochs")
        b.bar([i + 0.2 for i in x], [(rep["sources"][n]["paper"] or {}).get("epochs", 0) for n in names], 0.4,
              label="paper (Table 1)")
        b.set_xticks(list(x), names, rotation=30, ha="right")
        b.set_title("epochs per source")
        b.legend()
        save_png(fig, folder / "mixture.png")
        made.append("mixture.png")
    staged = [n for n in names if rep["sources"][n].get("stages")]
    if staged:
        fig, ax = plt.subplots(figsize=(8, 3.8))
        first = [next(iter(rep["sources"][n]["stages"].values()))["bytes_in"] for n in staged]
        last = [list(rep["sources"][n]["stages"].values())[-1]["bytes_out"] for n in staged]
        x = range(len(staged))
        ax.bar([i - 0.2 for i in x], [v / 1e6 for v in first], 0.4, label="MB in")
        ax.bar([i + 0.2 for i in x], [v / 1e6 for v in last], 0.4, label="MB out")
        ax.set_xticks(list(x), staged, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_title("prepare: text in and out per source")
        ax.legend()
        save_png(fig, folder / "data.png")
        made.append("data.png")
    return made


def _markdown(rep: dict, pngs: list[str]) -> str:
    L = [f"# Flow report: {rep['flow']}", "", f"Run folder: `{rep['run_folder']}`", ""]
    L += ["## Data: per source and stage", ""]
    for n, s in rep["sources"].items():
        if not s.get("stages"):
            continue
        L += [f"### {n} ({s['kind']})", "", "| stage | docs in | docs out | MB in | MB out | dropped (reason: docs) |",
              "|---|---:|---:|---:|---:|---|"]
        for stage, st in s["stages"].items():
            drops = ", ".join(f"{r}: {c}" for r, c in sorted(st["drops"].items(), key=lambda kv: -kv[1])) or "-"
            L.append(f"| {stage} | {st['docs_in']:,} | {st['docs_out']:,} | {_mb(st['bytes_in'])} | "
                     f"{_mb(st['bytes_out'])} | {drops} |")
        for stage, reasons in (s.get("samples") or {}).items():
            for reason, texts in reasons.items():
                for t in texts:
                    L.append(f"- dropped by {stage} ({reason}): `{' '.join(t.split())[:SAMPLE_CHARS]}`")
        if not s.get("samples"):
            L.append("\n(no dropped-document samples were kept by this pipeline version: counts only)")
        L.append("")
    if "data.png" in pngs:
        L += ["![data](data.png)", ""]
    if rep.get("tokenizer"):
        t = rep["tokenizer"]
        L += ["## Tokenizer", "", f"`{t['path']}`: " + ", ".join(f"{k} {v}" for k, v in t["spec"].items()), ""]
        L += ["| source | weight | MB in sample | MB available | bytes/token | tokens | documents |",
              "|---|---:|---:|---:|---:|---:|---:|"]
        sample = t.get("sample") or {}
        for n, s in rep["sources"].items():
            sm = sample.get(n, {}) if isinstance(sample, dict) else {}
            L.append(f"| {n} | {s['weight']:.3f} | {_mb(sm.get('bytes_sampled', 0)) if sm else '-'} | "
                     f"{_mb(sm.get('bytes_available', 0)) if sm else '-'} | {s.get('bytes_per_token', 0):.2f} | "
                     f"{s.get('tokens', 0):,} | {s.get('docs', 0):,} |")
        L.append("")
    if rep.get("plan"):
        L += ["## Mixture: plan and realized, against Table 1", "",
              "| source | tokens available | weight | planned tokens | planned epochs | realized share | "
              "realized epochs | paper weight | paper epochs |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rep["plan"]["rows"]:
            m = rep["mixture"].get(r["source"], {})
            paper = rep["sources"][r["source"]]["paper"] or {}
            pw = f"{paper['weight']:.3f}" if paper else "-"
            pe = f"{paper['epochs']:.2f}" if paper else "-"
            L.append(f"| {r['source']} | {r['tokens_available']:,} | {r['weight']:.3f} | {r['planned_tokens']:,} | "
                     f"{r['planned_epochs']:.2f} | {m.get('share', 0):.3f} | {m.get('epochs', 0):.2f} | {pw} | {pe} |")
        L += [""] + [f"- {w}" for w in rep["plan"]["warnings"]] + [""]
        if "mixture.png" in pngs:
            L += ["![mixture](mixture.png)", ""]
    if rep.get("train"):
        tr = rep["train"]
        L += ["## Training", "", f"step {tr.get('step')}, final loss {tr.get('loss', float('nan')):.4f}, "
              f"validation loss {tr.get('val_loss', float('nan')):.4f} nats/token"
              + (f", {tr['val_bpb']:.4f} bits/byte" if "val_bpb" in tr else ""), ""]
        if "loss.png" in pngs:
            L += ["![loss](loss.png)", ""]
        if "eval.png" in pngs:
            L += ["Benchmark scores during training (the paper's Figure 2):", "", "![eval](eval.png)", ""]
    if rep.get("val_loss"):
        L += ["| source | validation loss (nats/token) | bits/byte |", "|---|---:|---:|"]
        L += [f"| {n} | {v['val_loss']:.4f} | {v['val_bpb']:.4f} |" for n, v in rep["val_loss"].items()] + [""]
    if rep.get("eval") is not None:
        ref = (rep.get("eval_reference") or {}).get("reference", {})
        skipped = (rep.get("eval_reference") or {}).get("skipped", {})
        L += ["## Evaluation", "", "| task | metric | n | value | chance | paper 7B |", "|---|---|---:|---:|---:|---:|"]
        for task, metrics in rep["eval"]["results"].items():
            r = ref.get(task, {})
            metric = r.get("paper_metric")
            if metric not in metrics:
                continue
            n = rep["eval"]["details"][task]["n"]
            paper = r.get("paper_7b")
            L.append(f"| {task} | {metric} | {n} | {100 * metrics[metric]:.1f} | {100 * r.get('chance', 0):.1f} | "
                     f"{'' if paper is None else f'{paper:.1f}'} |")
        L += [f"- {t}: not evaluated: {why}" for t, why in skipped.items()] + [""]
    if rep.get("export"):
        L += ["## Exports", ""]
        for fmt, path in rep["export"]["paths"].items():
            p = rep["export"]["parity"].get(fmt)
            check = f": parity {p['status']}" + (f" ({p['detail']})" if p.get("detail") else "") if p else ""
            L.append(f"- {fmt}: `{path}`{check}")
        L.append("")
    return "\n".join(L) + "\n"


def write_report(flow) -> Path:
    """Write report/report.json, report/report.md and the PNGs; returns the Markdown path."""
    folder = flow.out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    rep = gather(flow)
    pngs = _plots(rep, folder, flow)
    rep["figures"] = pngs
    with atomic_file(folder / "report.json", "w") as f:
        f.write(json.dumps(rep, indent=2, default=str) + "\n")
    with atomic_file(folder / "report.md", "w") as f:
        f.write(_markdown(rep, pngs))
    return folder / "report.md"
