"""`llamaforge run`: flow config errors are one line, stages skip what is done and refuse a changed finished stage,
--until / --from / --dry-run, the tokenizer sample follows the mixture weights, the mixture plan table; and a sweep of
every recipe field with a bad value (one `error:` line, exit 2, no traceback)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import one_error_line

from llamaforge.cli import main
from llamaforge.data.mixture import TABLE1, format_plan, plan_mixture
from llamaforge.run.flow import STAGES

FLOW = """
[run]
out = "{out}"
workers = 1

[sources.code]
kind = "builtin"
weight = 0.7
options = {{ part = "code", max_mb = 0.1 }}

[sources.docs]
kind = "builtin"
weight = 0.3
options = {{ part = "docs", max_mb = 0.1 }}

[tokenizer]
vocab_size = 600
sample_mb = 0.1

[train]
recipe = "demo"
set = {{ "training.steps" = 2, "model.dim" = 32, "model.n_layers" = 1, "metrics.progress" = false }}

[eval]
tasks = []

[export]
formats = ["hf"]
"""


@pytest.fixture
def flow_file(tmp_path) -> Path:
    path = tmp_path / "flow.toml"
    path.write_text(FLOW.format(out=tmp_path / "run"))
    return path


@pytest.mark.parametrize("edit, words", [
    (lambda s: s + "\n[nosuch]\nx = 1\n", ["nosuch", "unknown section"]),
    (lambda s: s.replace('workers = 1', 'workers = "two"'), ["run.workers", "expected an integer"]),
    (lambda s: s.replace('kind = "builtin"\nweight = 0.7', 'kind = "blogs"\nweight = 0.7'), ["sources.code.kind",
                                                                                            "commoncrawl"]),
    (lambda s: s.replace('weight = 0.7', 'weight = -1'), ["sources.code.weight"]),
    (lambda s: s.replace('part = "code"', 'part = "tests"'), ["sources.code.options"]),
    (lambda s: s + '\n[sources.web]\nkind = "commoncrawl"\ninputs = ["/no/such/dump"]\n', ["sources.web.inputs",
                                                                                           "/no/such/dump"]),
    (lambda s: s + '\n[sources.wiki]\nkind = "wikipedia"\ninputs = ["."]\noptions = { badwords = "x" }\n',
     ["sources.wiki.options.badwords", "languages"]),
    (lambda s: s + '\n[sources.web]\nkind = "github"\n', ["sources.web.inputs", "at least one"]),
    (lambda s: s.replace("vocab_size = 600", "vocab_size = 100"), ["tokenizer.vocab_size", "260"]),
    (lambda s: s.replace("tasks = []", 'tasks = ["hellaswagg"]'), ["eval.tasks", "hellaswagg"]),
    (lambda s: s.replace('formats = ["hf"]', 'formats = ["onnx"]'), ["export.formats", "onnx"]),
    (lambda s: s.replace('"training.steps" = 2', '"training.steps" = "many"'), ["train.set.training.steps",
                                                                               "expected int"]),
    (lambda s: s.replace('"model.dim" = 32', '"model.dim" = 30'), ["model", "n_heads"]),
    (lambda s: s.replace('"training.steps" = 2', '"steps" = 2'), ["train.set", "section.key"]),
    (lambda s: s.replace("[tokenizer]", "[tokenizer]\nsize = 3"), ["tokenizer.size", "unknown key"]),
    # a tokenizer no loader reads (was refused only after the prepare stage had run), or none at all
    (lambda s: s.replace("[tokenizer]", '[tokenizer]\npath = "llama.vocab"'), ["tokenizer.path: llama.vocab",
                                                                              ".model, .tiktoken, .json or .bin"]),
    (lambda s: s.replace("[tokenizer]", '[tokenizer]\npath = "/no/such/tokenizer.model"'), ["tokenizer.path",
                                                                                           "no such file"]),
])
def test_flow_config_mistakes_are_one_line(tmp_path, flow_file, capsys, edit, words):
    flow_file.write_text(edit(flow_file.read_text()))
    rc = main(["run", str(flow_file)])
    one_error_line(capsys, rc, str(flow_file), *words)
    assert not (tmp_path / "run").exists(), "nothing is written before the config is known to be good"


def test_override_forms(flow_file, capsys):
    rc = main(["run", str(flow_file), "--sources.code.weight=oops"])
    one_error_line(capsys, rc, "sources.code.weight", "number")
    rc = main(["run", str(flow_file), "--run.out.x=1"])
    one_error_line(capsys, rc, "run.out", "--run.out=VALUE")
    rc = main(["run", str(flow_file), "--from", "train", "--until", "tokenize"])
    one_error_line(capsys, rc, "--from train")


def test_stages_skip_refuse_and_redo(tmp_path, flow_file, capsys):
    out = tmp_path / "run"
    assert main(["run", str(flow_file), "--until", "tokenize", "--no-progress"]) == 0
    for key in ("prepare.code", "prepare.docs", "tokenizer", "tokenize.code", "tokenize.docs"):
        assert (out / ".done" / f"{key}.json").is_file(), key
    assert not (out / "train").exists()
    tok = out / "tokenizer" / "tokenizer.model"
    before = tok.stat().st_mtime_ns
    sample = json.loads((out / "tokenizer" / "sample.json").read_text())
    assert sample["code"]["weight"] == pytest.approx(0.7) and sample["docs"]["weight"] == pytest.approx(0.3)
    capsys.readouterr()

    assert main(["run", str(flow_file), "--until", "tokenize", "--no-progress"]) == 0  # all done: nothing redone
    assert tok.stat().st_mtime_ns == before and "done before" in capsys.readouterr().out

    rc = main(["run", str(flow_file), "--until", "tokenize", "--tokenizer.vocab_size=640"])
    one_error_line(capsys, rc, "tokenizer", "600 -> 640", "--from tokenizer")
    assert tok.stat().st_mtime_ns == before  # refused, not silently redone

    rc = main(["run", str(flow_file), "--dry-run", "--tokenizer.vocab_size=640"])
    out_text = capsys.readouterr().out
    assert rc == 0 and "changed: refused" in out_text and "mixture plan" in out_text
    assert "prepare    done: skipped" in out_text and "the standard library" in out_text

    assert main(["run", str(flow_file), "--until", "tokenizer", "--from", "tokenizer",
                 "--tokenizer.vocab_size=640", "--no-progress"]) == 0
    from llamaforge import load_tokenizer

    assert load_tokenizer(tok).vocab_size == 640
    assert not (out / ".done" / "tokenize.code.json").exists()  # the stages after --from are forgotten too
    assert (out / ".done" / "prepare.code.json").is_file()  # the ones before it are kept


def test_weighted_tokenizer_sample(tmp_path):
    """Each source's share of the tokenizer's sample is its mixture weight, not its share of the bytes."""
    from llamaforge.data.tokenizer_training import weighted_sample

    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    big.write_text("".join(json.dumps({"text": f"big line number {i} with some words"}) + "\n" for i in range(20000)))
    small.write_text("".join(json.dumps({"text": f"small {i}"}) + "\n" for i in range(300)))
    sample, stats = weighted_sample({"big": [big], "small": [small]}, {"big": 0.5, "small": 0.5}, 20_000)
    assert stats["small"]["bytes_sampled"] == stats["small"]["bytes_available"] < 10_000  # all of the small one
    assert 9_000 < stats["big"]["bytes_sampled"] < 10_050  # half the budget (+ the last sentence), not ~99%
    assert len(sample) == stats["big"]["sentences"] + stats["small"]["sentences"]
    again, _ = weighted_sample({"big": [big], "small": [small]}, {"big": 0.5, "small": 0.5}, 20_000)
    assert again == sample  # seeded


def test_mixture_plan_table():
    """Table 1's weights on a small CommonCrawl slice: the plan says CC is repeated, books mostly unused."""
    available = {"commoncrawl": 100_000, "books": 10_000_000}
    weights = {n: TABLE1[n]["weight"] for n in available}
    rows, warnings = plan_mixture(available, weights, 1_000_000)
    cc = next(r for r in rows if r["source"] == "commoncrawl")
    w_cc = 0.67 / (0.67 + 0.045)
    assert cc["planned_tokens"] == round(w_cc * 1_000_000)
    assert cc["planned_epochs"] == pytest.approx(w_cc * 10) and cc["paper_epochs"] == 1.10
    assert any("commoncrawl will be repeated 9.4 times" in w for w in warnings)
    assert any(w.startswith("warning: books: only 1%") for w in warnings)
    text = format_plan(rows, warnings)
    assert "paper epochs" in text.splitlines()[0] and "2.23" in text
    rows, warnings = plan_mixture({"commoncrawl": 1_000_000}, {"commoncrawl": 1.0}, 1_100_000)
    assert warnings == []  # 1.1 epochs, as in the paper


