"""Training cost of a model: FLOPs per token, total FLOPs, device-hours and wall-clock time.

The FLOP count is the project's one formula, `llamaforge.train.metrics.flops_per_token`:

    FLOPs/token = 6 * N_non-embedding + 12 * n_layers * dim * seq_len

6N: every weight does one multiply-add (2 FLOPs) per token in the forward pass and two in the backward pass
(gradient of the input and of the weight). 12·L·d·T: the attention scores QKᵀ and their weighted sum of V,
2·T·d FLOPs each per token and layer in the forward pass, times 3 for forward + backward, averaged over the
causal and non-causal half (PaLM appendix B counts the full square). Recomputation by activation checkpointing
is not counted: MFU is "useful" FLOPs over peak.

Time follows from a throughput assumption, the model FLOPs utilization (MFU):

    tokens/s/device = MFU * peak_FLOP/s / FLOPs_per_token
    device-hours    = tokens / (tokens/s/device) / 3600
    wall-clock      = device-hours / n_devices

Reproducing the paper (Touvron et al. 2023, §2.4 and Table 15, all on A100-80GB, peak 312 TFLOP/s bf16):
the 65B model's "around 380 tokens/sec/GPU" implies MFU = 380 * 4.062e11 / 312e12 = 49.5%. Applying that one
MFU to all four sizes gives 2048 GPUs x 20.8 days for 65B (paper: about 21) and GPU-hours within 10% of Table 15
(7B -6.4%, 13B +9.4%, 33B -3.3%, 65B +0.1%): the table's own implied MFUs are 46.3 / 54.1 / 47.9 / 49.5%.
`paper_table()` recomputes those numbers; tests/test_plan_flops.py holds them to 10%.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamaforge.errors import UserError
from llamaforge.model import ModelArgs
from llamaforge.train.metrics import DEVICE_PEAK_FLOPS, flops_per_token

GiB = 2**30


@dataclass(frozen=True)
class Device:
    name: str
    peak_flops: float  # dense bf16 FLOP/s, from train.metrics.DEVICE_PEAK_FLOPS
    memory_bytes: int  # what the framework can allocate (nominal capacity)


def _device(name: str, peak_key: str, memory_gib: float) -> Device:
    return Device(name, DEVICE_PEAK_FLOPS[peak_key], int(memory_gib * GiB))


# Planner devices: the peak comes from the metrics table (one table for MFU everywhere), plus the memory size.
DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        _device("A100-40GB", "A100", 40),
        _device("A100-80GB", "A100", 80),
        _device("H100-80GB", "H100 SXM", 80),
        _device("H100-PCIe", "H100 PCIe", 80),
        _device("H100-NVL", "H100 NVL", 94),
        _device("H200", "H200", 141),
        _device("GH200", "GH200", 96),
        _device("B200", "B200", 180),
        _device("L40S", "L40S", 48),
        _device("L4", "L4", 24),
        _device("V100-32GB", "V100", 32),
        _device("MI250X", "MI250X", 128),
        _device("MI300X", "MI300X", 192),
    )
}


def get_gpu(name: str) -> Device:
    """The planner's entry for a GPU model, by case-insensitive name (`llamaforge plan --gpu NAME`).

    Raises UserError naming `--gpu` and the known names when `name` is not in `DEVICES`.
    """
    for key, device in DEVICES.items():
        if key.lower() == name.lower():
            return device
    raise UserError(f"--gpu: unknown GPU {name!r}; known: {', '.join(DEVICES)}")


# The paper's reported costs (Table 15: A100-80GB GPU-hours; §2.4: 65B throughput on 2048 GPUs).
PAPER_DEVICE = "A100-80GB"
PAPER_SEQ_LEN = 2048
PAPER_65B_TOKENS_PER_S_PER_GPU = 380.0
PAPER_65B_GPUS = 2048
PAPER_65B_DAYS = 21.0
PAPER_GPU_HOURS = {  # preset -> (GPU-hours, training tokens)
    "llama-7b": (82_432, 1.0e12),
    "llama-13b": (135_168, 1.0e12),
    "llama-33b": (530_432, 1.4e12),
    "llama-65b": (1_022_362, 1.4e12),
}


@dataclass(frozen=True)
class TrainingCost:
    flops_per_token: float
    total_flops: float
    tokens_per_s_per_device: float
    device_hours: float
    wall_clock_days: float


def implied_mfu(args: ModelArgs, seq_len: int, tokens_per_s_per_device: float, peak_flops: float) -> float:
    """The MFU a measured throughput corresponds to."""
    return tokens_per_s_per_device * flops_per_token(args, seq_len) / peak_flops


def training_cost(
    args: ModelArgs, tokens: float, seq_len: int, device: Device, n_devices: int, mfu: float
) -> TrainingCost:
    """FLOPs, device-hours and wall-clock days to train `args` on `tokens` tokens at utilization `mfu`."""
    if tokens <= 0:
        raise UserError(f"--tokens: expected a positive token count, got {tokens:g}")
    if n_devices < 1:
        raise UserError(f"--gpus: expected at least 1 device, got {n_devices}")
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu: expected a utilization in (0, 1], got {mfu:g}")
    fpt = flops_per_token(args, seq_len)
    tps = mfu * device.peak_flops / fpt
    device_hours = tokens / tps / 3600
    return TrainingCost(fpt, fpt * tokens, tps, device_hours, device_hours / n_devices / 24)


def paper_mfu() -> float:
    """The MFU implied by the paper's 65B throughput (380 tokens/s/GPU on A100-80GB): about 49.5%."""
    from llamaforge.presets import PRESETS

    device = DEVICES[PAPER_DEVICE]
    return implied_mfu(PRESETS["llama-65b"], PAPER_SEQ_LEN, PAPER_65B_TOKENS_PER_S_PER_GPU, device.peak_flops)


def paper_table(mfu: float | None = None) -> list[dict]:
    """Table 15 recomputed from the formula with one MFU (default: the 65B one) for every size."""
    from llamaforge.presets import PRESETS

    mfu = paper_mfu() if mfu is None else mfu
    device = DEVICES[PAPER_DEVICE]
    rows = []
    for preset, (paper_hours, tokens) in PAPER_GPU_HOURS.items():
        args = PRESETS[preset]
        cost = training_cost(args, tokens, PAPER_SEQ_LEN, device, PAPER_65B_GPUS, mfu)
        paper_tps = tokens / (paper_hours * 3600)
        rows.append({
            "preset": preset,
            "tokens": tokens,
            "gpu_hours": cost.device_hours,
            "paper_gpu_hours": paper_hours,
            "ratio": cost.device_hours / paper_hours,
            "tokens_per_s_per_gpu": cost.tokens_per_s_per_device,
            "paper_implied_mfu": implied_mfu(args, PAPER_SEQ_LEN, paper_tps, device.peak_flops),
            "days_on_2048": cost.wall_clock_days,
        })
    return rows
