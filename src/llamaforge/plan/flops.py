"""Training cost of a model: FLOPs per token, total FLOPs, device-hours and wall-clock time.

The FLOP count is the project's one formula, `flops_per_token` below (training's MFU imports it from here):

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

GiB = 2**30


def non_embedding_params(args: ModelArgs) -> int:
    """Parameters that take part in matmuls: everything but the token embedding table (the output projection
    is a matmul and is counted; Kaplan et al. 2020 §2.1 count N the same way)."""
    d, hd, f = args.dim, args.head_dim, args.ffn_hidden_dim
    attn = d * args.n_heads * hd * 2 + d * args.n_kv_heads * hd * 2  # wq, wo; wk, wv
    ffn = 3 * d * f
    norms = 2 * d
    return args.n_layers * (attn + ffn + norms) + d + d * args.vocab_size  # + final norm + output


def flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """Training FLOPs per token: 6 * N_non-embedding + 12 * n_layers * dim * seq_len (PaLM appendix B; see the
    module docstring). The project's one FLOP formula: training MFU and the planner both use it."""
    return 6 * non_embedding_params(args) + 12 * args.n_layers * args.dim * seq_len


@dataclass(frozen=True)
class Device:
    """One accelerator model: its name in `llamaforge plan --gpu`, the dense bf16 tensor-core peak in FLOP/s
    (vendors' data sheets, without sparsity), the memory a framework can allocate in bytes (nominal capacity),
    and the substrings of `torch.cuda.get_device_name()` that identify it for training MFU."""

    name: str
    peak_flops: float
    memory_bytes: int
    cuda_names: tuple[str, ...] = ()


def _device(name: str, peak_tflops: float, memory_gib: float, *cuda_names: str) -> Device:
    return Device(name, peak_tflops * 1e12, int(memory_gib * GiB), cuda_names)


# The project's one device table: the planner's GPUs and training's MFU peaks. Rows are matched against the CUDA
# device name in order, so the specific names (GH200 before H200, H100 PCIe/NVL before the generic H100 that
# "NVIDIA H100 80GB HBM3" is, L40S before L4) come first. An unknown device gets no MFU rather than a wrong
# one (a hard-coded A100 peak gave >100% MFU on H100s elsewhere).
DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        _device("GH200", 989, 96, "GH200"),
        _device("H200", 989, 141, "H200"),
        _device("H100-PCIe", 756, 80, "H100 PCIe"),
        _device("H100-NVL", 835, 94, "H100 NVL"),
        _device("H100-80GB", 989, 80, "H100 SXM", "H100"),
        _device("B200", 2250, 180, "B200"),
        _device("A100-40GB", 312, 40),  # same chip and peak as the 80GB part, matched by it
        _device("A100-80GB", 312, 80, "A100"),
        _device("L40S", 362, 48, "L40S"),
        _device("L4", 121, 24, "L4"),
        _device("V100-32GB", 125, 32, "V100"),  # fp16 (V100 has no bf16)
        _device("MI300X", 1307, 192, "MI300X"),
        _device("MI250X", 383, 128, "MI250X"),
    )
}
# CUDA device-name substring -> peak FLOP/s, the view of DEVICES that training's MFU reads
DEVICE_PEAK_FLOPS: dict[str, float] = {key: d.peak_flops for d in DEVICES.values() for key in d.cuda_names}


def peak_flops_of(cuda_name: str) -> float | None:
    """The dense bf16 peak (FLOP/s) of a device by its CUDA name ("NVIDIA H100 80GB HBM3"), or None if unknown."""
    for key, peak in DEVICE_PEAK_FLOPS.items():  # table order: specific names before generic ones
        if key in cuda_name:
            return peak
    return None


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
    """What training costs (`training_cost`): `flops_per_token` (forward + backward, `flops_per_token`'s formula),
    `total_flops` for all tokens, `tokens_per_s_per_device` at the given MFU, `device_hours` in total and
    `wall_clock_days` over all devices."""
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
