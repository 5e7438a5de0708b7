"""Config parsing and overrides, every shipped recipe, the learning-rate schedule against its closed form,
AdamW parameter groups, and the FLOP formula."""

from __future__ import annotations

import math

import pytest
import torch

from llamaforge.errors import UserError
from llamaforge.model import ModelArgs, Transformer
from llamaforge.presets import count_params
from llamaforge.train.config import (
    RECIPES_DIR,
    grad_accum_steps,
    load_config,
    parse_override,
)
from llamaforge.plan.flops import (
    DEVICE_PEAK_FLOPS,
    flops_per_token,
    non_embedding_params,
)
from llamaforge.train.optim import build_optimizer, build_scheduler, lr_at, param_groups

PAPER = {  # paper Table 2 / model card: peak lr, tokens
    "llama-7b": (3.0e-4, 1.0e12), "llama-13b": (3.0e-4, 1.0e12),
    "llama-33b": (1.5e-4, 1.4e12), "llama-65b": (1.5e-4, 1.4e12),
}


@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPES_DIR.glob("*.toml")))
def test_every_recipe_parses(name):
    # finetuning recipes take their base model and data from `llamaforge finetune MODEL --data FILE`
    extra = ['--finetune.base="model"', '--finetune.data="data.json"'] if name.startswith("finetune-") else []
    load_config(name, extra).model_args()


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes(name):
    cfg = load_config(name)
    lr, tokens = PAPER[name]
    assert cfg.optim.lr == lr and cfg.model.preset == name
    assert (cfg.optim.beta1, cfg.optim.beta2, cfg.optim.weight_decay) == (0.9, 0.95, 0.1)
    assert (cfg.optim.warmup_steps, cfg.optim.min_lr_ratio, cfg.optim.grad_clip) == (2000, 0.1, 1.0)
    assert cfg.training.batch_tokens == 4 * 2**20 and cfg.data.seq_len == 2048
    assert abs(cfg.training.steps * cfg.training.batch_tokens - tokens) / tokens < 1e-3
    assert sum(cfg.data.weights.values()) == pytest.approx(1.0)


def test_overrides_are_typed():
    cfg = load_config("debug", ["--optim.lr=1e-2", "--training.steps=3", "--model.n_layers=1",
                                "--training.activation_checkpointing=full", "--data.sources={a = 'x'}",
                                "--data.kind=shards"])
    assert cfg.optim.lr == 1e-2 and cfg.training.steps == 3 and cfg.model_args().n_layers == 1
    assert cfg.training.activation_checkpointing == "full" and cfg.data.sources == {"a": "x"}
    assert load_config("debug", ["--optim.lr=1"]).optim.lr == 1.0  # an int where a float is expected is fine
    assert parse_override("--data.tokenizer=some/path.model") == ("data", "tokenizer", "some/path.model")


@pytest.mark.parametrize("arg, words", [
    ("--optim.lrr=1", "optim.lrr"),
    ("--nosection.x=1", "nosection"),
    ("--model.dimension=8", "model.dimension"),
    ("--training.steps=1.5", "expected int"),
    ("--training.deterministic=1", "expected bool"),
    ("--training.activation_checkpointing=some", "none, full, selective"),
    ("--optim.lr", "--section.key=value"),
])
def test_bad_overrides(arg, words):
    with pytest.raises(UserError, match=words.replace(".", r"\.")):
        load_config("debug", [arg])


def test_grad_accumulation_from_tokens():
    cfg = load_config("debug")  # 512 tokens = 8 sequences of 64, micro-batch 4
    assert grad_accum_steps(cfg, 1) == 2 and grad_accum_steps(cfg, 2) == 1
    with pytest.raises(UserError, match="batch_tokens"):
        grad_accum_steps(cfg, 3)


def test_lr_schedule_matches_closed_form():
    """Drive a real optimizer through the LambdaLR and compare with warmup + cosine written out."""
    cfg = load_config("debug", ["--optim.lr=1e-3", "--optim.warmup_steps=10"]).optim
    total = 100
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, total)
    for step in range(total):
        if step < 10:
            expected = 1e-3 * (step + 1) / 10
        else:
            t = (step - 10) / (total - 1 - 10)
            expected = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * t))
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12, abs=0)
        assert lr_at(step, 1e-3, 10, total, 0.1) == pytest.approx(expected, rel=1e-12, abs=0)
        opt.step()
        sched.step()
    assert lr_at(total - 1, 1e-3, 10, total, 0.1) == pytest.approx(1e-4)  # ends at 10% of peak
    assert lr_at(9, 1e-3, 10, total, 0.1) == pytest.approx(1e-3)  # peak at the end of warmup


def test_param_groups_decay_matrices_not_norms():
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=64, multiple_of=16, max_seq_len=16))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "tok_embeddings.weight" in decayed and "output.weight" in decayed
    assert "layers.0.attention.wq.weight" in decayed and "layers.1.feed_forward.w2.weight" in decayed
    assert {names[id(p)] for p in no_decay["params"]} == {n for n in names.values() if n.endswith("norm.weight")}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    opt = build_optimizer(model, load_config("debug").optim)
    assert opt.defaults["betas"] == (0.9, 0.95)


@pytest.mark.parametrize("preset_args", [
    ModelArgs(dim=384, n_layers=6, n_heads=6, vocab_size=8192, hidden_dim=1024),
    ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=100, multiple_of=32),
    ModelArgs(),  # llama-7b
])
def test_flops_per_token(preset_args):
    _, non_emb = count_params(preset_args)
    assert non_embedding_params(preset_args) == non_emb  # the formula's N is the model's own count
    T = 2048
    assert flops_per_token(preset_args, T) == 6 * non_emb + 12 * preset_args.n_layers * preset_args.dim * T


def test_device_peaks():
    assert DEVICE_PEAK_FLOPS["H100 SXM"] == 989e12 and DEVICE_PEAK_FLOPS["A100"] == 312e12


def test_mesh_shape_constraints():
    from llamaforge.train.parallel import mesh_shape

    assert mesh_shape(8, -1, 2) == (4, 2) and mesh_shape(4, 4, 1) == (4, 1)
    with pytest.raises(UserError, match="parallel.tp"):
        mesh_shape(4, -1, 3)
    with pytest.raises(UserError, match="dp_shard x tp"):
        mesh_shape(4, 3, 1)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes_fit_their_tensor_parallel_degree(name):
    cfg = load_config(name)
    args, tp = cfg.model_args(), cfg.parallel.tp
    assert args.n_heads % tp == 0 and args.ffn_hidden_dim % tp == 0 and args.vocab_size % tp == 0
    assert cfg.data.seq_len % tp == 0
    assert cfg.training.batch_tokens % (cfg.data.seq_len * cfg.training.micro_batch_size) == 0


@pytest.mark.parametrize("arg", ["--optim.lr=-1", "--model.dim=0", "--parallel.dp_shard=0"])
def test_range_error_names_the_flag_that_set_the_value(tmp_path, arg):
    """A value out of range that came from the command line is blamed on the flag, not on the recipe file; one that
    came from the file names the file."""
    flag = arg.split("=")[0]
    with pytest.raises(UserError) as e:
        load_config("debug", [arg])
    assert str(e.value).startswith(f"{flag}: expected"), str(e.value)
    section, key = flag[2:].split(".")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"[{section}]\n{key} = {arg.split('=')[1]}\n")
    with pytest.raises(UserError) as e:
        load_config(str(recipe))
    assert str(e.value).startswith(f"{recipe}: {section}.{key}: expected"), str(e.value)
