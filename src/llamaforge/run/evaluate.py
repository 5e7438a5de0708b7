"""The flow's eval and export stages: validation loss per source, the listed tasks with the paper's numbers and
chance level beside, and exports that are checked against the native model (HF logits; GGUF greedy text through
llama.cpp where llama-cpp-python is installed)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llamaforge.errors import UserError

PARITY_ATOL = 1e-4  # HF logits vs native (float32, same weights): the bound
GREEDY_TOKENS = 24


def _model_and_tokenizer(flow):
    from llamaforge.formats import load_model_and_tokenizer

    return load_model_and_tokenizer(flow.out / "train" / "final")


def _val_loader(flow):
    """The training mixture's loader; its `val_batches(n, source)` are the held-out documents of each source."""
    from llamaforge.data.mixture import MixtureLoader

    tcfg = flow.train_config()
    return MixtureLoader(tcfg.data.sources, tcfg.data.weights, seq_len=tcfg.data.seq_len,
                         batch_size=tcfg.training.micro_batch_size, seed=tcfg.training.seed)


def validation_per_source(model, loader, n_batches: int) -> dict[str, dict]:
    """{source: {"val_loss": nats/token, "val_bpb": bits/byte}} on each source's held-out documents that has any,
    measured by the trainer's own `evaluate` (token-weighted, the same function as the training curve's
    validation); {} when `n_batches` is 0."""
    import contextlib

    from llamaforge.train.metrics import bits_per_byte
    from llamaforge.train.trainer import evaluate

    out = {}
    if n_batches == 0:
        return out
    device = next(model.parameters()).device
    for name in loader.names:
        if not loader.has_val(name):
            continue
        loss = evaluate(model, loader, n_batches, device, contextlib.nullcontext, source=name)
        out[name] = {"val_loss": loss, "val_bpb": bits_per_byte(loss, loader.val_bytes_per_token(name))}
    return out


def chance_level(task, data_dir: Path, limit: int) -> float:
    """Expected accuracy of uniform guessing: mean 1/#choices over the items scored (0 for generative tasks)."""
    if task.kind != "choice":
        return 0.0
    items = task.load(Path(data_dir), task.shots)
    items = items[:limit] if limit else items
    return sum(1 / len(it.choices) for it in items) / len(items)


def evaluate_flow(flow) -> None:
    """Writes eval/val_loss.json and, for the listed tasks, eval/results.json + results.md (+ chance, paper 7B)."""
    from llamaforge.eval import evaluate_task, preset_of
    from llamaforge.eval.results import write_results
    from llamaforge.eval.scoring import Scorer
    from llamaforge.eval.tasks import get_task

    c = flow.cfg.eval
    folder = flow.out / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    model, tok = _model_and_tokenizer(flow)
    val = validation_per_source(model, _val_loader(flow), c.val_batches)
    for name, v in val.items():
        print(f"{name}: validation loss {v['val_loss']:.3f} nats/token, {v['val_bpb']:.3f} bits/byte")
    with open(folder / "val_loss.json", "w") as f:
        json.dump(val, f, indent=2)

    results, extra, skipped = [], {}, {}
    scorer = Scorer(model, tok, batch_size=c.batch_size)
    preset = preset_of(model)
    for name in c.tasks:
        task = get_task(name)
        try:
            result, _ = evaluate_task(scorer, name, c.data_dir, limit=c.limit or None, preset=preset)
        except UserError as e:  # the task's data is not there: said in one line, recorded in the report
            skipped[name] = str(e)
            print(f"{name}: not evaluated: {e}")
            continue
        results.append(result)
        extra[name] = {"chance": chance_level(task, c.data_dir, c.limit), "paper_metric": task.paper_metric,
                       "paper_7b": task.paper.get("llama-7b")}
        value = result.metrics.get(task.paper_metric)
        print(f"{name}: {task.paper_metric} {100 * value:.1f}% (chance {100 * extra[name]['chance']:.1f}%, "
              f"paper 7B {extra[name]['paper_7b']}) on {result.n} items")
    write_results(folder / "results.json", results, {"tasks": c.tasks, "limit": c.limit, "data_dir": c.data_dir})
    with open(folder / "tasks.json", "w") as f:
        json.dump({"reference": extra, "skipped": skipped}, f, indent=2)


def _held_out_ids(flow, tok, n: int = 64) -> list[int]:
    """The first n tokens of a held-out document (parity inputs come from the data, not from random ids)."""
    loader = _val_loader(flow)
    x, _ = loader.val_batches(1)[0]
    return x[0, :n].tolist()


