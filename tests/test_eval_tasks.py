"""Task files, task loaders, metrics, results, perplexity, generation and the `llamaforge eval` command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import shared_path

from llamaforge.cli import main
from llamaforge.errors import UserError
from llamaforge.eval.items import (
    ChoiceItem,
    ContinuationItem,
    exact_match,
    majority,
    normalize_answer,
)
from llamaforge.eval.perplexity import document_nll, windows
from llamaforge.eval.results import aggregate, markdown_table, to_json
from llamaforge.eval.scoring import Scorer
from llamaforge.infer.detok import cut_at_stop
from llamaforge.eval.taskfile import load_task_file
from llamaforge.eval.tasks import TASKS, get_task
from llamaforge.eval.tasks.gsm8k import extract_number


@pytest.fixture(scope="module")
def stories():
    from llamaforge import load_model, load_tokenizer

    return load_model(shared_path("stories260K/stories260K.bin")), load_tokenizer(shared_path("stories260K/tok512.bin"))


# ---------------------------------------------------------------------------------------------------------------
# task files


def write(tmp_path, lines, name="task.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_task_file_formats(tmp_path):
    mc = load_task_file(write(tmp_path, ['{"query": "Q", "choices": ["a", "b"], "gold": 1}'], "mc.jsonl"))
    assert mc == [ChoiceItem(["Q", "Q"], [" a", " b"], 1, ["a", "b"])]
    schema = load_task_file(write(tmp_path, ['{"context_options": ["A x", "B x"], "continuation": "y", "gold": 0}'],
                                  "schema.jsonl"))
    assert schema == [ChoiceItem(["A x", "B x"], [" y", " y"], 0, ["y", "y"])]
    lm = load_task_file(write(tmp_path, ['{"context": "Once", "continuation": " upon"}'], "lm.jsonl"))
    assert lm == [ContinuationItem("Once", " upon")]


@pytest.mark.parametrize("line, message", [
    ('{"query": "Q", "choices": ["a", "b"], "gold": 1', "not valid JSON"),
    ('["a", "b"]', "expected a JSON object"),
    ('{"query": "Q", "choices": ["a", "b"], "gold": 2}', "gold: expected an integer index in [0, 2)"),
    ('{"query": "Q", "choices": "ab", "gold": 0}', "choices: expected a list of at least 2 strings"),
    ('{"question": "Q", "answer": "a"}', "unknown line format"),
    ('{"context": "Once", "continuation": ""}', "continuation: expected a non-empty string"),
])
def test_malformed_task_file_names_file_and_line(tmp_path, line, message):
    good = '{"query": "Q", "choices": ["a", "b"], "gold": 0}'
    path = write(tmp_path, [good, "", line])
    with pytest.raises(UserError) as e:
        load_task_file(path)
    text = str(e.value)
    assert text.startswith(f"{path}:3: ") and message in text and "\n" not in text


def test_malformed_task_file_is_one_line_cli_error(tmp_path, capsys, stories):
    path = write(tmp_path, ['{"query": "Q", "choices": ["a"], "gold": 0}'])
    rc = main(["eval", str(shared_path("stories260K/stories260K.bin")), "--tokenizer",
               str(shared_path("stories260K/tok512.bin")), "--task-file", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {path}:1: choices:") and err.count("\n") == 1


@pytest.mark.parametrize("extra,message", [
    (["--tasks", "math", "--samples", "2", "--temperature", "-1"], "error: --temperature: expected a number >= 0"),
    (["--tasks", "truthfulqa_gen", "--judge", "notaurl"], "error: --judge: expected an http:// or https:// URL"),
    (["--tasks", "truthfulqa_gen", "--judge", "http://127.0.0.1:9/"], "error: --judge: http://127.0.0.1:9/: "),
])
def test_bad_sampling_or_judge_is_one_line(capsys, extra, message):
    """`--temperature -1` with --samples 2 was a RequestError traceback at the first sampled problem (after the
    model was loaded and the prompts built); `--judge notaurl` a ValueError from urllib and an unreachable judge a
    URLError traceback after the answers were generated. Each is one line, exit 2, nothing written."""
    rc = main(["eval", str(shared_path("stories260K/stories260K.bin")), "--tokenizer",
               str(shared_path("stories260K/tok512.bin")), "--data-dir", str(shared_path("")), "--limit", "1", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_unknown_task_and_missing_data(tmp_path):
    with pytest.raises(UserError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(UserError, match="no data for task openbookqa"):
        TASKS["openbookqa"].load(tmp_path, 0)


# ---------------------------------------------------------------------------------------------------------------
# loaders and metrics


def test_loaders_read_the_staged_data():
    data = shared_path("")
    hella = TASKS["hellaswag"].load(data, 0)
    assert len(hella) == 10042 and len(hella[0].choices) == 4 and hella[0].gold == 3
    mmlu = TASKS["mmlu"].load(data, 5)
    assert len(mmlu) == 14042 and mmlu[0].continuations == [" A", " B", " C", " D"]
    assert mmlu[0].contexts[0].count("\nAnswer:") == 6  # 5 shots + the question
    wino = TASKS["winogrande"].load(data, 0)
    assert wino[0].contexts[0] != wino[0].contexts[1] and wino[0].continuations[0] == wino[0].continuations[1]
    nq = TASKS["nq_open"].load(data, 5)
    assert len(nq) == 3610 and nq[0].prompt.startswith("Answer these questions:\nQ: ")
    assert nq[0].prompt.count("\nA: ") == 5 and nq[0].prompt.endswith("\nA:")


def test_normalized_exact_match():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the eiffel tower", ["Eiffel Tower"]) == 1.0
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    assert cut_at_stop("Paris, France.\nQ:", ["\n", ".", ","]) == "Paris"


def test_gsm8k_answer_extraction_and_majority():
    assert extract_number("so 3 + 4 = 7. The answer is 1,250.") == "1250"
    assert extract_number("no numbers") is None
    assert majority(["3", None, "5", "5", "3", "5"]) == "5"


def test_results_json_and_markdown():
    result = aggregate("piqa", 0, [{"acc": 1.0, "acc_norm": 0.0, "loglikelihoods": [1, 2]},
                                   {"acc": 0.0, "acc_norm": 0.0, "loglikelihoods": [3, 4]}], "acc_norm")
    result.paper = {"acc_norm": 79.8}
    out = to_json([result], {"model": "m"})
    assert out["results"]["piqa"]["acc"] == 0.5
    assert out["results"]["piqa"]["acc_stderr"] == pytest.approx(math.sqrt(0.5 / 2))
    table = markdown_table([result])
    assert "| piqa | acc_norm (paper's) | 0 | 2 | 0.0 | 0.0 | 79.8 |" in table


def test_results_file_is_strict_json_when_a_split_has_one_item(tmp_path):
    """A split of one item has no standard error: it was written as the bare token NaN, which is not JSON (RFC
    8259; jq and JavaScript's JSON.parse refuse the whole file). It is null now; the table leaves the cell empty."""
    from llamaforge.eval.results import write_results

    result = aggregate("winogender", 0, [{"acc": 1.0, "groups": ["gotcha"]}, {"acc": 0.0, "groups": []}], "acc")
    path, _ = write_results(tmp_path / "r.json", [result], {"model": "m"})

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    data = json.loads(path.read_text(), parse_constant=refuse)  # NaN / Infinity are what parse_constant sees
    assert data["results"]["winogender"]["acc[gotcha]"] == 1.0
    assert data["results"]["winogender"]["acc[gotcha]_stderr"] is None


# ---------------------------------------------------------------------------------------------------------------
# perplexity


def test_windows_cover_every_token_once():
    for n, context, stride in [(10, 4, 4), (10, 4, 1), (3, 8, 8), (17, 5, 3)]:
        scored = [i for w in windows(n, context, stride) for i in range(w.scored_from, w.end)]
        assert scored == list(range(n))
        assert all(w.end - w.start <= context and w.start <= w.scored_from for w in windows(n, context, stride))


def test_disjoint_perplexity_matches_lm_eval_windows_on_transformers(stories, tmp_path):
    """Our windows vs lm-eval's get_rolling_token_windows, each scored by its own model implementation."""
    lm_utils = pytest.importorskip("lm_eval.utils")
    transformers = pytest.importorskip("transformers")
    from llamaforge import save_model

    model, tok = stories
    text = shared_path("tinyshakespeare/input.txt").read_text()[:1500]
    ids = tok.encode(text)
    context = 64
    ours = document_nll(model, ids, tok.bos_id, context, context)
    save_model(model, tmp_path / "hf", format="hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    reference = 0.0
    for window in lm_utils.get_rolling_token_windows(ids, tok.bos_id, context, 1):
        ctx, pred = lm_utils.make_disjoint_window(window)
        with torch.no_grad():
            inp = torch.tensor([(ctx + pred)[:-1]])
            logp = torch.log_softmax(hf(inp).logits.float(), -1)[0, -len(pred):]
        reference -= logp.gather(-1, torch.tensor(pred)[:, None]).sum().item()
    assert ours == pytest.approx(reference, abs=1e-3)


def test_sliding_window_perplexity_against_brute_force(stories):
    """stride 1: every token is scored with exactly min(its position, context) tokens of history (BOS included),
    checked one forward pass per token; and a window longer than the text is one plain forward pass."""
    model, tok = stories
    ids = tok.encode(shared_path("tinyshakespeare/input.txt").read_text()[:300])
    seq = [tok.bos_id, *ids]
    context = 12
    brute = 0.0
    with torch.no_grad():
        for j in range(1, len(seq)):  # label j, predicted from input positions max(0, j - context) .. j - 1
            window = torch.tensor([seq[max(0, j - context) : j]])
            brute -= torch.log_softmax(model(window)[0, -1].float(), -1)[seq[j]].item()
        full = torch.log_softmax(model(torch.tensor([seq[:-1]]))[0].float(), -1)
        whole = -full.gather(-1, torch.tensor(seq[1:])[:, None]).sum().item()
    assert document_nll(model, ids, tok.bos_id, context, 1, batch_size=7) == pytest.approx(brute, rel=1e-5)
    assert document_nll(model, ids, tok.bos_id, len(seq), 5) == pytest.approx(whole, rel=1e-5)
    assert document_nll(model, ids, tok.bos_id, 16, 4) < document_nll(model, ids, tok.bos_id, 16, 16)


# ---------------------------------------------------------------------------------------------------------------
# generation and the command


def test_greedy_generation_matches_llamaforge_generate(stories):
    from llamaforge.generate import generate_tokens

    model, tok = stories
    prompt = tok.encode("Once upon a time", bos=True)
    expected = tok.decode(prompt[-1:] + list(generate_tokens(model, prompt, 30)))[len(tok.decode(prompt[-1:])):]
    got = Scorer(model, tok).generate_until(prompt, until=[], max_new_tokens=30)[0]
    assert got == expected
    stop = expected[10:14]
    cut = Scorer(model, tok).generate_until(prompt, until=[stop], max_new_tokens=30)[0]
    assert cut == expected[: expected.index(stop)]


def test_sampled_generation_shares_the_prompt(stories):
    model, tok = stories
    prompt = tok.encode("Once upon a time", bos=True)
    texts = Scorer(model, tok).generate_until(prompt, [], 12, temperature=1.0, num_samples=4, seed=0)
    assert len(texts) == 4 and len(set(texts)) > 1
    # each sample has its own seeded stream: the same texts whatever the batch size
    assert Scorer(model, tok, batch_size=1).generate_until(prompt, [], 12, temperature=1.0, num_samples=4) == texts


def test_batched_greedy_generation_equals_one_at_a_time(stories):
    """generate_many runs prompts of different lengths together (continuous batching through the engine): each
    answer equals that prompt's own unbatched greedy completion, stop strings included."""
    model, tok = stories
    prompts = [tok.encode(t, bos=True) for t in ["Once upon a time", "Tom and Sue went", "The dog", "Lily saw a"]]
    alone = [Scorer(model, tok, batch_size=1).generate_until(p, ["."], 24)[0] for p in prompts]
    together = Scorer(model, tok, batch_size=3).generate_many(prompts, ["."], 24)
    assert [t for (t,) in together] == alone
    assert all("." not in t for t in alone) and len(set(alone)) == 4


def test_eval_command_end_to_end(stories, tmp_path, capsys):
    task_file = write(tmp_path, ['{"context": "Once upon a", "continuation": " time"}',
                                 '{"context": "The cat", "continuation": " sat"}'], "lm.jsonl")
    text = write(tmp_path, ["Once upon a time there was a little girl."], "story.txt")
    out = tmp_path / "results.json"
    rc = main(["eval", str(shared_path("stories260K/stories260K.bin")), "--tokenizer",
               str(shared_path("stories260K/tok512.bin")), "--tasks", "piqa,winogrande,boolq",
               "--data-dir", str(shared_path("")), "--limit", "6", "--task-file", str(task_file),
               "--text", str(text), "--context", "16", "--stride", "8", "--out", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())
    assert set(results["results"]) == {"piqa", "winogrande", "boolq", "lm", "perplexity"}
    assert {"acc", "acc_norm", "acc_uncond"} <= set(results["results"]["boolq"])
    assert results["results"]["perplexity"]["context"] == 16 and results["results"]["perplexity"]["stride"] == 8
    assert results["details"]["piqa"]["n"] == 6
    assert "| piqa | acc_norm (paper's) | 0 | 6 |" in (tmp_path / "results.md").read_text()


def test_paper_numbers_only_where_preset_metric_and_shots_match():
    from types import SimpleNamespace

    from llamaforge.eval import preset_of
    from llamaforge.eval.tasks import paper_number
    from llamaforge.presets import PRESETS

    assert preset_of(SimpleNamespace(args=PRESETS["llama-13b"])) == "llama-13b"
    assert preset_of(SimpleNamespace(args=PRESETS["llama2-7b"])) is None  # not a model of this paper
    assert paper_number(TASKS["hellaswag"], "acc_norm", 0, "llama-7b") == 76.1
    assert paper_number(TASKS["hellaswag"], "acc", 0, "llama-7b") is None  # the paper's metric is acc_norm
    assert paper_number(TASKS["hellaswag"], "acc_norm", 5, "llama-7b") is None  # the paper is zero-shot
    assert paper_number(TASKS["boolq"], "acc_uncond", 0, "llama-65b") == 85.3
    assert paper_number(TASKS["triviaqa"], "exact_match", 64, "llama-33b") == 70.4
    assert paper_number(TASKS["humaneval"], "pass@100", 0, "llama-7b") == 36.5


class ScriptedScorer:
    """Stands in for `Scorer` in generation tasks: answers each prompt from a table (no model)."""

    device = "cpu"

    def __init__(self, answer):
        self.answer = answer  # prompt text -> list of completions
        self.tokenizer = self
        self.texts = []  # a prompt's "token ids" are [its index here]

    def encode(self, text, bos=False):
        self.texts.append(text)
        return [len(self.texts) - 1]

    def generate_many(self, prompts, until, max_new_tokens, temperature=0.0, num_samples=1, **kwargs):
        from llamaforge.infer.detok import cut_at_stop

        return [[cut_at_stop(c, until) for c in self.answer(self.texts[p[0]])][:num_samples] for p in prompts]


def test_generation_tasks_score_scripted_answers():
    from llamaforge.eval.tasks import score_items

    data = shared_path("")
    code_items = TASKS["humaneval"].load(data, 0)[:3]
    by_prompt = {it.prompt: it.reference for it in code_items}
    right = ScriptedScorer(lambda p: [by_prompt[p] + "\ndef unrelated():\n    pass\n", "    return None\n"])
    from llamaforge.eval.sandbox import isolation_problem

    # without an OS sandbox on the host the scoring still runs, under --unsafe-exec (the sandbox's own tests say so)
    scores = score_items(TASKS["humaneval"], right, code_items,
                         {"samples": 2, "unsafe_exec": isolation_problem() is not None})
    assert [s["pass@1"] for s in scores] == [0.5, 0.5, 0.5]  # one of two samples passes (the stop cuts the extra def)

    gsm = TASKS["gsm8k"].load(data, 8)[:1]  # Janet's ducks: 18
    assert gsm[0].prompt.count("Question:") == 9
    votes = ScriptedScorer(lambda p: [" 9 eggs, so 9 * 2 = 18. The answer is 18.", " The answer is 20.", " It is 18."])
    assert score_items(TASKS["gsm8k"], votes, gsm, {"samples": 3})[0]["maj@3"] == 1.0

    qa = TASKS["triviaqa"].load(data, 0)[:1]  # types of onion
    onion = ScriptedScorer(lambda p: [" The onion, of course\nQ: next"])
    scored = score_items(TASKS["triviaqa"], onion, qa, {})[0]
    assert scored["prediction"] == "The onion" and scored["exact_match"] == 1.0


def test_a_scoring_pass_holds_no_more_cache_than_batch_size_whole_requests():
    """`Scorer(batch_size=B)` promises a forward pass the memory of B of the call's longest requests (what
    lm-evaluation-harness's batch of B takes). A prefix-tree row reads its shared prefix from its own KV-cache row,
    so a row costs its start + its segment in cache positions, not its segment alone: counting only segments let
    an MMLU-like call (a 5-shot prompt shared by every item, short questions) allocate several times that cache
    (6x here), an out-of-memory on a GPU where lm-eval's batch of B fits."""
    from llamaforge.model import ModelArgs, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=64, multiple_of=16, max_seq_len=256))
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, 64, (n,), generator=g).tolist()  # noqa: E731
    prompt = [1] + ids(150)  # the shared few-shot prompt
    requests = [(prompt + q, [c]) for q in (ids(20) for _ in range(40)) for c in (10, 11, 12, 13)]
    longest = max(len(c) + len(x) - 1 for c, x in requests)
    cache_positions, setup = [], model.setup_cache

    def recording_setup(max_batch, max_seq_len, **kw):
        cache_positions.append(max_batch * max_seq_len)
        return setup(max_batch=max_batch, max_seq_len=max_seq_len, **kw)

    model.setup_cache = recording_setup
    batch_size = 4
    got = Scorer(model, None, batch_size=batch_size).loglikelihood_tokens(requests)
    assert max(cache_positions) <= batch_size * longest, (max(cache_positions), batch_size * longest)
    with torch.no_grad():  # and the values are still each request's own
        for (ctx, cont), (ll, _) in zip(requests[:8], got[:8]):
            lp = model(torch.tensor([ctx]))[0, -1].float().log_softmax(-1)
            assert ll == pytest.approx(lp[cont[0]].item(), abs=1e-5)
