"""Mistakes a new user made on real input (helper "user", notes/user.md): each is refused with one `error:` line
naming the flag, exit 2, before any work, where it used to run and print a wrong result."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import one_error_line, shared_path
from llamaforge import cli
from llamaforge.formats import save_model
from llamaforge.model import ModelArgs, Transformer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny native checkpoint with Llama 2's tokenizer beside it, and a 3-item multiple-choice task file."""
    import shutil

    tok = shared_path("llama2-tokenizer/tokenizer.model")
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("user")
    save_model(Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=32000, multiple_of=16,
                                     max_seq_len=64)), root / "m", format="native")
    shutil.copy(tok, root / "m" / "tokenizer.model")
    items = [{"query": f"Question {i}:", "choices": [" yes", " no"], "gold": i % 2} for i in range(3)]
    (root / "t.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    return root


@pytest.mark.parametrize("flag, value", [("--limit", "-1"), ("--limit", "0"), ("--shots", "-1"),
                                         ("--batch-size", "0"), ("--samples", "0")])
def test_eval_counts_below_range_are_refused(model_dir, tmp_path, capsys, flag, value):
    """`--limit -1` was `items[:-1]` (all but the last item, reported as a normal result), `--limit 0` all items,
    `--shots -1` printed shots=-1 in the table, `--batch-size 0` ran silently."""
    out = tmp_path / "r.json"
    capsys.readouterr()
    rc = cli.main(["eval", str(model_dir / "m"), "--task-file", str(model_dir / "t.jsonl"), "--out", str(out),
                   flag, value])
    one_error_line(capsys, rc, startswith=f"error: {flag}: expected an integer >= ")
    assert not out.exists()


def test_eval_limit_in_range_still_limits(model_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli.main(["eval", str(model_dir / "m"), "--task-file", str(model_dir / "t.jsonl"), "--limit", "2",
                     "--out", str(out)]) == 0
    assert '| 2 |' in out.with_suffix(".md").read_text()


def test_library_refuses_negative_limit(model_dir):
    from llamaforge import load_model_and_tokenizer
    from llamaforge.errors import UserError
    from llamaforge.eval import evaluate_task_file
    from llamaforge.eval.scoring import Scorer

    model, tok = load_model_and_tokenizer(str(model_dir / "m"))
    with pytest.raises(UserError, match="limit: expected an integer >= 1"):
        evaluate_task_file(Scorer(model, tok), model_dir / "t.jsonl", limit=-1)


@pytest.mark.parametrize("command", ["generate", "eval"])
@pytest.mark.parametrize("device, names", [("nosuch", "--device: expected a torch device"),
                                           ("cuda:99", "--device: 'cuda:99'")])
def test_device_this_machine_lacks_is_one_line(model_dir, capsys, command, device, names):
    """`generate --device cuda` on a CPU-only torch was an AssertionError traceback, `--device nosuch` a
    RuntimeError traceback (every command that loads a model: generate, chat, serve, eval)."""
    extra = ["--prompt", "x"] if command == "generate" else ["--task-file", str(model_dir / "t.jsonl")]
    capsys.readouterr()
    rc = cli.main([command, str(model_dir / "m"), "--device", device, *extra])
    one_error_line(capsys, rc, names)


@pytest.mark.parametrize("command", ["generate", "chat", "serve", "eval"])
def test_model_commands_share_one_device_policy(command, monkeypatch):
    """--device / --dtype / --tokenizer were declared in each command with its own default (eval: cuda when
    present, serve/generate/chat: always cpu). Now one declaration (commands/args.py): default `auto`, which is
    cuda exactly when torch sees a GPU, else cpu; an explicit device passes through unchanged."""
    from llamaforge.commands.args import resolve_device

    extra = ["--prompt", "x"] if command == "generate" else []
    args = cli.build_parser(only=command).parse_args([command, "m", *extra])
    assert (args.device, args.dtype, args.tokenizer) == ("auto", "float32", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(args.device) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(args.device) == "cpu"
    assert resolve_device("cuda:1") == "cuda:1"


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_prepare_workers_below_one_is_refused(tmp_path, capsys, workers):
    """`prepare books ... --workers 0` (or -3) ran as if 1 was given; now one line, exit 2, nothing written."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "b.txt").write_text("A small book.\n" * 50)
    out = tmp_path / "out"
    capsys.readouterr()
    rc = cli.main(["prepare", "books", str(tmp_path / "in"), "--out", str(out), "--workers", workers, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: --workers: expected a count >= 1, got {workers}"], err
    assert not out.exists()


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_tokenize_workers_below_one_is_refused(tmp_path, capsys, workers):
    (tmp_path / "d.jsonl").write_text('{"text": "hello world"}\n')
    capsys.readouterr()
    rc = cli.main(["tokenize", "--tokenizer", str(shared_path("llama2-tokenizer/tokenizer.model")), "--input",
                   str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "s"), "--workers", workers])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: --workers: expected a count >= 1, got {workers}"], err
    assert not (tmp_path / "s").exists()


def test_prepare_wikipedia_refuses_a_file_that_is_not_a_dump(tmp_path, capsys):
    """A Stack Exchange Posts.xml given to `prepare wikipedia` by name was read as a dump with 0 pages and written
    as an empty shard, exit 0. Now: one line naming the file and what was expected, exit 2, nothing written."""
    posts = shared_path("stackexchange/beer.stackexchange.com-Posts.xml")
    out = tmp_path / "out"
    capsys.readouterr()
    rc = cli.main(["prepare", "wikipedia", str(posts), "--out", str(out), "--no-progress"])
    one_error_line(capsys, rc, startswith=f"error: {posts}: expected a MediaWiki XML dump")
    assert not out.exists()


def test_prepare_wikipedia_still_takes_the_real_dump_by_name():
    from llamaforge.data.sources.wikipedia import build

    dump = shared_path("wikipedia-xml/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    assert build([str(dump)]).shards == [str(dump)]


def test_convert_with_a_tokenizer_larger_than_the_model_is_refused(model_dir, tmp_path, capsys):
    """`convert M OUT --tokenizer llama3` on a 32000-row model wrote a model + tokenizer pair that generate then
    refuses; convert now applies the same check (`formats.check_tokenizer_fits`) before writing anything."""
    llama3 = shared_path("llama3-tokenizer/tokenizer.model")
    out = tmp_path / "out"
    capsys.readouterr()
    rc = cli.main(["convert", str(model_dir / "m"), str(out), "--to", "hf", "--tokenizer", str(llama3)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: {llama3}: tokenizer has 128256 tokens, the model only 32000 embedding rows; "
                               "expected the model's own tokenizer"], err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("dst", ["/proc/llamaforge-user-test", "/proc/self/nosuch/m"])
def test_convert_to_an_unwritable_place_is_one_line(model_dir, capsys, dst):
    """`convert M /proc/x` was a FileNotFoundError traceback from mkdtemp (any writer using io.atomic_dir/file)."""
    capsys.readouterr()
    rc = cli.main(["convert", str(model_dir / "m"), dst, "--to", "hf"])
    one_error_line(capsys, rc, startswith=f"error: {dst}: cannot write here (")


def test_flow_dry_run_refuses_a_bad_train_recipe_as_the_run_does(tmp_path, capsys):
    """`llamaforge run FLOW --dry-run` with `[train] set = {"optim.lr" = -1}` printed "training: not planned: ..."
    and exited 0, while the real run refuses the same flow at once with exit 2. A dry run exists to catch that."""
    books = tmp_path / "books"
    books.mkdir()
    (books / "b.txt").write_text("A small book.\n" * 50)
    flow = tmp_path / "f.toml"
    flow.write_text(f'[run]\nout = "{tmp_path / "run"}"\n[sources.books]\nkind = "books"\ninputs = ["{books}"]\n'
                    '[train]\nset = { "optim.lr" = -1 }\n')
    for extra in (["--dry-run"], []):
        capsys.readouterr()
        rc = cli.main(["run", str(flow), "--no-progress", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err == [f"error: {flow}: train: optim.lr: expected a number in (0, 10], got -1.0"], err
    assert not (tmp_path / "run").exists()
    # stopping before training, the recipe is not needed: the dry run says so and succeeds
    assert cli.main(["run", str(flow), "--dry-run", "--until", "tokenize"]) == 0
    assert "training: not planned" in capsys.readouterr().out


@pytest.mark.parametrize("progress", [False, True])
def test_flow_no_progress_reaches_the_training_bar(tmp_path, monkeypatch, progress):
    """`llamaforge run FLOW --no-progress` still drew tqdm's training bar (the recipe's metrics.progress won)."""
    import llamaforge.train
    from llamaforge.run import Flow, load_flow

    flow_file = tmp_path / "f.toml"
    flow_file.write_text(f'[run]\nout = "{tmp_path / "run"}"\n[sources.books]\nkind = "books"\n'
                         f'inputs = ["{tmp_path}"]\n[train]\nrecipe = "demo"\n')
    seen = []

    class Stop(Exception):
        pass

    def fake_train(cfg, *a, **k):
        seen.append(cfg.metrics.progress)
        raise Stop

    monkeypatch.setattr(llamaforge.train, "train", fake_train)
    flow = Flow(load_flow(str(flow_file)), progress=progress)
    monkeypatch.setattr(flow, "check_unchanged", lambda *a: False)
    with pytest.raises(Stop):
        flow.stage_train(flow.stage_configs())
    assert seen == [progress]


@pytest.mark.parametrize("host", ["127.0.0.1", "no-such-host.invalid"])
def test_serve_on_a_port_in_use_or_a_bad_host_is_one_line(model_dir, capsys, host):
    """`serve M --port P` with P in use: uvicorn logged `ERROR: [Errno 98] ... address already in use` after loading
    the model and exited 3. Now one line, exit 2, before the model is loaded."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        capsys.readouterr()
        rc = cli.main(["serve", str(model_dir / "m"), "--host", host, "--port", str(port)])
    one_error_line(capsys, rc, startswith=f"error: --host/--port: cannot listen on {host}:{port} (")


@pytest.mark.parametrize("flag, value", [("--vocab-size", "0"), ("--vocab-size", "-5"), ("--max-sentences", "0")])
def test_tokenizer_train_counts_below_one(tmp_path, capsys, flag, value):
    """`tokenizer train --vocab-size 0` answered with SentencePiece's internals
    (`INTERNAL: src/trainer_interface.cc(78) [(trainer_spec.vocab_size()) > (0)]`)."""
    (tmp_path / "d.jsonl").write_text('{"text": "hello world"}\n')
    flags = {"--vocab-size": "300", "--max-sentences": "1000", flag: value}
    argv = ["tokenizer", "train", "--input", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "tok")]
    argv += [x for kv in flags.items() for x in kv]
    capsys.readouterr()
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: {flag}: expected a positive integer, got {value}"], err
    assert not list(tmp_path.glob("tok*")) and not list(tmp_path.glob(".tok*"))


def test_resume_mistakes_say_what_is_wrong(tmp_path, capsys):
    """`train --resume /nonexist` talked about trust (--trust-checkpoint) for a folder that does not exist; resuming
    into another model shape printed torch's `[<FrameSummary file ...>, ...]` inside the error line."""
    out = tmp_path / "run"
    base = ["train", "--recipe", "debug", "--out", str(out), "--training.steps=2", "--checkpoint.every=2",
            "--metrics.val_every=0"]
    assert cli.main(base) == 0
    capsys.readouterr()
    assert cli.main([*base, "--resume", str(tmp_path / "nonexist")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'nonexist'}: --resume: no such checkpoint folder; expected "
                   "OUT/checkpoints/step_N or 'auto'"], err
    rc = cli.main([*base, "--resume", "auto", "--training.steps=4", "--model.dim=128"])
    assert "FrameSummary" not in one_error_line(capsys, rc, "Size mismatch")


def assert_prepare_refuses_kind(tmp_path, capsys, source: str, given: str, kind: str) -> None:
    """`prepare SOURCE FILE` on a staged file of another kind: one error line naming the file, the source and
    what the file is, exit 2, nothing written."""
    path = shared_path(given)
    out = tmp_path / "out"
    capsys.readouterr()
    rc = cli.main(["prepare", source, str(path), "--out", str(out), "--no-progress"])
    one_error_line(capsys, rc, startswith=f"error: {path}: {source}: this is {kind}; expected")
    assert not out.exists()


@pytest.mark.parametrize("source, given, kind", [
    ("books", "commoncrawl/dolma-tests/warc_sample-0000.warc.gz", "a WARC file"),
    ("books", "stackexchange/beer.stackexchange.com-Posts.xml", "an XML file"),
    ("books", "llama2-tokenizer/tokenizer.model", "a binary file"),
    ("arxiv", "stackexchange/beer.stackexchange.com-Posts.xml", "an XML file"),
    ("arxiv", "commoncrawl/whirlwind/whirlwind.warc.wet.gz", "a WARC file"),
])
def test_prepare_refuses_a_file_of_another_kind(tmp_path, capsys, source, given, kind):
    """`prepare books warc_sample-0000.warc.gz` kept the decompressed WARC (HTTP headers and HTML) as one "book",
    exit 0; `prepare arxiv Posts.xml` dropped it as `no_section`, exit 0. Now one line naming file and kind, exit 2."""
    assert_prepare_refuses_kind(tmp_path, capsys, source, given, kind)


def test_prepare_books_and_arxiv_still_take_their_own_kind(tmp_path):
    from llamaforge.data.sources import build_source

    book = shared_path("gutenberg/pg11_alice_in_wonderland.txt")  # UTF-8 with a BOM and CRLF
    assert build_source("books", [str(book)]).shards == [str(book)]
    tex = shared_path("arxiv-latex/1707.08043/main.tex")
    assert build_source("arxiv", [str(tex)]).shards == [str(tex)]


def test_finetune_on_an_empty_json_list_says_why(model_dir, tmp_path, capsys):
    """`finetune M --data empty.json` (`[]`) said `no usable examples ()`: empty parentheses, no expectation."""
    data = tmp_path / "empty.json"
    data.write_text("[]\n")
    capsys.readouterr()
    rc = cli.main(["finetune", str(model_dir / "m"), "--data", str(data), "--out", str(tmp_path / "ft")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: {data}: no usable examples (the file holds no examples); expected Alpaca "
                               "records, chat JSONL or prompt/completion JSONL"], err
    assert not (tmp_path / "ft").exists()


def test_dry_run_estimate_of_a_compressed_dump_is_not_called_an_upper_bound(tmp_path, capsys):
    """`run seven-sources --dry-run` said wikipedia had "at most ~423,967 tokens (raw bytes / 4)" from the 1.7 MB
    .bz2 size; the dump holds 6.3 MB of text and tokenized to 1.1M tokens. Compressed inputs no longer claim a bound."""
    dump = shared_path("wikipedia-xml")
    flow = tmp_path / "f.toml"
    flow.write_text(f'[run]\nout = "{tmp_path / "run"}"\n[sources.wikipedia]\nkind = "wikipedia"\n'
                    f'inputs = ["{dump}"]\noptions = {{ languages = ["en"] }}\n')
    capsys.readouterr()
    assert cli.main(["run", str(flow), "--dry-run"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("wikipedia"))
    assert "at most" not in line and "compressed bytes" in line, line


def test_train_on_tokenized_shards_puts_their_tokenizer_beside_the_final_model(tmp_path, capsys):
    """`tokenize` then `train --data.kind=shards ...` wrote OUT/final without a tokenizer, so `generate OUT/final`
    failed with "no tokenizer found" right after training; the shard headers record the tokenizer (path + sha256)."""
    tok = shared_path("llama2-tokenizer/tokenizer.model")
    (tmp_path / "d.jsonl").write_text("".join(f'{{"text": "Document {i}: the cat sat on the mat."}}\n'
                                              for i in range(200)))
    assert cli.main(["tokenize", "--tokenizer", str(tok), "--input", str(tmp_path / "d.jsonl"), "--out",
                     str(tmp_path / "shards")]) == 0
    out = tmp_path / "run"
    assert cli.main(["train", "--recipe", "debug", "--out", str(out), "--training.steps=1", "--data.kind=shards",
                     f"--data.sources.d={tmp_path / 'shards' / 'd'}", "--model.vocab_size=32000",
                     "--metrics.val_every=0"]) == 0
    assert (out / "final" / "tokenizer.model").read_bytes() == tok.read_bytes()
    capsys.readouterr()
    assert cli.main(["generate", str(out / "final"), "--prompt", "The cat", "--max-new-tokens", "2"]) == 0


@pytest.mark.parametrize("source, given, kind", [
    ("c4", "gutenberg/pg11_alice_in_wonderland.txt", "a text file, not JSON lines"),
    ("commoncrawl", "stackexchange/beer.stackexchange.com-Posts.xml", "an XML file"),
    ("github", "stackexchange/beer.stackexchange.com-Posts.xml", "an XML file"),
    ("github", "gutenberg/pg11_alice_in_wonderland.txt", "a text file, not JSON lines"),
])
def test_prepare_jsonl_sources_refuse_a_file_of_another_kind(tmp_path, capsys, source, given, kind):
    """`prepare c4 alice.txt` read every line as bad JSON and exited 0 with 0 documents and an empty shard (same for
    commoncrawl / github given Posts.xml). Now one line naming the file and what was expected, exit 2, nothing
    written."""
    assert_prepare_refuses_kind(tmp_path, capsys, source, given, kind)


def test_prepare_jsonl_sources_still_take_their_own_kind():
    from llamaforge.data.sources import build_source

    for name in ("multiple_files_cc_en_head-0091.jsonl.gz", "provided_documents_000.json.gz",
                 "warc_sample-0000.warc.gz"):
        path = str(shared_path(f"commoncrawl/dolma-tests/{name}"))
        assert build_source("c4", [path]).shards == [path]
    wet = str(shared_path("commoncrawl/whirlwind/whirlwind.warc.wet.gz"))
    assert build_source("c4", [wet]).shards == [wet]


def test_seven_sources_dry_run_flags_a_source_without_inputs(tmp_path, capsys, monkeypatch):
    """The shipped flow's `--dry-run` (as its own comment suggests) failed like a broken config because
    ../shared/data has no github folder. The dry run now prints its plan and flags that source in one line; the
    real run still refuses in one line that names the flag to pass."""
    from pathlib import Path

    shared_path("wikipedia-xml")  # skips without ../shared/data
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the flow's paths are relative to the repo root
    if Path("../shared/data/github").exists():
        pytest.skip("../shared/data has a github folder here")
    out = [f"--run.out={tmp_path / 'run'}"]
    capsys.readouterr()
    assert cli.main(["run", "seven-sources", "--dry-run", *out]) == 0
    printed = capsys.readouterr().out.splitlines()
    flagged = [line for line in printed if "NO INPUTS" in line]
    assert len(flagged) == 1 and flagged[0].split()[0] == "github", printed
    assert "--sources.github.inputs=" in flagged[0] and "the run refuses" in flagged[0]
    assert any(line.split()[:1] == ["wikipedia"] and "shard(s)" in line for line in printed), printed
    rc = cli.main(["run", "seven-sources", "--until", "prepare", *out])
    one_error_line(capsys, rc, "sources.github.inputs: ../shared/data/github: no such file or folder",
                   "pass --sources.github.inputs=")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", ["", "not json\n", '{"text": ""}\n'])
def test_failed_tokenize_leaves_no_out_folder(tmp_path, capsys, content):
    """A failed `tokenize ... --out s3` (empty input, bad JSON, no text) left an empty `s3/` behind. The folders a
    failed write created are removed again (`io.atomic_dir` / `io.atomic_file`); ones that were there stay."""
    tok = shared_path("llama2-tokenizer/tokenizer.model")
    data = tmp_path / "in.jsonl"
    data.write_text(content)
    out = tmp_path / "s3"
    capsys.readouterr()
    rc = cli.main(["tokenize", "--tokenizer", str(tok), "--input", str(data), "--out", str(out / "deeper")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: "), err
    assert not out.exists()


def test_failed_atomic_write_removes_only_the_folders_it_created(tmp_path):
    from llamaforge.io import atomic_dir, atomic_file

    kept = tmp_path / "kept"
    kept.mkdir()
    for writer in (atomic_dir, atomic_file):
        with pytest.raises(RuntimeError):
            with writer(kept / "a" / "b" / "target"):
                raise RuntimeError("the write failed")
        assert kept.is_dir() and list(kept.iterdir()) == []
    with atomic_file(kept / "a" / "ok.txt", "w") as f:
        f.write("x")
    assert (kept / "a" / "ok.txt").read_text() == "x"