RECIPE_SECTIONS = ("model", "data", "optim", "training", "parallel", "checkpoint", "metrics")


def _bad_values():
    """(override, reason) for every recipe field: a value of the wrong type, plus values out of range."""
    from llamaforge.model import ModelArgs
    from llamaforge.train.config import TrainConfig

    cases = []
    cfg = TrainConfig()
    for section in RECIPE_SECTIONS:
        sub = getattr(cfg, section)
        for f in dataclasses.fields(sub):
            value = getattr(sub, f.name)
            if isinstance(value, dict):
                bad = "5"
            elif isinstance(value, bool):
                bad = '"yes"'
            elif isinstance(value, (int, float)):
                bad = '"many"'
            else:
                bad = "[1]"
            cases.append(f"--{section}.{f.name}={bad}")
    for f in dataclasses.fields(ModelArgs):
        cases.append(f"--model.{f.name}=[1]")
    cases += ["--model.preset=llama-8b", "--model.n_heads=5", "--model.dim=0", "--model.n_layers=-1",
              "--model.vocab_size=0", "--data.seq_len=0", "--data.kind=web", "--training.steps=0",
              "--training.micro_batch_size=0", "--training.batch_tokens=0", "--training.dtype=fp8",
              "--training.device=tpu", "--optim.lr=-1", "--optim.lr=0", "--optim.beta1=1.5", "--optim.beta2=-0.1",
              "--optim.eps=0", "--optim.weight_decay=-1", "--optim.warmup_steps=-5", "--optim.min_lr_ratio=2",
              "--optim.grad_clip=-1", "--parallel.tp=0", "--parallel.dp_shard=0", "--checkpoint.every=-1",
              "--metrics.log_every=0", "--metrics.val_every=-1",
              "--metrics.val_batches=0", "--training.spike_window=-1", "--training.spike_zscore=0",
              "--data.weights={a = 1}", "--data.sources.x=/no/such/shards"]
    return cases


