"""The engine's greedy output equals plain full-recompute generation token for token, batched or not."""

from __future__ import annotations

import pytest
import torch

from llamaforge.infer.sampling import sample_next
from llamaforge.infer import Engine, Request, SamplingParams
from llamaforge.model import ModelArgs, Transformer


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one thread


def tiny_model(dtype=torch.float64, **kw) -> Transformer:
    args = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=16, max_seq_len=64)
    for k, v in kw.items():
        setattr(args, k, v)
    torch.manual_seed(0)
    model = Transformer(args)
    with torch.no_grad():  # larger weights than the init: sharper logits, no near-ties for argmax
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.to(dtype).eval()


@torch.no_grad()
def recompute_greedy(model: Transformer, prompt: list[int], n: int) -> list[int]:
    """The reference: run the whole sequence again for every new token, no cache."""
    model.clear_cache()
    tokens = list(prompt)
    for _ in range(n):
        logits = model(torch.tensor([tokens]))[0, -1]
        tokens.append(int(logits.argmax()))
    return tokens[len(prompt) :]


PROMPTS = [[5, 17, 3], [42], [7, 7, 8, 9, 10, 11, 12, 1], [60, 2]]


@pytest.mark.parametrize("max_batch", [1, 4], ids=["unbatched", "batched-different-lengths"])
def test_greedy_matches_recompute(max_batch):
    model = tiny_model()
    refs = [recompute_greedy(model, p, 12) for p in PROMPTS]
    engine = Engine(model, max_batch=max_batch, max_seq_len=32)
    out = engine.generate(PROMPTS, SamplingParams(max_new_tokens=12, stop_token_ids=()))
    assert [r.tokens for r in out] == refs
    assert all(r.finish_reason == "length" for r in out)


def test_continuous_batching_more_requests_than_slots():
    """6 requests through 2 slots: later requests enter freed slots mid-flight and still match."""
    model = tiny_model()
    prompts = PROMPTS + [[1, 2, 3, 4, 5], [90]]
    lengths = [3, 9, 5, 12, 2, 7]
    refs = [recompute_greedy(model, p, n) for p, n in zip(prompts, lengths)]
    engine = Engine(model, max_batch=2, max_seq_len=32)
    reqs = [engine.submit(Request(p, SamplingParams(max_new_tokens=n, stop_token_ids=()))) for p, n in zip(prompts, lengths)]
    while engine.busy:
        engine.step()
    assert [r.tokens for r in reqs] == refs


def test_float32_engine_matches_recompute():
    model = tiny_model(torch.float32)
    refs = [recompute_greedy(model, p, 10) for p in PROMPTS]
    out = Engine(model, max_batch=4, max_seq_len=32).generate(PROMPTS, SamplingParams(max_new_tokens=10, stop_token_ids=()))
    assert [r.tokens for r in out] == refs


def test_stop_token_and_context_limit():
    model = tiny_model()
    ref = recompute_greedy(model, PROMPTS[0], 10)
    stop = ref[4]
    first = ref.index(stop)
    engine = Engine(model, max_batch=1, max_seq_len=32)
    (r,) = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=10, stop_token_ids=(stop,)))
    assert r.tokens == ref[:first] and r.finish_reason == "stop"
    with pytest.raises(ValueError, match="context length"):
        engine.submit(Request([1] * 30, SamplingParams(max_new_tokens=5)))


def test_logprobs_and_echo_match_full_forward():
    model = tiny_model()
    prompt = PROMPTS[2]
    engine = Engine(model, max_batch=2, max_seq_len=32)
    (r,) = engine.generate([prompt], SamplingParams(max_new_tokens=3, logprobs=2, echo_logprobs=True, stop_token_ids=()))
    model.clear_cache()
    full = prompt + r.tokens
    logp = torch.log_softmax(model(torch.tensor([full]))[0].double(), -1)
    expected = [logp[i - 1, full[i]].item() for i in range(1, len(full))]
    got = r.prompt_logprobs[1:] + r.token_logprobs
    assert r.prompt_logprobs[0] is None
    assert got == pytest.approx(expected, abs=1e-5)  # logits come out in float32
    # greedy: the chosen token is the most likely one
    assert all(max(top, key=top.get) == t for top, t in zip(r.top_logprobs, r.tokens))


def test_sampling_is_seeded_per_request_and_respects_top_k():
    model = tiny_model()
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=123, stop_token_ids=())
    engine = Engine(model, max_batch=3, max_seq_len=32)
    a, b, _ = engine.generate([[1, 2], [1, 2], [3]], params)
    assert a.tokens == b.tokens  # same seed, same prompt: same draw even inside one batch
    (d,) = Engine(model, max_batch=1, max_seq_len=32).generate([[1, 2]], params)
    assert d.tokens == a.tokens
    # top_k=1 is greedy whatever the temperature
    greedy = recompute_greedy(model, [3], 8)
    (e,) = engine.generate([[3]], SamplingParams(max_new_tokens=8, temperature=5.0, top_k=1, stop_token_ids=()))
    assert e.tokens == greedy


def test_sample_next_distribution_and_filters():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(20000, 4)
    g = torch.Generator().manual_seed(1)
    counts = torch.bincount(sample_next(logits, 1.0, generator=g), minlength=4).double() / 20000
    assert counts.tolist() == pytest.approx([0.5, 0.3, 0.15, 0.05], abs=0.015)
    nucleus = sample_next(logits, 1.0, top_p=0.7, generator=g)  # smallest set reaching 0.7: tokens 0 and 1
    assert set(nucleus.tolist()) == {0, 1}
    topk = sample_next(logits, 1.0, top_k=3, generator=g)
    assert set(topk.tolist()) == {0, 1, 2}
    assert sample_next(logits[:2], 0.0).tolist() == [0, 0]


