"""Evaluation parity against independent implementations.

- Per-item log-likelihoods from `Scorer` (contexts run once per item, batched, deduplicated) equal those of
  `transformers` running the HF export of the same weights (<= 1e-4), on stories260K and on a small model
  trained by the `debug` pretraining recipe.
- acc / acc_norm on a local multiple-choice task equal lm-evaluation-harness's (its HF backend on the HF export),
  and so do the results of our `llamaforge` harness backend.

lm-eval's HF backend needs a transformers tokenizer; `hf_tokenizer` puts our tokenizer behind transformers'
tokenizer API (ids only), so these tests check the model, the request building and the metrics, not the
tokenizer (tests/test_core_tokenizer.py does that).
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import shared_path
from peer_helpers import hf_tokenizer

transformers = pytest.importorskip("transformers")

from llamaforge import load_model, load_tokenizer, save_model
from llamaforge.eval import evaluate_task_file
from llamaforge.eval.items import ChoiceItem, score_choice_items
from llamaforge.eval.scoring import Scorer, encode_pair
from llamaforge.eval.tasks.multiple_choice import load_hellaswag, load_piqa


class ByteTokenizer:
    """UTF-8 bytes as ids (for the debug recipe's 256-token vocabulary); BOS 1 and EOS 2 never occur in text."""

    bos_id, eos_id, vocab_size, path = 1, 2, 256, "bytes"

    def encode(self, text, bos=False, eos=False):
        return ([1] if bos else []) + list(text.encode("utf-8")) + ([2] if eos else [])

    def decode(self, ids):
        return bytes(i for i in ids if i > 2).decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def stories():
    model = load_model(shared_path("stories260K/stories260K.bin"))
    return model, load_tokenizer(shared_path("stories260K/tok512.bin"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model trained for a few steps by the `debug` pretraining recipe."""
    from llamaforge.train import load_config, train

    out = tmp_path_factory.mktemp("debug_run")
    train(load_config("debug", ["--training.steps=4", "--checkpoint.every=100", "--metrics.val_every=100"]), out)
    return load_model(out / "final"), ByteTokenizer()


def hf_export(model, folder):
    save_model(model, folder, format="hf")
    return transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@torch.no_grad()
def hf_loglikelihood(hf, ctx, cont):
    ids = torch.tensor([ctx + cont])
    logp = torch.log_softmax(hf(ids[:, :-1]).logits.float(), dim=-1)[0, len(ctx) - 1 :]
    return logp.gather(-1, torch.tensor(cont)[:, None]).sum().item()


def mc_items(data_dir_items, n):
    return data_dir_items[:n]


def check_against_transformers(model, tok, items, tmp_path, batch_size):
    scorer = Scorer(model, tok, batch_size=batch_size)
    ours = score_choice_items(scorer, items)
    hf = hf_export(model, tmp_path / "hf")
    for item, got in zip(items, ours):
        for ctx_text, cont_text, ll in zip(item.contexts, item.continuations, got["loglikelihoods"]):
            ctx, cont = encode_pair(tok, ctx_text, cont_text)
            assert abs(ll - hf_loglikelihood(hf, ctx, cont)) <= 1e-4


def test_stories260k_loglikelihoods_match_transformers(stories, tmp_path):
    model, tok = stories
    data = shared_path("")
    items = load_hellaswag(data)[:10] + load_piqa(data)[:4]  # several prefix lengths per batch
    check_against_transformers(model, tok, items, tmp_path, batch_size=7)


def test_trained_model_loglikelihoods_match_transformers(trained, tmp_path):
    model, tok = trained
    items = [
        ChoiceItem.shared_context("The cat sat on the", ["mat.", "hat, said the dog", "x"], 0),
        ChoiceItem.shared_context("Question: 2+2?\nAnswer:", ["4", "5", "four"], 0),
        ChoiceItem.partial(["Alice gave Bob", "Bob gave Alice"], "a present.", 1),
    ]
    check_against_transformers(model, tok, items, tmp_path, batch_size=3)


def test_batching_does_not_change_scores(stories):
    model, tok = stories
    items = load_hellaswag(shared_path(""))[:3]
    one = score_choice_items(Scorer(model, tok, batch_size=3), items)  # 4 choices: an item is split in two
    many = score_choice_items(Scorer(model, tok, batch_size=64), items)
    for a, b in zip(one, many):
        assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-4)  # rounding of other shapes
        assert a["acc"] == b["acc"] and a["acc_norm"] == b["acc_norm"]


# ---------------------------------------------------------------------------------------------------------------
# lm-evaluation-harness on a local JSON task


TASK_YAML = """task: lf_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
metadata:
  version: 1.0
"""


def write_local_task(folder, items):
    data = folder / "mc.jsonl"
    with open(data, "w") as f:
        f.writelines(json.dumps({"query": it.contexts[0], "choices": it.choices, "gold": it.gold}) + "\n" for it in items)
    (folder / "lf_local_mc.yaml").write_text(TASK_YAML.format(data=data))
    return data


def run_lm_eval(lm, folder):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    out = lm_eval.simple_evaluate(model=lm, tasks=["lf_local_mc"], task_manager=TaskManager(include_path=str(folder)),
                                  log_samples=True, bootstrap_iters=0)
    metrics = out["results"]["lf_local_mc"]
    samples = sorted(out["samples"]["lf_local_mc"], key=lambda s: s["doc_id"])
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    return metrics["acc,none"], metrics["acc_norm,none"], lls


@pytest.mark.slow
@pytest.mark.parametrize("which", ["stories", "trained"])
def test_accuracy_equals_lm_eval(which, request, tmp_path):
    from lm_eval.models.huggingface import HFLM

    from llamaforge.eval.harness import LlamaforgeLM

    model, tok = request.getfixturevalue(which)
    if which == "stories":
        items = load_hellaswag(shared_path(""))[:8] + load_piqa(shared_path(""))[:6]
    else:
        items = [ChoiceItem.shared_context(f"Item {i}: the answer is", ["yes", "no", "maybe so"], i % 3)
                 for i in range(12)]
    data = write_local_task(tmp_path, items)
    ours, per_item = evaluate_task_file(Scorer(model, tok, batch_size=8), data)

    hf = hf_export(model, tmp_path / "hf")
    hflm = HFLM(pretrained=hf, tokenizer=hf_tokenizer(tok), batch_size=4, max_length=model.args.max_seq_len)
    acc, acc_norm, lls = run_lm_eval(hflm, tmp_path)
    assert ours.metrics["acc"] == pytest.approx(acc, abs=1e-12)
    assert ours.metrics["acc_norm"] == pytest.approx(acc_norm, abs=1e-12)
    for mine, theirs in zip(per_item, lls):
        assert mine["loglikelihoods"] == pytest.approx(theirs, abs=1e-4)

    # The same task through our harness backend gives the same numbers.
    acc2, acc_norm2, lls2 = run_lm_eval(LlamaforgeLM(model=model, tokenizer=tok, batch_size=8), tmp_path)
    assert (acc2, acc_norm2) == (acc, acc_norm)
    for mine, theirs in zip(lls2, lls):
        assert mine == pytest.approx(theirs, abs=1e-4)


@pytest.mark.slow
def test_lm_eval_command_line_runs_the_llamaforge_model(stories, tmp_path):
    """`python -m llamaforge.eval.harness --model llamaforge ...` is lm-eval's own CLI with our model registered."""
    import subprocess
    import sys

    model, tok = stories
    items = load_piqa(shared_path(""))[:6]
    data = write_local_task(tmp_path, items)
    ours, _ = evaluate_task_file(Scorer(model, tok), data)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    args = [sys.executable, "-m", "llamaforge.eval.harness", "--model", "llamaforge", "--model_args",
            f"path={shared_path('stories260K/stories260K.bin')},tokenizer={shared_path('stories260K/tok512.bin')}",
            "--device", "cpu", "--tasks", "lf_local_mc", "--include_path", str(tmp_path), "--output_path",
            str(tmp_path / "out")]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]["lf_local_mc"]
    assert result["acc,none"] == ours.metrics["acc"] and result["acc_norm,none"] == ours.metrics["acc_norm"]


def test_harness_backend_generates_batched_in_request_order(stories):
    """lm-eval's generate_until requests with different settings: grouped, batched, answered in request order, each
    equal to that request's own greedy completion."""
    from lm_eval.api.instance import Instance

    from llamaforge.eval.harness import LlamaforgeLM

    model, tok = stories
    lm = LlamaforgeLM(model=model, tokenizer=tok, batch_size=4)
    asks = [("Once upon a time", {"until": ["."], "max_gen_toks": 20}),
            ("The dog", {"until": "\n", "max_gen_toks": 12}),
            ("Tom and Sue went", {"until": ["."], "max_gen_toks": 20}),
            ("Lily saw a", {"until": ["."], "max_gen_toks": 20, "do_sample": False})]
    requests = [Instance("generate_until", {}, args, i) for i, args in enumerate(asks)]
    got = lm.generate_until(requests)
    scorer = Scorer(model, tok, batch_size=1)
    for (context, kw), text in zip(asks, got):
        until = [kw["until"]] if isinstance(kw["until"], str) else kw["until"]
        assert text == scorer.generate_until(lm.tok_encode(context), until, kw["max_gen_toks"])[0]
    assert len(set(got)) == 4


# ---------------------------------------------------------------------------------------------------------------
# Issue #13, fault 6: a token that spans the context/continuation boundary; fault 7: the plugin keeps lm-eval's models


@pytest.fixture(scope="module")
def llama2_vocab_model():
    """A tiny random model over the Llama-2 vocabulary, with Meta's tokenizer.model."""
    from llamaforge.model import ModelArgs, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=32000, multiple_of=16, max_seq_len=64))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)  # spread the next-token distribution so scores differ clearly
    return model.eval(), load_tokenizer(shared_path("llama2-tokenizer/tokenizer.model"))


