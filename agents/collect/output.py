"""Writing a collection's results: the D4RL file, its summary JSON and its PNG plots.

For an output path ``out`` (e.g. ``data/cartpole-random.hdf5``):

- ``out``                   D4RL-layout HDF5 (atomic: written to a temporary file, then renamed),
                            dm_control tasks also carry ``infos/physics``;
- ``out.summary.json``      episodes, steps, return distribution, behaviour metadata;
- ``out.returns.png``       histogram of episode returns;
- ``out.curve.json/.png``   SAC / exploration learning curve (eval return vs env steps).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def sibling(out: str | Path, suffix: str) -> Path:
    """``data/x.hdf5`` + ``.returns.png`` -> ``data/x.hdf5.returns.png``."""
    out = Path(out)
    return out.with_name(out.name + suffix)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def to_dataset(episodes: Sequence[dict], metadata: dict | None = None) -> Any:
    """Episode dicts (from :class:`~agents.collect.common.EpisodeRecorder`) -> EpisodeDataset."""
    from ringrl.data import Episode, EpisodeDataset

    return EpisodeDataset.from_episodes([Episode(**e) for e in episodes], metadata=metadata)


def summarize(episodes: Sequence[dict]) -> dict:
    """Counts and the return distribution (complete and all episodes)."""
    returns = np.asarray([float(np.sum(e["rewards"])) for e in episodes])
    lengths = np.asarray([len(e["rewards"]) for e in episodes])
    complete = np.asarray([bool(e["terminals"][-1] or e["timeouts"][-1]) for e in episodes])

    def stats(x: np.ndarray) -> dict:
        if len(x) == 0:
            return {}
        q = np.percentile(x, [0, 25, 50, 75, 100])
        return {
            "mean": float(x.mean()),
            "std": float(x.std()),
            "min": float(q[0]),
            "p25": float(q[1]),
            "median": float(q[2]),
            "p75": float(q[3]),
            "max": float(q[4]),
        }

    return {
        "episodes": int(len(episodes)),
        "steps": int(lengths.sum()),
        "terminals": int(sum(int(e["terminals"].sum()) for e in episodes)),
        "timeouts": int(sum(int(e["timeouts"].sum()) for e in episodes)),
        "episode_length": stats(lengths.astype(float)),
        "returns": stats(returns),
        "returns_all": returns.tolist(),
        "complete_episodes": int(complete.sum()),
    }


def plot_returns(returns: Sequence[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.hist(np.asarray(returns), bins=min(50, max(5, len(returns) // 2)), color="tab:blue")
    ax.set_xlabel("episode return")
    ax.set_ylabel("episodes")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def plot_curve(curve: Sequence[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.asarray([r["step"] for r in curve])
    mean = np.asarray([r["eval_return"] for r in curve])
    std = np.asarray([r.get("eval_std", 0.0) for r in curve])
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot(steps, mean, marker="o", ms=3)
    ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def write_curve(
    curve: Sequence[dict], out: str | Path, title: str, extra: dict | None = None
) -> None:
    """``out.curve.json`` and ``out.curve.png``."""
    _atomic_write_text(
        sibling(out, ".curve.json"), json.dumps({"curve": list(curve), **(extra or {})}, indent=1)
    )
    if curve:
        plot_curve(curve, sibling(out, ".curve.png"), title)


def write_collection(episodes: Sequence[dict], out: str | Path, metadata: dict, title: str) -> dict:
    """Write the dataset (atomically), its summary JSON and returns histogram; return summary."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = summarize(episodes)
    ds = to_dataset(episodes, metadata={k: _h5able(v) for k, v in metadata.items()})
    ds.save_d4rl(out)
    _atomic_write_text(
        sibling(out, ".summary.json"),
        json.dumps({"path": str(out), **metadata, **summary}, indent=1, default=str),
    )
    plot_returns(summary["returns_all"], sibling(out, ".returns.png"), title)
    return summary


def _h5able(v: Any) -> Any:
    """Metadata values HDF5 attributes/datasets can hold (str, number, bool)."""
    if isinstance(v, (str, int, float, bool, np.number)):
        return v
    return json.dumps(v, default=str)