def export_flow(flow) -> None:
    """Each format of `export.formats` with the tokenizer; parity of HF logits and GGUF greedy text to native."""
    from llamaforge.formats import save_model

    model, tok = _model_and_tokenizer(flow)
    folder = flow.out / "export"
    paths = {}
    for fmt in flow.cfg.export.formats:
        dst = folder / {"gguf": "model.gguf", "llama2c": "llama2c/model.bin"}.get(fmt, fmt)
        save_model(model, dst, format=fmt, tokenizer_path=flow.tokenizer_file)
        paths[fmt] = str(dst)
        print(f"{fmt}: {dst}")
    ids = _held_out_ids(flow, tok)
    parity = {}
    if "hf" in paths:
        parity["hf"] = hf_parity(model, Path(paths["hf"]), ids, progress=flow.progress)
    if "gguf" in paths:
        parity["gguf"] = gguf_parity(model, tok, Path(paths["gguf"]), ids[:8])
    for fmt, p in parity.items():
        print(f"{fmt} parity: {p['status']}" + (f" ({p['detail']})" if p.get("detail") else ""))
    with open(folder / "parity.json", "w") as f:
        json.dump({"paths": paths, "parity": parity}, f, indent=2)
    failed = [f for f, p in parity.items() if p["status"] == "failed"]
    if failed:
        raise UserError(f"{folder}: export parity failed for {', '.join(failed)}; see {folder / 'parity.json'}")


@torch.no_grad()
def hf_parity(model, folder: Path, ids: list[int], progress: bool = True) -> dict:
    """transformers' LlamaForCausalLM on the exported folder against the native model, float32, same tokens:
    max |logit difference| <= PARITY_ATOL; also AutoTokenizer's ids against ours on the decoded text.
    `progress=False` (`run --no-progress`) hides transformers' "Loading weights" bar."""
    try:
        from transformers import AutoTokenizer, LlamaForCausalLM
        from transformers.utils import logging as hf_logging
    except ImportError:
        return {"status": "skipped", "detail": "transformers is not installed"}
    bars = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        hf = LlamaForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32).eval()
    finally:
        if bars and not progress:  # transformers' switch is process-wide: put it back as it was
            hf_logging.enable_progress_bar()
    x = torch.tensor([ids])
    diff = (hf(x).logits - model(x)).abs().max().item()
    out = {"status": "passed" if diff <= PARITY_ATOL else "failed", "max_abs_logit_diff": diff,
           "tolerance": PARITY_ATOL, "tokens": len(ids), "detail": f"max |logit diff| {diff:.2e}"}
    try:
        hf_tok = AutoTokenizer.from_pretrained(str(folder))
        from llamaforge import load_tokenizer

        ours = load_tokenizer(folder)
        text = ours.decode(ids)
        out["tokenizer_ids_equal"] = hf_tok(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
    except Exception as e:  # noqa: BLE001 - the tokenizer check is reported, never fatal to the logits check
        out["tokenizer_ids_equal"] = f"not checked: {type(e).__name__}: {e}"
    return out


def llama_cpp_greedy(path, prompt: list[int], n: int, stop_ids=(), n_ctx: int = 128, **llama_options) -> list[int]:
    """llama.cpp's (llama-cpp-python) greedy continuation of `prompt` (token ids) from the GGUF file `path`: at most
    `n` tokens, ending before the first one in `stop_ids` (the stop token is not returned). Temperature 0 / top-k 1,
    no top-p, min-p or repeat penalty; `n_ctx` positions, one thread; `llama_options` go to `llama_cpp.Llama`
    (e.g. type_k=0, type_v=0 for an f32 KV cache). The project's one driver of llama.cpp for parity checks (the
    flow's export stage and the tests). Raises ImportError without llama-cpp-python."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=1, verbose=False, **llama_options)
    tokens: list[int] = []
    try:
        if n > 0:
            for t in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
                if t in stop_ids:
                    break
                tokens.append(t)
                if len(tokens) == n:
                    break
    finally:
        llm.close()
    return tokens


def gguf_parity(model, tok, path: Path, prompt_ids: list[int]) -> dict:
    """llama.cpp's greedy continuation of a held-out prompt (`llama_cpp_greedy`, up to GREEDY_TOKENS, stopping at
    EOS) against the native engine's on `model`, as token ids. Returns {"status": "passed" | "failed" | "skipped",
    "native" and "llama_cpp" texts, "detail"}; skipped without llama-cpp-python."""
    try:
        import llama_cpp  # noqa: F401 - only whether it is there
    except ImportError:
        return {"status": "skipped", "detail": "llama-cpp-python is not installed (pip install '.[llamacpp]')"}
    from llamaforge.infer.engine import Engine, SamplingParams

    theirs = llama_cpp_greedy(path, prompt_ids, GREEDY_TOKENS, stop_ids=(tok.eos_id,))
    engine = Engine(model, tok, max_seq_len=128)
    (res,) = engine.generate([prompt_ids], SamplingParams(max_new_tokens=GREEDY_TOKENS))
    ours = [t for t in res.tokens if t != tok.eos_id][:GREEDY_TOKENS]
    ok = ours == theirs
    return {"status": "passed" if ok else "failed", "native": tok.decode(ours), "llama_cpp": tok.decode(theirs),
            "detail": "greedy text equal" if ok else "greedy text differs"}