def test_token_spanning_the_boundary_is_rescored_not_lost(llama2_vocab_model, tmp_path):
    """("Ans", "wer") is one piece "▁Answer" on Llama 2: the pair is re-split at the boundary (context = the
    common prefix, continuation = the rest of the whole string's ids) and every other pair in the call is still
    scored, each equal to lm-evaluation-harness's HF backend on the same ids (<= 1e-4)."""
    import sentencepiece as spm
    from lm_eval.models.huggingface import HFLM

    model, tok = llama2_vocab_model
    sp = spm.SentencePieceProcessor(model_file=shared_path("llama2-tokenizer/tokenizer.model").as_posix())
    pairs = [("The capital of France is", " Paris"), ("Ans", "wer"), ("hello wor", "ld"), ("Question: 1+1=", "2"),
             ("Nothing follows", "")]
    got = Scorer(model, tok, batch_size=4).loglikelihood(pairs)
    assert len(got) == len(pairs)

    # The split, from sentencepiece itself: the standard cut where the context's ids are a prefix, else the
    # common prefix of the two encodings.
    bos = sp.bos_id()
    assert encode_pair(tok, "Ans", "wer") == ([bos], [bos, *sp.encode("Answer")][1:])
    assert encode_pair(tok, "hello wor", "ld") == ([bos, *sp.encode("hello")], sp.encode("hello world")[1:])
    assert encode_pair(tok, "The capital of France is", " Paris") == (
        [bos, *sp.encode("The capital of France is")], sp.encode("The capital of France is Paris")[5:])

    hf = hf_export(model, tmp_path / "hf")
    hflm = HFLM(pretrained=hf, tokenizer=hf_tokenizer(tok), batch_size=2, max_length=64)
    for (ctx_text, cont_text), (ll, greedy) in zip(pairs, got):
        ctx, cont = encode_pair(tok, ctx_text, cont_text)
        if not cont:
            assert (ll, greedy) == (0.0, True)  # log 1: nothing to predict
            continue
        ((ref_ll, ref_greedy),) = hflm._loglikelihood_tokens([((ctx_text, cont_text), ctx, cont)])
        assert ll == pytest.approx(ref_ll, abs=1e-4) and greedy == ref_greedy
        if sp.encode(ctx_text) == sp.encode(ctx_text + cont_text)[: len(sp.encode(ctx_text))]:
            # No spanning token: lm-eval's own string-level split gives the same value.
            from lm_eval.api.instance import Instance

            ((lm_ll, _),) = hflm.loglikelihood([Instance("loglikelihood", {}, (ctx_text, cont_text), 0)])
            assert ll == pytest.approx(lm_ll, abs=1e-4)
    # Our harness backend splits the same way, so lm-eval tasks with such pairs run to the end.
    from llamaforge.eval.harness import LlamaforgeLM

    assert LlamaforgeLM(model=model, tokenizer=tok)._encode_pair("Ans", "wer") == encode_pair(tok, "Ans", "wer")


