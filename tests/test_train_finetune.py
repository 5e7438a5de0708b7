"""Instruction finetuning: the three data formats, masking (against a hand-computed loss), bad input as one line,
and end to end on stories260K: held-out response loss falls, exact resume after SIGKILL, and 2-process FSDP2
(full and LoRA) matching 1 process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import shared_path

from llamaforge.cli import main
from llamaforge.errors import UserError
from llamaforge.infer.templates import load_chat_format
from llamaforge.model import ModelArgs, Transformer
from llamaforge.train.finetune import (
    IGNORE,
    InstructionLoader,
    _messages,
    build_examples,
    collate,
    read_records,
    render,
    show_example,
    to_pair,
)
from llamaforge.train.trainer import cross_entropy_sum, n_targets

ALPACA = [
    {"instruction": "Name a color.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say nothing.", "input": "", "output": ""},
]


def stories():
    folder = shared_path("stories260K")
    return folder / "stories260K.bin", folder / "tok512.bin"


def tokenizer():
    from llamaforge.tokenizer import load_tokenizer

    return load_tokenizer(stories()[1])


def plain():
    return load_chat_format("plain", tokenizer())


def test_three_formats_become_messages(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ALPACA))
    (tmp_path / "a.jsonl").write_text("\n".join(map(json.dumps, ALPACA)) + "\n")
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}]}
    (tmp_path / "c.jsonl").write_text(json.dumps(chat) + "\n\n" + json.dumps({"prompt": "1+1=", "completion": "2"}))
    recs = read_records(tmp_path / "a.json")
    assert [w for w, _ in recs] == [f"{tmp_path / 'a.json'}[{i}]" for i in range(3)]
    assert _messages(recs[1][1], "x") == [{"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                                          {"role": "assistant", "content": "5"}]
    assert _messages(recs[2][1], "x") is None  # empty output: no response
    assert [w for w, _ in read_records(tmp_path / "a.jsonl")][2].endswith("a.jsonl:3")
    (c_where, c), (p_where, p) = read_records(tmp_path / "c.jsonl")
    assert _messages(c, c_where) == chat["messages"] and p_where.endswith(":3")  # blank line skipped, counted
    assert _messages(p, p_where) == [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]


@pytest.mark.parametrize("text, message", [
    ('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n', r"d\.jsonl:2: not valid JSON"),
    ('{"instruction": "a", "output": "b"}\n{"question": "a", "answer": "b"}\n', r"d\.jsonl:2: expected "),
    ('{"messages": [{"role": "robot", "content": "x"}]}\n', r"d\.jsonl:1: messages: role 'robot'"),
    ('{"prompt": "a", "completion": 3}\n', r"d\.jsonl:1: prompt, completion: expected strings"),
])
def test_malformed_lines_name_file_and_line(tmp_path, text, message):
    (tmp_path / "d.jsonl").write_text(text)
    with pytest.raises(UserError, match=message):
        build_examples(tmp_path / "d.jsonl", plain(), 64)


def test_mask_covers_exactly_the_responses():
    tpl = plain()
    tok = tpl.tokenizer
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."},
            {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"},
            {"role": "assistant", "content": "Red."}]
    ids, mask = render(tpl, msgs)
    # the ids are the server's rendering of the dialog (infer.templates), then EOS: plain ends turns in text
    assert ids == tpl.render(msgs, add_generation_prompt=False).ids + [tok.eos_id] and ids[0] == tok.bos_id
    trained = [i for i, m in zip(ids, mask) if m]
    spans, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    spans.append(cur)
    assert [tok.decode(s).strip() for s in spans] == ["Blue.", "Red."]  # the assistant turns, nothing else
    assert trained[-1] == tok.eos_id and not mask[0]
    shown = show_example(tok, ids, mask)
    assert "[[" in shown and "Assistant:]]" in shown and f"{sum(mask)} trained" in shown


def test_masked_loss_equals_hand_reference():
    """The trainer's loss on a fixed two-example batch equals -log p summed by hand over response tokens only."""
    tpl = plain()
    tok = tpl.tokenizer
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=tok.vocab_size, multiple_of=16,
                                  max_seq_len=128))
    examples = [render(tpl, [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}]),
                render(tpl, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}])]
    x, y = collate([to_pair(ids, mask) for ids, mask in examples], pad_id=tok.eos_id)
    assert x.shape[1] == max(len(ids) for ids, _ in examples) - 1
    with torch.no_grad():
        logits = model(x)
        ours = (cross_entropy_sum(logits, y) / n_targets(y)).item()
        terms = []
        for row, (ids, mask) in enumerate(examples):
            for t in range(len(ids) - 1):
                if mask[t + 1]:  # position t predicts token t+1, which is a response token
                    p = torch.softmax(logits[row, t].double(), -1)[ids[t + 1]]
                    terms.append(-math.log(p.item()))
    assert len(terms) == sum(sum(m[1:]) for _, m in examples) and (y != IGNORE).sum() == len(terms)
    assert ours == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_rows_without_padding_give_the_padded_batch_loss_and_gradients():
    """finetune.padding=skip (the CPU default): each row alone, cut after its last target, gives the padded
    micro-batch's loss and LoRA / full gradients (causal attention: padding and positions after the last target
    influence nothing that carries a loss), on rows of different lengths, one without any target."""
    from llamaforge.train.config import LoRAConfig
    from llamaforge.train.lora import apply_lora
    from llamaforge.train.trainer import OutputAtTargets, logits_at, unpadded_rows

    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 64, (4, 12), generator=g)
    y = torch.randint(1, 64, (4, 12), generator=g)
    y[:, :3] = IGNORE  # prompts
    y[0, 9:], y[1, 5:], y[2, :] = IGNORE, IGNORE, IGNORE  # padding after the answers; row 2 has no target
    y[3, 7] = IGNORE  # a masked position inside an answer (a template token): not the end of the row
    assert [tuple(r.shape) for r, _ in unpadded_rows(x, y)] == [(1, 9), (1, 5), (1, 1), (1, 12)]
    for method in ("lora", "full"):
        torch.manual_seed(0)
        model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=64, multiple_of=16, max_seq_len=16))
        if method == "lora":
            apply_lora(model, LoRAConfig(rank=4, alpha=8, dropout=0.0, targets="all"))
            for p in model.parameters():
                if p.requires_grad:  # B != 0, so every adapter's gradient is non-trivial
                    torch.nn.init.normal_(p, std=0.1)
        model.output = OutputAtTargets(model.output)
        grads = []
        for rows in ([(x, y)], unpadded_rows(x, y)):
            total = 0.0
            for xr, yr in rows:
                with logits_at(model, yr) as kept:
                    loss = cross_entropy_sum(model(xr), kept)
                (loss / n_targets(y)).backward()
                total += loss.item()
            grads.append((total, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
            model.zero_grad(set_to_none=True)
        (padded, want), (unpadded, got) = grads
        assert unpadded == pytest.approx(padded, rel=1e-6)
        assert got.keys() == want.keys() and len(got) > 0
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_overflow_truncates_or_drops_and_counts(tmp_path):
    long = {"instruction": "Tell a story.", "input": "", "output": "Once upon a time " * 20}
    (tmp_path / "d.json").write_text(json.dumps([long, ALPACA[0], ALPACA[2]]))
    tpl = plain()
    ex = build_examples(tmp_path / "d.json", tpl, seq_len=40)
    assert len(ex.ids) == 2 and ex.truncated == 1 and len(ex.ids[0]) == 41
    assert ex.dropped == {"with no response": 1}
    lines = ex.summary("d.json", 40)
    assert lines[0] == "d.json: 3 examples read, 2 kept" and "d.json[2]" in lines[1] and "truncated" in lines[2]
    ex = build_examples(tmp_path / "d.json", tpl, seq_len=40, overflow="drop")
    assert len(ex.ids) == 1 and ex.dropped["longer than the context"] == 1


def test_loader_splits_layout_independently():
    """Process r of 2 with batch 2 serves the rows the 1-process loader with batch 4 serves at the same step."""
    from llamaforge.train.finetune import Examples

    ex = Examples(ids=[[1, 5 + i, 7, 2] for i in range(20)], masks=[[False, False, True, True]] * 20)
    one = InstructionLoader(ex, 4, seed=3, val_examples=4, pad_id=0)
    two = [InstructionLoader(ex, 2, seed=3, val_examples=4, pad_id=0, rank=r, world_size=2) for r in range(2)]
    for _ in range(6):  # past an epoch boundary (16 training examples)
        x, _ = one.next_batch()
        assert torch.equal(x, torch.cat([two[0].next_batch()[0], two[1].next_batch()[0]]))
    assert one.state_dict() == two[0].state_dict() == {"seq_index": 24}


def test_cli_bad_inputs_are_one_line_and_write_nothing(tmp_path, capsys):
    model, tok = stories()
    (tmp_path / "bad.jsonl").write_text('{"instruction": "a", "output": "b"}\nnot json\n')
    (tmp_path / "ok.json").write_text(json.dumps(ALPACA))
    out = tmp_path / "out"
    cases = [
        (["--data", str(tmp_path / "bad.jsonl")], "bad.jsonl:2: not valid JSON"),
        (["--data", str(tmp_path / "ok.json"), "--method", "lora", "--lora.targets=wq,wx"],
         "error: --lora.targets: no projection 'wx'"),  # its flag, not the recipe file it did not come from
        (["--data", str(tmp_path / "missing.json")], "missing.json: no such file"),
        (["--data", str(tmp_path / "ok.json"), "--eval.tasks=mmlu"], "eval.data_dir: expected the folder"),
        (["--data", str(tmp_path / "ok.json"), "--eval.tasks=mmlx", "--eval.data_dir=x"], "unknown task 'mmlx'"),
        # another model's tokenizer (32000 pieces for 512 embedding rows) was an IndexError traceback in the
        # base model's first forward pass
        (["--data", str(tmp_path / "ok.json"), "--tokenizer", str(shared_path("llama2-tokenizer/tokenizer.model"))],
         "tokenizer has 32000 tokens, the model only 512 embedding rows"),
        (["--data", str(tmp_path / "ok.json"), "--eval.tasks=winogender", f"--eval.data_dir={shared_path('')}",
          f"--eval.tokenizer={shared_path('llama2-tokenizer/tokenizer.model')}"],  # scored on the base first
         "tokenizer has 32000 tokens, the model only 512 embedding rows"),
        # a missing MODEL was blamed on --tokenizer ("required when MODEL is a single file")
        (["--data", str(tmp_path / "ok.json"), "--model-path-missing"], "no-such-model: no such file or folder"),
    ]
    for extra, message in cases:
        argv = [str(model), "--tokenizer", str(tok)]
        if "--model-path-missing" in extra:
            extra, argv = [e for e in extra if e != "--model-path-missing"], [str(tmp_path / "no-such-model")]
        rc = main(["finetune", *argv, "--out", str(out), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and message in err[0], err
        assert not out.exists()


# ---------------------------------------------------------------------------------------------- end to end (slow)

# SIGKILLs the run right after the checkpoint of step LF_KILL_AT is committed (as tests/test_train_resume.py).
KILLER = r"""
import os, signal, sys
from llamaforge.train import checkpoint
at, publish = os.environ.get("LF_KILL_AT"), checkpoint.publish
def killing_publish(tmp, final):
    publish(tmp, final)
    if at is not None and final.name == f"step_{int(at):08d}":
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.publish = killing_publish
from llamaforge.cli import main
sys.exit(main(sys.argv[1:]))
"""

COMMON = ["--data.seq_len=192", "--finetune.max_examples=300", "--finetune.val_examples=32",
          "--training.batch_tokens=1536", "--training.micro_batch_size=4", "--training.dtype=fp32",
          "--training.device=cpu", "--training.deterministic=true", "--metrics.progress=false",
          "--optim.warmup_steps=2", "--samples", "0"]


def finetune(out: Path, *extra: str, nproc: int = 1, kill_at: int | None = None) -> subprocess.CompletedProcess:
    model, tok = stories()
    data = shared_path("alpaca/alpaca_5000.json")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    if kill_at is not None:
        env["LF_KILL_AT"] = str(kill_at)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
                "-m", "llamaforge"] if nproc > 1 else [sys.executable, "-c", KILLER]
    cmd = [*launcher, "finetune", str(model), "--tokenizer", str(tok), "--data", str(data), "--out", str(out),
           *COMMON, *extra]
    return subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)


def records(out: Path, key: str) -> list[float]:
    return [r[key] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if key in r]


@pytest.mark.slow
def test_lora_finetune_lowers_held_out_loss_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from llamaforge.formats import load_model
    from llamaforge.train.lora import load_adapter

    lora = ["--method", "lora", "--optim.lr=1e-2", "--lora.rank=8", "--lora.targets=all", "--lora.dropout=0.0",
            "--training.steps=16", "--checkpoint.every=8", "--metrics.val_every=8"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    r = finetune(straight, *lora)
    assert r.returncode == 0, r.stderr[-3000:]
    # held-out response loss: the base model's (step 0: B = 0, so the adapted model equals it) vs after 16 steps
    base_val = _held_out_loss(straight)
    val = records(straight, "val_loss")
    assert len(val) == 2 and val[-1] < base_val - 0.1, (base_val, val)
    # SIGKILL right after the step-8 checkpoint, resume: bit-identical losses and adapters
    r = finetune(resumed, *lora, kill_at=8)
    assert r.returncode == -9, r.stderr[-3000:]
    assert not (resumed / "final").exists() and not (resumed / "adapter").exists()
    r = finetune(resumed, *lora, "--resume", "auto")
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-3000:]
    assert records(resumed, "loss") == records(straight, "loss")
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the final model is base + adapters merged: reload the base, put the PEFT adapters on, compare
    model, _ = stories()
    adapted = load_model(model)
    load_adapter(adapted, straight / "adapter")
    merged = load_model(straight / "final")
    x = torch.randint(0, 512, (2, 50), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # logits up to ~20 here: fp32 rounding of two summation orders allows 1e-5 relative
        torch.testing.assert_close(merged(x), adapted(x), rtol=1e-5, atol=1e-5)
    config = json.loads((straight / "final" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == plain().source  # serve/chat --chat-template auto pick it up


def test_report_shows_benchmarks_before_and_after(tmp_path, capsys):
    """Deliverable 4: `--eval.tasks=mmlu` (the [eval] section, as for `train`) puts the base and the finetuned
    model's MMLU side by side in finetune_report.md (the paper's Table 10), each equal to `llamaforge.eval.evaluate`
    on that model (the base file, the exported final/), plus chat samples rendered with the template."""
    from llamaforge.eval import evaluate
    from llamaforge.formats import load_model

    model, tok = stories()
    data = shared_path("alpaca/alpaca_5000.json")
    root = shared_path("mmlu").parent
    out = tmp_path / "out"
    rc = main(["finetune", str(model), "--tokenizer", str(tok), "--data", str(data), "--out", str(out),
               "--method", "full", "--optim.lr=5e-3", "--finetune.max_examples=40", "--finetune.val_examples=8",
               "--data.seq_len=128", "--training.steps=3", "--training.batch_tokens=512",
               "--training.micro_batch_size=4", "--training.dtype=fp32", "--training.device=cpu",
               "--metrics.progress=false", "--metrics.val_batches=1", "--checkpoint.every=0", "--samples", "1",
               "--eval.tasks=mmlu", "--eval.limit=6", f"--eval.data_dir={json.dumps(str(root))[1:-1]}"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    report = (out / "finetune_report.md").read_text()
    rows = {r[1].strip(): [c.strip() for c in r[2:6]]
            for r in (line.split("|")[1:-1] for line in report.splitlines() if line.startswith("| mmlu |"))}
    assert sorted(rows) == ["acc", "acc_norm"], report
    from llamaforge.tokenizer import load_tokenizer

    want = {name: evaluate(load_model(path), load_tokenizer(tok), ["mmlu"], root, limit=6)[0].metrics
            for name, path in (("base", model), ("finetuned", out / "final"))}
    for metric, (shots, items, base, tuned) in rows.items():
        assert (shots, items) == ("5", "6")
        assert (base, tuned) == (f"{100 * want['base'][metric]:.1f}", f"{100 * want['finetuned'][metric]:.1f}")
        assert records(out, f"eval/mmlu/{metric}") == [pytest.approx(want["finetuned"][metric])]  # trainer's record
    samples = report.split("## Chat samples")[1]
    assert "User: " in samples and "Assistant:" in samples  # the held-out prompt rendered with `plain`


def _held_out_loss(out: Path) -> float:
    """The base model's loss on the run's held-out examples, computed with the trainer's own functions."""
    from llamaforge.formats import load_model
    from llamaforge.train.config import from_dict
    from llamaforge.train.trainer import evaluate

    cfg = from_dict(json.loads((out / "config.json").read_text()))
    model, _ = stories()
    ex = build_examples(cfg.finetune.data, load_chat_format(cfg.finetune.template, tokenizer()), cfg.data.seq_len,
                        cfg.finetune.overflow, cfg.finetune.max_examples)
    loader = InstructionLoader(ex, cfg.training.micro_batch_size, cfg.training.seed, cfg.finetune.val_examples,
                               ex.pad_id)
    import contextlib

    return evaluate(load_model(model), loader, cfg.metrics.val_batches, "cpu", contextlib.nullcontext)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_two_process_fsdp_matches_one_process(tmp_path, method):
    extra = ["--method", method, "--optim.lr=1e-3" if method == "full" else "--optim.lr=1e-2", "--training.steps=4",
             "--checkpoint.every=0", "--metrics.val_every=0", "--metrics.val_batches=2", "--lora.targets=all",
             "--lora.dropout=0.0"]
    r1 = finetune(tmp_path / "one", *extra)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = finetune(tmp_path / "two", *extra, "--parallel.dp_shard=2", nproc=2)
    assert r2.returncode == 0, r2.stderr[-3000:]
    one, two = records(tmp_path / "one", "loss"), records(tmp_path / "two", "loss")
    assert len(one) == len(two) == 4 and one[-1] != one[0]
    torch.testing.assert_close(torch.tensor(two, dtype=torch.float64), torch.tensor(one, dtype=torch.float64),
                               rtol=1e-5, atol=0)
    v1, v2 = records(tmp_path / "one", "val_loss"), records(tmp_path / "two", "val_loss")
    assert v2 == pytest.approx(v1, rel=1e-5)
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / d / "final" / "model.safetensors") for d in ("one", "two"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5)


def test_finetuned_model_carries_its_template_to_serve_hf_and_gguf(tmp_path):
    """The template written beside a finetuned model is what `serve`/`chat --chat-template auto` load, and
    `convert` carries it into the HF tokenizer_config.json and GGUF's tokenizer.chat_template."""
    from gguf import GGUFReader

    from llamaforge.commands.finetune import _write_template
    from llamaforge.formats import load_model, save_model
    from llamaforge.tokenizer import load_tokenizer

    spm = shared_path("llama2-tokenizer/tokenizer.model")
    source = ("{{ bos_token }}{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}"
              "{% if add_generation_prompt %}### assistant:{% endif %}")
    final = tmp_path / "final"
    save_model(Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=32000, multiple_of=16)), final,
               tokenizer_path=spm)
    tok = load_tokenizer(final)
    _write_template(final, load_chat_format(source, tok), tok)
    served = load_chat_format("auto", load_tokenizer(final))
    assert served.source == source
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert served.render(msgs, False).ids == load_chat_format(source, tok).render(msgs, False).ids
    assert main(["convert", str(final), str(tmp_path / "hf"), "--to", "hf"]) == 0
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == source
    assert main(["convert", str(final), str(tmp_path / "m.gguf"), "--to", "gguf"]) == 0
    field = GGUFReader(tmp_path / "m.gguf").fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode() == source
    assert load_model(tmp_path / "hf") is not None


DIALOGS = [
    [{"role": "system", "content": "  You answer in one line. "}, {"role": "user", "content": " What is  the capital?\n"},
     {"role": "assistant", "content": " Paris. "}, {"role": "user", "content": "  And of Italy?  "}],
    [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue,\n\nor green."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  "}],  # llama2: strip eats "\n\n"
    [{"role": "user", "content": "é 中文 🙂 x"}, {"role": "assistant", "content": "ok"},
     {"role": "user", "content": "again"}],
]


@pytest.mark.parametrize("fmt, vocab", [("plain", "llama2"), ("llama2", "llama2"), ("llama3", "llama3")])
def test_every_finetune_template_exports_as_jinja_with_the_same_ids(tmp_path, fmt, vocab):
    """Deliverable 5: a model finetuned with any built-in format carries it as a Jinja chat_template into the HF
    export (transformers' `apply_chat_template` on the export renders our token-level format's ids, dialogs with a
    system prompt, stray whitespace, a blank user turn, non-ASCII; with and without the generation prompt) and into
    GGUF's `tokenizer.chat_template`; serving the HF export with `auto` gives the built-in format back.
    (llama2 was written by name only, and its exports had no template.)"""
    import transformers
    from gguf import GGUFReader

    from llamaforge.commands.finetune import _write_template
    from llamaforge.formats import save_model
    from llamaforge.tokenizer import load_tokenizer

    spm = shared_path(f"{vocab}-tokenizer/tokenizer.model")
    tok = load_tokenizer(spm)
    final = tmp_path / "final"
    save_model(Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=tok.vocab_size, multiple_of=16)),
               final, tokenizer_path=spm)
    ours = load_chat_format(fmt, tok)
    _write_template(final, ours, load_tokenizer(final))
    assert main(["convert", str(final), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert main(["convert", str(final), str(tmp_path / "m.gguf"), "--to", "gguf"]) == 0

    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf.chat_template == ours.source
    for dialog in DIALOGS:
        for gen in (True, False):
            if gen and dialog[-1]["role"] == "assistant":
                continue
            theirs = hf.apply_chat_template(dialog, tokenize=True, add_generation_prompt=gen)
            theirs = list(theirs["input_ids"] if hasattr(theirs, "keys") else theirs)
            assert ours.render(dialog, gen).ids == theirs, (dialog, gen)
    if fmt == "llama2":  # Meta asserts a user message last for generation; the Jinja raises as well
        with pytest.raises(Exception, match="generates after a user message"):
            hf.apply_chat_template(DIALOGS[1], tokenize=False, add_generation_prompt=True)
    field = GGUFReader(tmp_path / "m.gguf").fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode() == ours.source
    served = load_chat_format("auto", load_tokenizer(tmp_path / "hf"))
    assert served.name == fmt and served.render(DIALOGS[0]).ids == ours.render(DIALOGS[0]).ids


@pytest.mark.parametrize("layout", ["jsonl", "json list"])
def test_gzipped_data_reads_like_plain(tmp_path, layout):
    """Instruction data gzipped (as datasets are often shipped) reads through the one JSONL reader: same records,
    same FILE:LINE locations."""
    import gzip

    records = [{"instruction": "Add.", "input": "1+1", "output": "2"}, {"instruction": "Greet.", "output": "Hi."}]
    text = json.dumps(records) if layout == "json list" else "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / "d.jsonl").write_text(text)
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    plain_records, gz_records = read_records(tmp_path / "d.jsonl"), read_records(tmp_path / "d.jsonl.gz")
    assert [r for _, r in gz_records] == [r for _, r in plain_records] == records
    assert gz_records[1][0].endswith(".gz:2" if layout == "jsonl" else ".gz[1]")


def test_llama2_finetune_is_served_as_llama2_by_auto(tmp_path):
    """A model finetuned with the built-in `llama2` format (code, not Jinja) records the name in its
    tokenizer_config.json, and `--chat-template auto` serves it as llama2 again (was `plain`): the same ids as
    naming the format."""
    from llamaforge.commands.finetune import _write_template
    from llamaforge.formats import copy_tokenizer
    from llamaforge.tokenizer import load_tokenizer

    final = tmp_path / "final"
    final.mkdir()
    copy_tokenizer(shared_path("llama2-tokenizer/tokenizer.model"), final)
    tok = load_tokenizer(final)
    _write_template(final, load_chat_format("llama2", tok), tok)
    served = load_chat_format("auto", load_tokenizer(final))
    assert served.name == "llama2"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    assert served.render(msgs).ids == load_chat_format("llama2", tok).render(msgs).ids
    assert served.render(msgs).ids != load_chat_format("plain", tok).render(msgs).ids
    config = final / "tokenizer_config.json"
    assert json.loads(config.read_text())["chat_template"] == served.source  # llama2 as Jinja (the exports' copy)
    # folders finetuned before llama2 had a Jinja form record only the name; auto reads it, and refuses a bad one
    legacy = {k: v for k, v in json.loads(config.read_text()).items() if k != "chat_template"}
    config.write_text(json.dumps({**legacy, "llamaforge_chat_format": "llama2"}))
    assert load_chat_format("auto", load_tokenizer(final)).name == "llama2"
    config.write_text(json.dumps({**legacy, "llamaforge_chat_format": "llama9"}))
    with pytest.raises(UserError, match="llamaforge_chat_format: expected one of plain, llama2, llama3, chatml"):
        load_chat_format("auto", load_tokenizer(final))


@pytest.mark.slow
def test_full_finetune_with_tensor_parallelism_matches_one_process(tmp_path):
    """Sequence parallelism splits every sequence evenly across the tp ranks, but a finetuning micro-batch was as
    wide as its longest example and `finetune.padding=skip` cut each row after its last target: any odd width
    ended `--parallel.tp=2` in a RuntimeError in RoPE (100 vs 99 positions). Widths and cuts are now multiples of
    tp (padding after the last target changes nothing): the losses equal one process's."""
    from llamaforge.formats import save_model

    _, tok = stories()
    torch.manual_seed(0)  # untied embeddings: tensor parallelism refuses stories260K's tied ones
    save_model(Transformer(ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=512, multiple_of=32,
                                     max_seq_len=256)), tmp_path / "untied", tokenizer_path=str(tok))
    data = shared_path("alpaca/alpaca_5000.json")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    losses = {}
    for name, nproc, extra in (("one", 1, []), ("skip", 2, ["--parallel.tp=2", "--finetune.padding=skip"]),
                               ("keep", 2, ["--parallel.tp=2", "--finetune.padding=keep"])):
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone"] \
            if nproc > 1 else [sys.executable]
        cmd = [*launch, "-m", "llamaforge", "finetune", str(tmp_path / "untied"), "--tokenizer", str(tok), "--data",
               str(data), "--out", str(tmp_path / name), *COMMON, "--method", "full", "--training.steps=2",
               "--checkpoint.every=0", "--metrics.val_every=2", *extra]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert r.returncode == 0, r.stderr[-3000:]
        losses[name] = records(tmp_path / name, "loss") + records(tmp_path / name, "val_loss")
    assert len(losses["one"]) == 3
    for name in ("skip", "keep"):
        assert losses[name] == pytest.approx(losses["one"], rel=1e-5), (name, losses)


def test_widths_and_cuts_are_multiples_of_the_tensor_parallel_degree():
    """The unit form of the test above: collate rounds a micro-batch's width up, unpadded_rows each row's cut
    (never past the batch's width)."""
    from llamaforge.train.finetune import collate
    from llamaforge.train.trainer import unpadded_rows

    x, y = collate([([5] * 7, [IGNORE] * 3 + [1] * 4), ([5] * 3, [1] * 3)], pad_id=0, multiple=4)
    assert x.shape == y.shape == (2, 8) and (y[:, 7] == IGNORE).all()
    assert [tuple(r.shape) for r, _ in unpadded_rows(x, y, multiple=4)] == [(1, 8), (1, 4)]
    assert [tuple(r.shape) for r, _ in unpadded_rows(x, y)] == [(1, 7), (1, 3)]


@pytest.mark.slow
def test_lora_resume_with_another_rank_names_what_differs(tmp_path, capsys):
    """Resuming a LoRA finetune with another --lora.rank names the LoRA setting saved vs given (not the unused
    [model] preset of the recipe), and nothing is written over the run."""
    model, tok = stories()
    data = shared_path("alpaca/alpaca_5000.json")
    out = tmp_path / "run"
    base = ["finetune", str(model), "--tokenizer", str(tok), "--data", str(data), "--out", str(out), *COMMON,
            "--finetune.max_examples=64", "--finetune.val_examples=8", "--method", "lora", "--lora.targets=all",
            "--checkpoint.every=1", "--metrics.val_every=0"]
    assert main([*base, "--lora.rank=8", "--training.steps=1"]) == 0
    capsys.readouterr()
    before = (out / "metrics.jsonl").read_bytes()
    rc = main([*base, "--lora.rank=4", "--training.steps=2", "--resume", "auto"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert "lora.rank: saved 8, given 4" in err[0] and "tiny-1m" not in err[0], err
    assert (out / "metrics.jsonl").read_bytes() == before