@pytest.mark.parametrize("override", _bad_values())
def test_recipe_field_sweep_one_error_line(tmp_path, capsys, override):
    rc = main(["train", "--recipe", "debug", "--out", str(tmp_path / "out"), override])
    one_error_line(capsys, rc)
    assert not (tmp_path / "out").exists()


def test_stage_names_are_the_documented_ones():
    assert STAGES == ("prepare", "tokenizer", "tokenize", "train", "eval", "export", "report")


@pytest.mark.parametrize("override", ["--tokenizer.vocab_size=-3", "--export.formats=[\"x\"]",
                                      "--sources.code.weight=oops"])
def test_override_errors_name_the_flag(flow_file, capsys, override):
    """A bad value given on the command line is blamed on its flag, not on the flow file that does not hold it."""
    rc = main(["run", str(flow_file), "--dry-run", override])
    line = one_error_line(capsys, rc)
    assert line.startswith(f"error: {override.split('=')[0]}: "), line


def test_commoncrawl_gets_the_flows_wikipedia_for_its_model_steps(tmp_path):
    """The CCNet LM and the reference classifier are trained on Wikipedia: a flow with a Wikipedia source hands its
    dump to the CommonCrawl source (so every paper step runs by default); an explicit `models` or `wikipedia` wins."""
    from llamaforge.run.config import load_flow
    from llamaforge.run.flow import Flow

    wiki, cc = tmp_path / "enwiki-pages-articles.xml.bz2", tmp_path / "cc.jsonl.gz"
    wiki.write_bytes(b""), cc.write_bytes(b"")
    path = tmp_path / "flow.toml"
    path.write_text(f'[run]\nout = "{tmp_path / "run"}"\n'
                    f'[sources.cc]\nkind = "commoncrawl"\ninputs = ["{cc}"]\n'
                    f'[sources.wiki]\nkind = "wikipedia"\ninputs = ["{wiki}"]\n'
                    '[train]\nrecipe = "debug"\n[eval]\ntasks = []\n[export]\nformats = []\n')
    flow = Flow(load_flow(str(path)), progress=False)
    assert flow.source_options("cc")["wikipedia"] == [str(wiki.resolve())]
    assert flow.stage_configs()["prepare.cc"]["options"]["wikipedia"] == [str(wiki.resolve())]
    assert "wikipedia" not in flow.source_options("wiki")
    flow = Flow(load_flow(str(path), ["--sources.cc.options.models=/m"]), progress=False)
    assert "wikipedia" not in flow.source_options("cc")


def test_single_value_override_of_a_list_field_is_a_one_element_list(tmp_path, capsys):
    """`--sources.X.inputs=/path` (no TOML brackets) is the list ["/path"], as torchtitan/litgpt-style overrides
    read it; likewise `--eval.tasks=NAME` and `--export.formats=FMT`. A wrong element type is still one error line."""
    from llamaforge.cli import main
    from llamaforge.run.config import load_flow

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"text": "x"}\n'), b.write_text('{"text": "y"}\n')
    path = tmp_path / "flow.toml"
    path.write_text(f'[run]\nout = "{tmp_path / "run"}"\n[sources.web]\nkind = "jsonl"\ninputs = ["{a}"]\n'
                    '[train]\nrecipe = "debug"\n[eval]\ntasks = []\n[export]\nformats = []\n')
    flow = load_flow(str(path), [f"--sources.web.inputs={b}", "--eval.tasks=hellaswag", "--export.formats=gguf"])
    assert flow.sources["web"].inputs == [str(b)]
    assert flow.eval.tasks == ["hellaswag"] and flow.export.formats == ["gguf"]
    assert load_flow(str(path), [f'--sources.web.inputs=["{a}", "{b}"]']).sources["web"].inputs == [str(a), str(b)]
    assert main(["run", str(path), "--dry-run", "--sources.web.inputs=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "inputs" in err[0] and "strings" in err[0], err
    assert not (tmp_path / "run").exists()
