"""The one loss plot (`train.metrics.plot_loss`, also the flow report's, with each source's held-out loss) and the
one PNG writer (`train.metrics.save_png`: atomic, used by the training, flow and sweep plots)."""

from __future__ import annotations

import json

import pytest

from llamaforge.train import metrics


def _metrics(path):
    records = [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0, "val_loss": 4.5}, {"step": 3, "loss": 3.5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_loss_plot_draws_the_run_and_each_sources_held_out_loss(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(metrics, "save_png", lambda fig, path: figures.append((fig, path)))
    metrics.plot_loss(_metrics(tmp_path / "metrics.jsonl"), tmp_path / "loss.png",
                      held_out={"wikipedia": 3.25, "books": 3.75})
    ((fig, path),) = figures
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in fig.axes[0].lines}
    assert path == tmp_path / "loss.png"
    assert lines == {"training loss": ([1, 2, 3], [5.0, 4.0, 3.5]), "validation loss (mixture)": ([2], [4.5]),
                     "validation: wikipedia": ([3], [3.25]), "validation: books": ([3], [3.75])}


def test_png_writer_is_atomic(tmp_path, monkeypatch):
    """A write that fails half-way leaves the previous PNG as it was and no temporary beside it."""
    plt = metrics.pyplot()
    png = tmp_path / "loss.png"
    metrics.plot_loss(_metrics(tmp_path / "metrics.jsonl"), png)
    before = png.read_bytes()
    assert before.startswith(b"\x89PNG")

    def torn(self, f, **kwargs):
        f.write(b"\x89PNG half")
        raise OSError("disk full")

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    monkeypatch.setattr(type(fig), "savefig", torn)
    with pytest.raises(OSError, match="disk full"):
        metrics.save_png(fig, png)
    assert png.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "metrics.jsonl"]
    assert not plt.fignum_exists(fig.number)  # closed even when the write failed
