"""Energy and emissions of a training run, the paper's way (Section 6, Table 15).

The paper follows Wu et al. (2022):  Wh = GPU-hours x GPU power (W) x PUE,  tCO2eq = MWh x 0.385,
with the A100-80GB's 400 W (the NVLink systems' thermal design power), a PUE of 1.1 and the US national average
carbon intensity of 0.385 kg CO2eq/kWh, the same for every model so that the numbers compare training, not
where it ran. `PAPER_CARBON` holds Table 15's four LLaMA rows (MWh, tCO2eq); `paper_carbon_table` recomputes
them from the GPU-hours of the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llamaforge.errors import UserError

PAPER_GPU_WATTS = 400.0  # A100-80GB, NVLink systems
PAPER_PUE = 1.1
PAPER_KG_PER_KWH = 0.385  # US national average
PAPER_CARBON = {  # Table 15: preset -> (GPU-hours, MWh, tCO2eq)
    "llama-7b": (82_432, 36.0, 14.0),
    "llama-13b": (135_168, 59.0, 23.0),
    "llama-33b": (530_432, 233.0, 90.0),
    "llama-65b": (1_022_362, 449.0, 173.0),
}


@dataclass(frozen=True)
class Carbon:
    """A run's footprint: `gpu_hours`, `mwh` (energy drawn, the data-centre overhead PUE included) and `tco2eq` (tonnes
    of CO2 equivalent), by the paper's Section 6 formula (`carbon`)."""
    gpu_hours: float
    mwh: float  # energy drawn, data-centre overhead (PUE) included
    tco2eq: float  # tonnes of CO2 equivalent

    def as_dict(self) -> dict:
        """{"gpu_hours", "mwh", "tco2eq"}, for JSON."""
        return {"gpu_hours": self.gpu_hours, "mwh": self.mwh, "tco2eq": self.tco2eq}


def carbon(gpu_hours: float, watts: float = PAPER_GPU_WATTS, pue: float = PAPER_PUE,
           kg_per_kwh: float = PAPER_KG_PER_KWH) -> Carbon:
    """Energy (MWh) and emissions (tCO2eq) of `gpu_hours` at `watts` per GPU, `pue`, `kg_per_kwh` (the paper's
    constants by default). Raises UserError on a negative or zero constant."""
    for name, value in (("--gpu-watts", watts), ("--pue", pue), ("--carbon-intensity", kg_per_kwh)):
        if not value > 0:
            raise UserError(f"{name}: expected a positive number, got {value:g}")
    if gpu_hours < 0:
        raise UserError(f"GPU-hours: expected a non-negative number, got {gpu_hours:g}")
    mwh = gpu_hours * watts * pue / 1e6
    return Carbon(gpu_hours, mwh, mwh * 1000 * kg_per_kwh / 1000)  # MWh -> kWh -> kg -> t


def paper_carbon_table(watts: float = PAPER_GPU_WATTS, pue: float = PAPER_PUE,
                       kg_per_kwh: float = PAPER_KG_PER_KWH) -> list[dict]:
    """Table 15's LLaMA rows recomputed from its GPU-hours, beside the paper's MWh and tCO2eq."""
    rows = []
    for preset, (hours, paper_mwh, paper_t) in PAPER_CARBON.items():
        c = carbon(hours, watts, pue, kg_per_kwh)
        rows.append({"preset": preset, **c.as_dict(), "paper_mwh": paper_mwh, "paper_tco2eq": paper_t})
    return rows


@dataclass(frozen=True)
class MeasuredRun:
    """What a finished run's metrics.jsonl says about its cost: `device_hours` (wall hours x processes) and
    `device_type` ("cuda", "cpu", ... as torch names it; "unknown" when the records do not say)."""
    device_hours: float
    device_type: str

    @property
    def on_gpu(self) -> bool:
        """True unless the run is known to have trained on something other than a GPU (an unrecorded device counts
        as a GPU, the paper's assumption)."""
        return self.device_type in ("cuda", "unknown")


def _device_type(record: dict) -> str:
    """The device a training record was measured on: its `device_type` field (written since the trainer records it),
    else the memory field `train.metrics.memory_stats` wrote (`mem_peak_gib` on CUDA, `mem_peak_rss_gib` on CPU),
    else "unknown"."""
    if isinstance(record.get("device_type"), str):
        return record["device_type"]
    if "mem_peak_gib" in record:
        return "cuda"
    if "mem_peak_rss_gib" in record:
        return "cpu"
    return "unknown"


def measured_run(metrics_path) -> MeasuredRun:
    """Device-hours and device type of a training run from its metrics.jsonl: the last record's `elapsed_s` (wall
    seconds since the run started) times its `devices` (processes), and the device it ran on (`_device_type`).
    Read by the trainer's own reader (`train.metrics.read_metrics`), so a run killed while writing its last line
    still counts up to the record before. Raises UserError when the file cannot be read or has no such record."""
    from llamaforge.train.metrics import read_metrics

    path = Path(metrics_path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    try:
        records = read_metrics(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: expected a training run's metrics.jsonl ({e})") from None
    timed = [r for r in records if isinstance(r, dict) and "elapsed_s" in r]
    if not timed:
        raise UserError(f"{path}: elapsed_s: expected training records with elapsed_s and devices")
    last = timed[-1]
    return MeasuredRun(float(last["elapsed_s"]) * int(last.get("devices", 1)) / 3600, _device_type(last))


def measured_gpu_hours(metrics_path) -> float:
    """Device-hours of a training run (`measured_run(...).device_hours`); GPU-hours only when the run was on GPUs."""
    return measured_run(metrics_path).device_hours
