"""Training metrics: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard event
files (tensorboardX) and PNG loss curves, all in the run directory."""

from __future__ import annotations

import json
from pathlib import Path

from tensorboardX import SummaryWriter


class MetricsLogger:
    """Appends to ``run_dir/metrics.jsonl`` and ``run_dir/tb``; on resume from ``start_step``,
    rows logged after that step (by the interrupted run) are dropped so none appear twice."""

    def __init__(self, run_dir: str | Path, start_step: int = 0):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        rows = [r for r in read_metrics(self.path) if r["step"] <= start_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        self._file = self.path.open("a")
        self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_step + 1)

    def log(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in values.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        for k, v in values.items():
            self.writer.add_scalar(f"train/{k}", float(v), step)

    def close(self) -> None:
        self._file.close()
        self.writer.close()
        plot_metrics(self.path, self.run_dir / "loss.png")
        if any("eval_final_return" in r for r in read_metrics(self.path)):
            keys = ("eval_first_return", "eval_final_return", "eval_mean_return")
            plot_metrics(self.path, self.run_dir / "eval_during_training.png", keys)


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a ``metrics.jsonl`` (a torn last line from a killed run is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def plot_metrics(path: str | Path, out: str | Path, keys: tuple[str, ...] = ("loss",)) -> None:
    """PNG of ``keys`` against step (log-scale y) from a ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(path)
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(5 * (len(keys) + 1), 3.5))
    for ax, key in zip(axes, (*keys, "lr"), strict=True):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o" if len(pts) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(key)
        if key == "loss" and pts and min(p[1] for p in pts) > 0:
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
