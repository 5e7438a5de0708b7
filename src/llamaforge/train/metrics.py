"""Training metrics: tokens/s, MFU, and the writers (JSONL, TensorBoard, tqdm, loss-curve PNG).

MFU = achieved FLOP/s / the device's dense bf16 peak. The FLOP formula (`flops_per_token`: 6·N_non-embedding +
12·L·d·T, PaLM appendix B) and the device table are the planner's, in `llamaforge.plan.flops`: one of each.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from llamaforge.errors import UserError
from llamaforge.io import atomic_file
from llamaforge.plan.flops import peak_flops_of


def device_peak_flops(device: torch.device) -> float | None:
    """The dense bf16 peak (FLOP/s) of `device` from the device table in `plan.flops`, or None (CPUs, unknown
    accelerators: no MFU rather than a wrong one)."""
    if device.type != "cuda":
        return None
    return peak_flops_of(torch.cuda.get_device_name(device))


class Throughput:
    """Tokens/s and MFU over the last logging interval (the first interval includes warmup and compilation)."""

    def __init__(self, flops_per_token: float, peak_flops: float | None, world_size: int):
        self.fpt, self.peak, self.world = flops_per_token, peak_flops, world_size
        self.t0, self.tokens = time.perf_counter(), 0

    def update(self, tokens: int) -> dict:
        """Tokens/s over the interval since the last call (`tokens` processed by all processes together),
        per device, and MFU when the device's peak is known; starts the next interval.
        """
        now = time.perf_counter()
        dt = max(now - self.t0, 1e-9)
        tps = tokens / dt  # all processes together
        out = {"tokens_per_s": tps, "tokens_per_s_per_device": tps / self.world}
        if self.peak:
            out["mfu"] = tps / self.world * self.fpt / self.peak
        self.t0 = now
        return out


def memory_stats(device: torch.device) -> dict:
    """Peak memory so far: allocated GPU memory, or the process's peak resident set on CPU."""
    if device.type == "cuda":
        return {"mem_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    try:
        import resource

        return {"mem_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # KiB on Linux
    except ImportError:  # Windows
        return {}


class MetricsWriter:
    """Rank 0 only: one JSON object per line in metrics.jsonl, TensorBoard scalars on request."""

    def __init__(self, out_dir: Path, tensorboard: bool, resume_step: int = 0):
        self.path = out_dir / "metrics.jsonl"
        self._truncate_after(resume_step)  # a resumed run rewrites the steps after its checkpoint
        self.file = open(self.path, "a")  # noqa: SIM115 (open for the writer's lifetime, closed by close())
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = [line for line in _intact_lines(self.path) if json.loads(line).get("step", 0) <= step]
        with atomic_file(self.path, "w") as f:  # a kill during the rewrite must not lose the run's history
            f.write("".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        """Append one record (a JSON line, flushed) and its numeric values as TensorBoard scalars at record["step"]."""
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        """Close metrics.jsonl and the TensorBoard writer."""
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl. A torn last line (the run was killed while writing it) is dropped; a broken
    line before the last is a UserError naming FILE:LINE."""
    return [json.loads(line) for line in _intact_lines(Path(path))]


def _intact_lines(path: Path) -> list[str]:
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    for i, line in enumerate(lines):
        try:
            json.loads(line)
        except ValueError:
            if i == len(lines) - 1:  # torn by a kill mid-write: the step it held is re-done after resume
                return lines[:-1]
            raise UserError(f"{path}:{i + 1}: not a JSON record; the metrics file is corrupt") from None
    return lines


def save_png(fig, png_path: Path) -> None:
    """Lay out the matplotlib figure `fig`, write it to `png_path` atomically (100 dpi; a kill leaves the old file
    or none, never half a PNG) and close it. The one PNG writer of the training, flow and sweep plots."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with atomic_file(Path(png_path), "wb") as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_loss(metrics_path: Path, png_path: Path, held_out: dict[str, float] | None = None) -> None:
    """Training loss per step (and validation loss where measured) from metrics.jsonl as a PNG, in nats/token.
    `held_out` ({source: validation loss of the final model}, the flow's report) adds one marker per source at the
    last step."""
    plt = pyplot()
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train:
        ax.plot(*zip(*train), label="training loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss" + (" (mixture)" if held_out else ""))
    last = train[-1][0] if train else 0
    for i, (name, loss) in enumerate((held_out or {}).items()):
        ax.plot([last], [loss], marker="_x+1234"[i % 8], ms=10, ls="", label=f"validation: {name}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, png_path)


def plot_eval(metrics_path: Path, png_path: Path) -> bool:
    """Benchmark scores during training (`eval/TASK/METRIC` records) against training tokens, one panel per task
    as in the paper's Figure 2 (accuracies in %). Writes nothing and returns False when no run logged any."""
    plt = pyplot()
    series: dict[str, dict[str, list]] = {}  # task -> metric -> [(tokens, value)]
    for r in read_metrics(metrics_path):
        for key, value in r.items():
            if key.startswith("eval/") and key.count("/") == 2 and isinstance(value, (int, float)):
                _, task, metric = key.split("/")
                series.setdefault(task, {}).setdefault(metric, []).append((r.get("tokens", r["step"]), value))
    if not series:
        return False
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3.5), squeeze=False)
    for ax, (task, metrics) in zip(axes[0], sorted(series.items())):
        for metric, points in sorted(metrics.items()):
            xs, ys = zip(*points)
            ax.plot(xs, [100 * y for y in ys], "o-", label=metric, ms=3)
        ax.set_title(task)
        ax.set_xlabel("training tokens")
        ax.set_ylabel("score (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_png(fig, png_path)
    return True


def bits_per_byte(loss_nats: float, bytes_per_token: float | None) -> float | None:
    """Tokenizer-independent loss: nats/token -> bits/token, divided by the bytes one token covers."""
    if not bytes_per_token:
        return None
    return loss_nats / math.log(2) / bytes_per_token
