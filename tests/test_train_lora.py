"""LoRA: step-0 equality, frozen base, adapter-only optimizer, merging, and parity with HF PEFT on the HF export
(forward logits, adapter gradients, and adapters saved by either side loaded by the other)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from llamaforge.errors import UserError
from llamaforge.formats import save_model
from llamaforge.model import ModelArgs, Transformer
from llamaforge.train.config import LoRAConfig, OptimConfig
from llamaforge.train.lora import (
    LoRALinear,
    adapter_state_dict,
    apply_lora,
    from_peft,
    load_adapter,
    merge_lora,
    parse_targets,
    save_adapter,
    to_peft,
)
from llamaforge.train.optim import build_optimizer

# GQA with odd head counts: the q/k row permutation of lora_B must use n_heads for q and n_kv_heads for k.
ARGS = ModelArgs(dim=48, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=71, hidden_dim=80, max_seq_len=32,
                 norm_eps=1e-5)


def random_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ARGS)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + ("norm" in name))
    return model


def randomize_adapters(model, seed: int = 1) -> None:
    """Non-zero B (and A), so the adapters change the output and any misplaced row shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def tokens(seed: int = 2, shape=(2, 13)) -> torch.Tensor:
    return torch.randint(0, ARGS.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def test_targets_parse_and_refuse_unknown():
    assert parse_targets("wq,wk,wv,wo") == ["wq", "wk", "wv", "wo"]
    assert parse_targets("all") == ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]
    assert parse_targets(["v_proj", "q_proj", "gate_proj"]) == ["wq", "wv", "w1"]
    with pytest.raises(UserError, match="lora.targets: no projection 'wx'"):
        apply_lora(random_model(), LoRAConfig(targets="wq,wx"))
    with pytest.raises(UserError, match="lora.rank"):
        apply_lora(random_model(), LoRAConfig(rank=0))


def test_step0_equals_base_and_base_is_frozen():
    model = random_model()
    x = tokens()
    with torch.no_grad():
        before = model(x)
    adapted = apply_lora(model, LoRAConfig(rank=4, alpha=8, targets="all"))
    assert len(adapted) == ARGS.n_layers * 7
    with torch.no_grad():
        assert torch.equal(model(x), before)  # B = 0: bit-identical, not merely close
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert isinstance(model.layers[0].attention.wq, LoRALinear)
    assert "layers.0.attention.wq.weight" in model.state_dict()  # base names unchanged


def test_lora_run_changes_only_adapters_and_optimizer_holds_adapters_only():
    model = random_model()
    apply_lora(model, LoRAConfig(rank=4, alpha=8))
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.1))
    x = tokens()
    for _ in range(3):
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    adapters = {id(p) for n, p in model.named_parameters() if ".lora_" in n}
    assert held == adapters and set(map(id, opt.state)) <= adapters
    for n, p in model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n  # bit-identical
            assert p.grad is None, n
        else:
            assert not torch.equal(p, start[n]), n  # every adapter learned something (B moved off zero)


def test_merged_model_equals_adapted():
    model = random_model()
    apply_lora(model, LoRAConfig(rank=4, alpha=12, targets="all"))
    randomize_adapters(model)
    x = tokens()
    with torch.no_grad():
        adapted = model(x)
        merged = merge_lora(model)
        assert not any(isinstance(m, LoRALinear) for m in merged.modules())
        assert set(merged.state_dict()) == set(random_model().state_dict())
        torch.testing.assert_close(merged(x), adapted, rtol=0, atol=1e-5)
        assert (adapted - random_model()(x)).abs().max() > 1e-2  # the adapters do change the output


def test_apply_after_parallelize_is_refused():
    from llamaforge.train.parallel import apply_activation_checkpointing

    model = random_model()
    apply_activation_checkpointing(model, "full")
    with pytest.raises(RuntimeError, match="before parallelize"):
        apply_lora(model, LoRAConfig())


def test_peft_names_round_trip_and_permute_q_k():
    model = random_model()
    apply_lora(model, LoRAConfig(rank=4, targets="all"))
    randomize_adapters(model)
    ours = adapter_state_dict(model.state_dict())
    peft_named = to_peft(ours, ARGS.n_heads, ARGS.n_kv_heads)
    assert "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight" in peft_named
    assert "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight" in peft_named
    q_b = peft_named["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert not torch.equal(q_b, ours["layers.0.attention.wq.lora_B.weight"])  # permuted rows
    back = from_peft(peft_named, ARGS.n_heads, ARGS.n_kv_heads, "x")
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)


# ---------------------------------------------------------------------------------------------- PEFT parity

@pytest.fixture
def hf_export(tmp_path):
    """A random tiny model and its HF export (needs peft and transformers, the test extra)."""
    global peft, transformers
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    model = random_model()
    save_model(model, tmp_path / "hf", format="hf")
    return model, tmp_path / "hf"


def hf_base(path):
    return transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")


def peft_adapter_grads(pm) -> dict[str, torch.Tensor]:
    return {n.replace(".default", ""): p.grad for n, p in pm.named_parameters() if ".lora_" in n}