def test_harness_plugin_keeps_lm_evals_own_models():
    """After importing our backend in a fresh interpreter, `hf` and every other built-in model still resolve."""
    import subprocess
    import sys

    code = ("import llamaforge.eval.harness\n"
            "from lm_eval.api.registry import get_model, model_registry\n"
            "hf = get_model('hf')  # before anything else imports lm_eval.models\n"
            "from lm_eval.models import MODEL_MAPPING\n"
            "from lm_eval.models.huggingface import HFLM\n"
            "assert hf is HFLM, hf\n"
            "missing = sorted(set(MODEL_MAPPING) - set(model_registry.keys()))\n"
            "assert not missing, missing\n"
            "assert get_model('llamaforge').__name__ == 'LlamaforgeLM'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_prefix_tree_scoring_equals_lm_eval_on_shared_prefixes(stories, tmp_path, monkeypatch):
    """The scorer's prefix tree (contexts shared across items, continuations sharing their first tokens, identical
    inputs, a sequence that is a prefix of another, contexts cut to the window) gives, for every request and every
    batch size, lm-evaluation-harness's HF backend's value on the same ids (<= 1e-4) and the same greedy flag."""
    from lm_eval.models.huggingface import HFLM

    model, tok = stories
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, tok.vocab_size, (n,), generator=g).tolist()
    shots, q1, q2, long_ctx = [tok.bos_id] + ids(40), ids(7), ids(5), [tok.bos_id] + ids(70)
    cont = ids(6)
    requests = [(shots + q1, [c]) for c in ids(3)]  # one-token answers after a shared 5-shot-like prompt
    requests += [(shots + q2, [c]) for c in ids(3)]  # another item, same prompt: shares 41 tokens across items
    requests += [(shots + q2, [requests[3][1][0]])]  # an identical request
    requests += [(shots[:20], cont[:3] + ids(2)), (shots[:20], cont[:3] + ids(4)), (shots[:20], cont)]  # common starts
    requests += [(shots[:20], cont[:2]), (shots[:20] + cont[:2], cont[2:])]  # one sequence a prefix of the other
    requests += [(long_ctx, ids(9)), (long_ctx, ids(3)), ([tok.bos_id], ids(4)), (shots, [])]  # cut to 48; empty
    with torch.no_grad():  # the greedy token where three requests above start: a head shared by other targets
        requests.insert(0, (shots[:20], [int(model(torch.tensor([shots[:20]]))[0, -1].argmax())]))
    hf = hf_export(model, tmp_path / "hf")
    hflm = HFLM(pretrained=hf, tokenizer=hf_tokenizer(tok), batch_size=1, max_length=48)
    want = [hflm._loglikelihood_tokens([(("", ""), c, x)])[0] if x else (0.0, True) for c, x in requests]
    for batch_size, stash_bytes in ((1, None), (3, None), (64, None), (3, 1)):  # 1 byte: a window per segment
        if stash_bytes:
            monkeypatch.setattr("llamaforge.eval.scoring._STASH_BYTES", stash_bytes)
        got = Scorer(model, tok, batch_size=batch_size, max_seq_len=48).loglikelihood_tokens(requests)
        for (ll, greedy), (ref_ll, ref_greedy) in zip(got, want):
            assert ll == pytest.approx(ref_ll, abs=1e-4) and greedy == ref_greedy
    assert any(g for _, g in want[:-1]) and not all(g for _, g in want)  # both greedy outcomes are checked
