"""Writing a collection's results: the D4RL file, its summary JSON and its PNG plots.

For an output path ``out`` (e.g. ``data/cartpole-random.hdf5``):

- ``out``                   D4RL-layout HDF5 (atomic: written to a temporary file, then renamed),
                            dm_control tasks also carry ``infos/physics``;
- ``out.summary.json``      episodes, steps, return distribution and 10-bin histogram, warm-up
                            episodes, behaviour metadata;
- ``out.returns.png``       histogram of episode returns;

The return histogram and the warm-up counts are also stored in the HDF5 file's ``metadata/``
(``return_histogram`` as JSON text ``{"edges": [...], "counts": [...]}``).
- ``out.curve.json/.png``   SAC / exploration learning curve (eval return vs env steps).

Every file is first written under a hidden temporary name in the same directory that carries
the writer's pid, ``.<name>.<pid>.tmp`` (``.<name>.<pid>.tmp.png`` for plots; a directory of
that name for the HDF5 file), then renamed. A run that is killed leaves that temporary behind;
:func:`remove_stale_temp_files` (called by the next ``ringrl collect`` for the same output)
removes those whose process is gone. All files get one permission policy: ``0o666`` less the
umask (``0o644`` with the usual umask 022), the HDF5 file included.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def sibling(out: str | Path, suffix: str) -> Path:
    """``data/x.hdf5`` + ``.returns.png`` -> ``data/x.hdf5.returns.png``."""
    out = Path(out)
    return out.with_name(out.name + suffix)


SIBLING_SUFFIXES = (".summary.json", ".returns.png", ".curve.json", ".curve.png")
"""The files written beside a collection's dataset ``out``: ``out`` + suffix."""


def temp_path(path: str | Path, suffix: str = "") -> Path:
    """The hidden temporary name of ``path`` for this process: ``.<name>.<pid>.tmp<suffix>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def remove_stale_temp_files(out: str | Path) -> list[Path]:
    """Remove the temporary files (see :func:`temp_path`) of ``out`` and of its siblings
    (:data:`SIBLING_SUFFIXES`) whose writing process is no longer running; returns them.

    A killed ``ringrl collect`` leaves its temporaries behind; those of a live process (another
    collection writing the same output right now) are kept.
    """
    out = Path(out)
    removed = []
    for target in (out, *(sibling(out, s) for s in SIBLING_SUFFIXES)):
        pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.tmp(\.png)?")
        if not target.parent.is_dir():
            continue
        for path in target.parent.iterdir():
            match = pattern.fullmatch(path.name)
            if match is None or _process_alive(int(match[1])):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def file_mode() -> int:
    """The mode of every file a collection writes: ``0o666`` less the process's umask."""
    umask = None
    try:
        with open("/proc/self/status") as f:
            umask = next((int(line.split()[1], 8) for line in f if line.startswith("Umask:")), None)
    except OSError:
        pass
    if umask is None:
        umask = os.umask(0)
        os.umask(umask)
    return 0o666 & ~umask


def _publish(tmp: Path, path: Path) -> None:
    """Give the finished temporary ``tmp`` the file mode, then rename it to ``path``."""
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = temp_path(path)
    try:
        tmp.write_text(text)
        _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_figure(fig: Any, path: Path) -> None:
    tmp = temp_path(path, ".png")
    try:
        fig.savefig(tmp)
        _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_dataset(ds: Any, out: Path) -> None:
    """``ds.save_d4rl`` into a pid-named temporary directory beside ``out``, then renamed: a
    killed run's leftovers carry its pid (save_d4rl's own temporary name does not)."""
    tmp_dir = temp_path(out)
    shutil.rmtree(tmp_dir, ignore_errors=True)  # a dead process's, whose pid this one reuses
    tmp_dir.mkdir()
    try:
        tmp = tmp_dir / out.name
        ds.save_d4rl(tmp)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def to_dataset(episodes: Sequence[dict], metadata: dict | None = None) -> Any:
    """Episode dicts (from :class:`~agents.collect.common.EpisodeRecorder`) -> EpisodeDataset."""
    from ringrl.data import Episode, EpisodeDataset

    return EpisodeDataset.from_episodes([Episode(**e) for e in episodes], metadata=metadata)


HISTOGRAM_BINS = 10


def episode_returns(episodes: Sequence[dict]) -> np.ndarray:
    """The undiscounted return of every episode."""
    return np.asarray([float(np.sum(e["rewards"])) for e in episodes], dtype=np.float64)


def is_complete(episodes: Sequence[dict]) -> np.ndarray:
    """Per episode: does its last step end it (terminal or timeout)?"""
    return np.asarray([bool(e["terminals"][-1] or e["timeouts"][-1]) for e in episodes], bool)