@pytest.mark.parametrize("targets", ["wq,wk,wv,wo", "all"])
def test_forward_and_adapter_gradients_match_peft(hf_export, targets):
    ours, path = hf_export
    cfg = LoRAConfig(rank=4, alpha=8, targets=targets)
    apply_lora(ours, cfg)
    randomize_adapters(ours)
    pm = peft.get_peft_model(hf_base(path), peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=[n for n in _hf_names(targets)]))
    peft.set_peft_model_state_dict(pm, to_peft(adapter_state_dict(ours.state_dict()), ARGS.n_heads, ARGS.n_kv_heads))
    ours.train(), pm.train()  # dropout 0: train mode changes nothing, and is the mode gradients are taken in
    x = tokens(shape=(2, 17))
    a, b = ours(x), pm(input_ids=x).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    for logits in (a, b):
        F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
    theirs = from_peft(peft_adapter_grads(pm), ARGS.n_heads, ARGS.n_kv_heads, "peft grads")
    mine = {n: p.grad for n, p in ours.named_parameters() if ".lora_" in n}
    assert mine.keys() == theirs.keys() and len(mine) == ARGS.n_layers * len(parse_targets(targets)) * 2
    for n, grad in mine.items():
        assert grad.abs().max() > 0, n
        torch.testing.assert_close(grad, theirs[n], rtol=0, atol=1e-5, msg=n)


def _hf_names(targets):
    from llamaforge.train.lora import PROJECTIONS

    return [PROJECTIONS[n][1].rsplit(".", 1)[1] for n in parse_targets(targets)]


def test_llamaforge_adapter_loads_in_peft(hf_export, tmp_path):
    ours, path = hf_export
    cfg = LoRAConfig(rank=4, alpha=16, targets="all")
    apply_lora(ours, cfg)
    randomize_adapters(ours)
    save_adapter(ours.state_dict(), ARGS, cfg, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    pm = peft.PeftModel.from_pretrained(hf_base(path), tmp_path / "adapter").eval()
    x = tokens(shape=(1, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), pm(input_ids=x).logits, rtol=0, atol=1e-5)


def test_peft_adapter_loads_in_llamaforge(hf_export, tmp_path):
    ours, path = hf_export
    torch.manual_seed(5)
    pm = peft.get_peft_model(hf_base(path), peft.LoraConfig(r=2, lora_alpha=5, target_modules=["q_proj", "k_proj",
                                                                                              "v_proj", "up_proj"]))
    with torch.no_grad():  # PEFT starts B at zero too: move it so the test sees the adapters
        for n, p in pm.named_parameters():
            if ".lora_" in n:
                p.add_(torch.randn_like(p) * 0.2)
    pm.save_pretrained(tmp_path / "peft")
    load_adapter(ours, tmp_path / "peft")
    assert isinstance(ours.layers[0].feed_forward.w3, LoRALinear)
    assert not isinstance(ours.layers[0].attention.wo, LoRALinear)
    x = tokens(shape=(2, 11))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), pm.eval()(input_ids=x).logits, rtol=0, atol=1e-5)


def test_bad_adapter_folders_are_one_line_errors(hf_export, tmp_path):
    ours, _ = hf_export
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["x_proj"]}))
    with pytest.raises(UserError, match="adapter_config.json: lora.targets: no projection 'x_proj'"):
        load_adapter(ours, bad)
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "use_dora": True,
                                                         "target_modules": ["q_proj"]}))
    with pytest.raises(UserError, match="use_dora"):
        load_adapter(ours, bad)


def test_truncated_adapter_weights_are_one_line(hf_export, tmp_path):
    """A cut-short adapter_model.safetensors (a copy interrupted) is a UserError naming the file."""
    ours, _ = hf_export
    cfg = LoRAConfig(rank=2, alpha=4, targets="wq")
    adapted = random_model()
    apply_lora(adapted, cfg)
    save_adapter(adapted.state_dict(), ARGS, cfg, tmp_path / "adapter")
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40])
    with pytest.raises(UserError, match="adapter_model.safetensors: not a valid safetensors file"):
        load_adapter(ours, tmp_path / "adapter")


def test_convert_of_an_adapter_folder_says_how_to_merge_it(tmp_path, capsys):
    """`convert` given a LoRA adapter folder (PEFT's adapter_config.json + adapter_model.safetensors) says it is an
    adapter, not a model, and gives the merge command; that command, run as printed, writes base + adapters merged."""
    import shlex
    import subprocess
    import sys

    from llamaforge.cli import main
    from llamaforge.formats import load_model

    base = tmp_path / "base"
    save_model(random_model(), base)
    model = random_model()
    apply_lora(model, LoRAConfig(rank=4, alpha=8, targets="all"))
    randomize_adapters(model)
    save_adapter(model.state_dict(), ARGS, LoRAConfig(rank=4, alpha=8, targets="all"), tmp_path / "adapter",
                 base_model=str(base))
    rc = main(["convert", str(tmp_path / "adapter"), str(tmp_path / "out"), "--to", "hf"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "a LoRA adapter" in err[0] and str(base) in err[0], err
    assert "unknown checkpoint format" not in err[0] and not (tmp_path / "out").exists()
    command = err[0][err[0].index("python -c"):err[0].index(" (a finetune")]
    argv = shlex.split(command)
    r = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "merged")(tokens()), merge_lora(model)(tokens()),
                                   rtol=0, atol=1e-5)