@pytest.mark.slow
def test_compiled_decode_step_matches_recompute():
    """torch.compile'd decode step (the GPU default; on a CPU inductor's GEMM templates with frozen weights,
    ~15 s to compile on 2 cores), batched, with slot reuse."""
    model = tiny_model(torch.float32)
    refs = [recompute_greedy(model, p, 10) for p in PROMPTS]
    engine = Engine(model, max_batch=2, max_seq_len=32, compile=True)
    engine.warmup()  # compiles now (as `serve` does before listening); the dummy step must not leak into outputs
    assert engine._warm
    out = engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, stop_token_ids=()))
    assert [r.tokens for r in out] == refs


def test_failed_compile_falls_back_to_eager_decoding():
    """A CPU without a working inductor toolchain (no C++ compiler): the engine warns once and decodes eagerly."""
    model = tiny_model(torch.float32)
    refs = [recompute_greedy(model, p, 6) for p in PROMPTS[:2]]
    engine = Engine(model, max_batch=1, max_seq_len=32, compile=True)

    def no_compiler(*args):
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

    engine._decode_fn = no_compiler
    with pytest.warns(UserWarning, match="decoding eagerly"):
        out = engine.generate(PROMPTS[:2], SamplingParams(max_new_tokens=6, stop_token_ids=()))
    assert [r.tokens for r in out] == refs
    assert not engine.compiled and engine.cpu_layout


def test_decode_over_the_filled_part_of_the_cache_matches_recompute():
    """Eager CPU decoding attends over the first positions of the cache only (a multiple of 64): sequences that
    cross such a boundary, next to a short one in the same batch, still match."""
    model = tiny_model(max_seq_len=192)
    long_prompt = [(7 * i) % 97 for i in range(58)]
    prompts = [long_prompt, [5, 17, 3]]
    refs = [recompute_greedy(model, p, 12) for p in prompts]
    engine = Engine(model, max_batch=2, max_seq_len=192)
    out = engine.generate(prompts, SamplingParams(max_new_tokens=12, stop_token_ids=()))
    assert [r.tokens for r in out] == refs
    assert engine.model.layers[0].attention.cache.k.shape[2] == 128  # the last step read 70 -> 128 positions


def test_building_an_engine_leaves_the_callers_model_as_it_was():
    """The engine decodes with a structural copy: no cache, no swapped layers, no mode change on the caller's
    model (eager on a CPU, only the weights' strides change: same values, same Parameter objects)."""
    model = tiny_model(torch.float32).train()
    kinds = {name: type(m) for name, m in model.named_modules()}
    params = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
    engine = Engine(model, max_batch=2, max_seq_len=32)
    engine.generate(PROMPTS[:2], SamplingParams(max_new_tokens=4, stop_token_ids=()))
    assert {name: type(m) for name, m in model.named_modules()} == kinds
    assert all(layer.attention.cache is None for layer in model.layers) and model.training
    for name, p in model.named_parameters():
        assert p is params[name][0] and torch.equal(p, params[name][1])


@pytest.mark.parametrize("field,params", [("temperature", dict(temperature=float("nan"))),
                                          ("temperature", dict(temperature=-0.5)), ("top_p", dict(top_p=0.0)),
                                          ("top_k", dict(top_k=-1))])
def test_sampling_params_out_of_range_are_refused(field, params):
    """NaN compares false with everything, so `temperature < 0` let it through to the sampler (NaN probabilities)."""
    from llamaforge.infer import RequestError

    engine = Engine(tiny_model(), max_batch=1, max_seq_len=32)
    with pytest.raises(RequestError) as e:
        engine.submit(Request([1, 2, 3], SamplingParams(max_new_tokens=2, **params)))
    assert e.value.field == field


def test_cpu_compile_config_is_all_known_to_this_torch_and_autotunes_only_the_cpp_gemm():
    """Every CPU compile setting exists in the installed inductor (unknown ones are dropped silently by the engine,
    so a rename in torch would quietly change the compiled step), and GEMM autotuning has only the C++ template to
    choose: a candidate timed under CPU contention must not be able to win, nor be cached for later processes
    (BENCHMARKS.md "Inference", issue #13's note)."""
    import torch._inductor.config as inductor_config
    from llamaforge.infer.engine import CPU_COMPILE_CONFIG

    known = inductor_config.get_config_copy()
    assert [k for k in CPU_COMPILE_CONFIG if k not in known] == []
    assert CPU_COMPILE_CONFIG["max_autotune_gemm_backends"] == "CPP"


def test_compile_without_a_cpp_gemm_choice_retries_with_every_gemm_backend():
    """If inductor finds no C++ template for some product (NoValidChoicesError under the CPP-only restriction), the
    engine compiles again with every GEMM backend allowed and stays compiled, without a warning."""
    import warnings

    import torch._inductor.config as inductor_config

    model = tiny_model(torch.float32)
    refs = [recompute_greedy(model, p, 6) for p in PROMPTS[:1]]
    engine = Engine(model, max_batch=1, max_seq_len=32, compile=True)
    seen = []

    def picky_compile(tokens, pos):
        seen.append(inductor_config.max_autotune_gemm_backends)
        if len(seen) == 1:
            raise RuntimeError("NoValidChoicesError: No choices exist for backend.")
        return engine._forward_decode(tokens, pos)

    engine._decode_fn = picky_compile
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=6, stop_token_ids=()))
    assert [r.tokens for r in out] == refs
    assert seen[:2] == ["CPP", inductor_config.get_config_copy()["max_autotune_gemm_backends"]] and seen[1] != "CPP"
    assert engine.compiled and engine._warm