def return_histogram(episodes: Sequence[dict], bins: int = HISTOGRAM_BINS) -> dict:
    """``{"edges": [bins + 1 floats], "counts": [bins ints]}``: equal-width bins over
    [min, max] of the complete episodes' returns (the last bin includes max). All returns equal:
    numpy's bins over [r - 0.5, r + 0.5]. No complete episode: empty lists."""
    returns = episode_returns(episodes)[is_complete(episodes)]
    if returns.size == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(returns, bins=bins)
    return {"edges": edges.tolist(), "counts": counts.astype(int).tolist()}


def format_histogram(hist: dict, width: int = 40) -> str:
    """One line per bin: ``[lo, hi)  count  ####`` (bars scaled to ``width`` at the largest)."""
    edges, counts = hist["edges"], hist["counts"]
    if not counts:
        return "returns histogram: no complete episodes"
    step = (edges[-1] - edges[0]) / len(counts)
    decimals = int(np.clip(np.ceil(-np.log10(step)) + 1, 1, 6)) if step > 0 else 1
    labels = [f"{e:.{decimals}f}" for e in edges]
    pad = max(len(s) for s in labels)
    top = max(max(counts), 1)
    lines = ["returns histogram (complete episodes):"]
    for i, n in enumerate(counts):
        close = "]" if i == len(counts) - 1 else ")"
        bar = "#" * int(np.ceil(width * n / top))
        lines.append(f"  [{labels[i]:>{pad}}, {labels[i + 1]:>{pad}}{close} {n:6d} {bar}".rstrip())
    return "\n".join(lines)


def warmup_episodes(episodes: Sequence[dict], warmup_steps: int) -> int:
    """How many episodes lie wholly within the first ``warmup_steps`` steps of the run (the
    uniform-random warm-up before ``learning_starts``); ``episodes`` in collection order."""
    ends = np.cumsum([len(e["rewards"]) for e in episodes])
    return int(np.sum(ends <= warmup_steps))


def summarize(episodes: Sequence[dict], warmup_steps: int = 0) -> dict:
    """Counts, the return distribution (complete and all episodes), the return histogram and
    the warm-up episodes (see :func:`warmup_episodes`)."""
    returns = episode_returns(episodes)
    lengths = np.asarray([len(e["rewards"]) for e in episodes])
    complete = is_complete(episodes)

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
        "return_histogram": return_histogram(episodes),
        "warmup_steps": int(warmup_steps),
        "warmup_episodes": warmup_episodes(episodes, warmup_steps),
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
    try:
        _save_figure(fig, path)
    finally:
        plt.close(fig)


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
    try:
        _save_figure(fig, path)
    finally:
        plt.close(fig)


def write_curve(
    curve: Sequence[dict], out: str | Path, title: str, extra: dict | None = None
) -> None:
    """``out.curve.json`` and ``out.curve.png``."""
    _atomic_write_text(
        sibling(out, ".curve.json"), json.dumps({"curve": list(curve), **(extra or {})}, indent=1)
    )
    if curve:
        plot_curve(curve, sibling(out, ".curve.png"), title)


DATASET_SUMMARY_KEYS = ("return_histogram", "warmup_steps", "warmup_episodes")
"""Summary entries also stored in the HDF5 file's ``metadata/``."""


def write_collection(
    episodes: Sequence[dict],
    out: str | Path,
    metadata: dict,
    title: str,
    warmup_steps: int = 0,
) -> dict:
    """Write the dataset (atomically), its summary JSON and returns histogram; return summary.

    ``warmup_steps``: the run's first steps that were uniform-random warm-up (SAC / explore
    ``learning_starts``; 0 for other behaviours), counted into ``warmup_episodes``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = summarize(episodes, warmup_steps)
    h5_meta = {**metadata, **{k: summary[k] for k in DATASET_SUMMARY_KEYS}}
    ds = to_dataset(episodes, metadata={k: _h5able(v) for k, v in h5_meta.items()})
    _save_dataset(ds, out)
    _atomic_write_text(
        sibling(out, ".summary.json"),
        json.dumps({"path": str(out), **metadata, **summary}, indent=1, default=str),
    )
    plot_returns(summary["returns_all"], sibling(out, ".returns.png"), title)
    return summary


def _h5able(v: Any) -> Any:
    """Metadata values HDF5 attributes/datasets can hold (str, number, bool; a flat list of
    numbers, such as a task family's ``train_task_ids``, as a numeric array)."""
    if isinstance(v, (str, int, float, bool, np.number)):
        return v
    if isinstance(v, (list, tuple)) and all(
        isinstance(x, (int, float, np.number)) and not isinstance(x, bool) for x in v
    ):
        return np.asarray(v)
    return json.dumps(v, default=str)
