"""The memory planner against the peak memory of real training steps on a CPU.

How the peak is measured (no CUDA allocator statistics on a CPU): each configuration runs in a fresh process with
glibc's `MALLOC_MMAP_THRESHOLD_=65536`, so every tensor above 64 KiB is its own mmap that is unmapped when freed,
and the process's resident set follows the live tensors page for page. The same ops first run once on a tiny batch
(library code pages also count as resident), then `/proc/self/clear_refs` resets the kernel's high-water mark
(VmHWM), and the model, AdamW and two optimizer steps of two accumulated micro-batches run. Peak = VmHWM minus the
resident size at the reset. The probe is this file run as a script; for FSDP, one process per shard joined by a
gloo process group, and the largest per-process peak counts.
"""

import gc
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from llamaforge.errors import UserError
from llamaforge.model import ModelArgs
from llamaforge.plan.memory import Layout, estimate, largest_micro_batch
from llamaforge.presets import PRESETS

GiB = 2**30
PROBE_ARGS = {"dim": 256, "n_layers": 4, "n_heads": 4, "vocab_size": 4096, "multiple_of": 32, "max_seq_len": 256}


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _probe(cfg: dict) -> dict:
    """Runs in a subprocess: the peak resident bytes of training steps (see the module docstring)."""
    import torch.nn.functional as F

    from llamaforge.model import Transformer
    from llamaforge.train.parallel import apply_activation_checkpointing, apply_fsdp

    torch.set_num_threads(1)
    args = ModelArgs(**cfg["args"])
    # "autocast": fp32 weights, bf16 matmuls under torch.autocast (the trainer's single-device bf16 path)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "autocast": torch.float32}[cfg["dtype"]]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg["dtype"] == "autocast")
    tokens = torch.randint(0, args.vocab_size, (cfg["accum"], cfg["micro_batch"], cfg["seq_len"] + 1))

    mesh = None
    if cfg.get("fsdp", 1) > 1:  # one of `fsdp` processes started by measure(); gloo on the CPU
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        dist.init_process_group("gloo")
        mesh = init_device_mesh("cpu", (cfg["fsdp"],))

    def build():
        model = Transformer(args).to(dtype)
        apply_activation_checkpointing(model, cfg["ac"])  # the trainer's own wrappers
        if mesh is not None:
            apply_fsdp(model, mesh, param_dtype=dtype)  # the trainer's FSDP2 layout: one unit per block + root
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train(model, opt, batches, steps):
        for _ in range(steps):
            for x in batches:
                with autocast:
                    logits = model(x[:, :-1])
                    loss = F.cross_entropy(logits.view(-1, args.vocab_size), x[:, 1:].reshape(-1))
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=False)  # gradients stay allocated, as between accumulated micro-batches

    model, opt = build()
    train(model, opt, tokens[:1, :1, :9], 2)  # warm-up: touch the code pages of every op
    del model, opt
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    base = _status("VmRSS")
    model, opt = build()
    train(model, opt, tokens, 2)
    return {"peak": _status("VmHWM") - base}


def measure(**cfg) -> int:
    """The largest per-process peak over the `fsdp` processes (1 by default) that run the probe."""
    import socket

    world = cfg.get("fsdp", 1)
    with socket.socket() as sock:  # a free port for the process group's rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(world):
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1", RANK=str(rank),
                   WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, __file__, json.dumps(cfg)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    peaks = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        peaks.append(json.loads(out.strip().splitlines()[-1])["peak"])
    return max(peaks)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc to measure peak RSS")
@pytest.mark.parametrize(
    "dtype,ac,fsdp",
    [
        ("fp32", "none", 1),
        pytest.param("fp32", "full", 1, marks=pytest.mark.slow),
        pytest.param("fp32", "selective", 1, marks=pytest.mark.slow),
        pytest.param("bf16", "none", 1, marks=pytest.mark.slow),
        pytest.param("autocast", "none", 1, marks=pytest.mark.slow),
        pytest.param("fp32", "none", 2, marks=pytest.mark.slow),  # FSDP2 over 2 processes (gloo)
    ],
)
def test_estimate_within_10_percent_of_measured_cpu_peak(dtype, ac, fsdp):
    seq_len, micro_batch, accum = 256, 4, 2
    measured = measure(args=PROBE_ARGS, dtype=dtype, ac=ac, fsdp=fsdp, micro_batch=micro_batch, seq_len=seq_len,
                       accum=accum)
    master, compute = ("fp32", "bf16") if dtype == "autocast" else (dtype, dtype)
    layout = Layout(fsdp=fsdp, seq_len=seq_len, micro_batch=micro_batch, ac=ac, master_dtype=master,
                    compute_dtype=compute)
    est = estimate(ModelArgs(**PROBE_ARGS), layout)
    assert est.activations + est.loss > 0.4 * est.total  # the activation model carries real weight here
    assert est.total == pytest.approx(measured, rel=0.10), (est.total / 2**20, measured / 2**20)


def test_states_arithmetic_and_sharding():
    args = PRESETS["llama-7b"]
    # embedding + output + final norm, then per block: 4 attention matrices, 3 FFN matrices, 2 norms
    n = 2 * args.vocab_size * args.dim + args.dim + args.n_layers * (
        4 * args.dim**2 + 3 * args.dim * args.ffn_hidden_dim + 2 * args.dim
    )
    one = estimate(args, Layout(master_dtype="fp32", compute_dtype="fp32"))
    assert one.params == n * 4 and one.grads == n * 4 and one.optimizer == n * 8
    assert one.compute_copies == 0
    sharded = estimate(args, Layout(fsdp=8, tp=2))
    assert sharded.params == pytest.approx(n * 4 / 16)
    assert sharded.compute_copies > 0  # bf16 weights gathered per block
    tp = estimate(args, Layout(tp=4, master_dtype="fp32", compute_dtype="fp32"))
    assert tp.parts["SwiGLU"] == pytest.approx(one.parts["SwiGLU"] / 4)  # FFN width split 4 ways
    # gathered matmul inputs stay full size on every rank: less than a 4x saving overall
    assert one.activations / 4 < tp.activations < one.activations / 2
    assert tp.loss == one.loss  # full logits on every tensor-parallel rank


def test_checkpointing_orders_activation_memory():
    args = PRESETS["llama-7b"]
    acts = {ac: estimate(args, Layout(ac=ac, micro_batch=4)).activations for ac in ("none", "selective", "full")}
    assert acts["none"] > acts["selective"] > acts["full"]


def test_largest_micro_batch_fits_and_the_next_does_not():
    args, layout = PRESETS["llama-7b"], Layout(fsdp=8, ac="selective")
    best = largest_micro_batch(args, layout, 80 * GiB)
    assert best >= 1
    assert estimate(args, replace(layout, micro_batch=best)).total <= 80 * GiB
    assert estimate(args, replace(layout, micro_batch=best + 1)).total > 80 * GiB


def test_model_that_cannot_fit():
    # 65B on one 80 GB device: 16 bytes per parameter of states alone is ~1 TB.
    assert largest_micro_batch(PRESETS["llama-65b"], Layout(), 80 * GiB) == 0


def test_bad_layouts_are_user_errors():
    with pytest.raises(UserError, match="--ac"):
        estimate(PRESETS["tiny-1m"], Layout(ac="some"))
    with pytest.raises(UserError, match="--tp"):
        estimate(PRESETS["tiny-1m"], Layout(tp=3))


if __name__ == "__main__":
    print(json.dumps(_probe(json.loads(sys.argv[1]))))
