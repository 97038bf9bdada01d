"""Figures for ``docs/collection.md``: state coverage of exploration vs random data, relabelled
return distributions.

    python -m agents.collect.figures coverage RANDOM.hdf5 EXPLORE.hdf5 --out docs/img/x.png
    python -m agents.collect.figures returns --out docs/img/y.png \
        random=data/walker-random-{task}.hdf5 rnd=data/walker-rnd-{task}.hdf5 \
        --tasks walker-stand,walker-walk,walker-run

Reads the HDF5 files with h5py directly (observations / rewards / terminals / timeouts).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np


def _load(path: str | Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("observations", "rewards", "terminals", "timeouts")}


def episode_returns(d: dict[str, np.ndarray]) -> np.ndarray:
    """Undiscounted returns of the episodes (ending at terminals | timeouts; tail included)."""
    ends = np.flatnonzero(d["terminals"] | d["timeouts"]) + 1
    if len(ends) == 0 or ends[-1] != len(d["rewards"]):
        ends = np.append(ends, len(d["rewards"]))
    starts = np.concatenate([[0], ends[:-1]])
    return np.asarray([d["rewards"][s:e].sum() for s, e in zip(starts, ends, strict=True)])


def coverage_stats(pcs: dict[str, np.ndarray], bins: int = 40) -> dict[str, float]:
    """Fraction of a ``bins x bins`` grid over the joint 2-D PCA range that each dataset visits."""
    allp = np.concatenate(list(pcs.values()))
    lo, hi = allp.min(0), allp.max(0)
    out = {}
    for name, p in pcs.items():
        rng = [[lo[0], hi[0]], [lo[1], hi[1]]]
        h, _, _ = np.histogram2d(p[:, 0], p[:, 1], bins=bins, range=rng)
        out[name] = float((h > 0).mean())
    return out


def coverage(paths: dict[str, str], out: Path, title: str, seed: int = 0) -> dict:
    """PCA (fit on all datasets together, standardised) scatter + state-norm histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obs = {name: _load(p)["observations"].astype(np.float64) for name, p in paths.items()}
    allo = np.concatenate(list(obs.values()))
    mu, sd = allo.mean(0), allo.std(0) + 1e-8
    z = {n: (o - mu) / sd for n, o in obs.items()}
    _, _, vt = np.linalg.svd(np.concatenate(list(z.values())), full_matrices=False)
    pcs = {n: x @ vt[:2].T for n, x in z.items()}
    stats = {
        "grid_coverage_40x40": coverage_stats(pcs),
        "pc_std": {n: p.std(0).tolist() for n, p in pcs.items()},
        "obs_norm_mean": {n: float(np.linalg.norm(o, axis=1).mean()) for n, o in obs.items()},
        "steps": {n: int(len(o)) for n, o in obs.items()},
    }
    rng = np.random.default_rng(seed)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4), dpi=110)
    for (n, p), c in zip(pcs.items(), ["tab:gray", "tab:orange", "tab:blue"], strict=False):
        idx = rng.choice(len(p), size=min(len(p), 20_000), replace=False)
        cov = stats["grid_coverage_40x40"][n]
        ax1.scatter(p[idx, 0], p[idx, 1], s=1, alpha=0.25, c=c, label=f"{n} (grid {cov:.0%})")
        ax2.hist(np.linalg.norm(obs[n], axis=1), bins=80, alpha=0.5, color=c, label=n, density=True)
    ax1.set_xlabel("PC 1")
    ax1.set_ylabel("PC 2")
    ax1.legend(markerscale=8, fontsize=8)
    ax1.set_title("observations, PCA of both datasets", fontsize=9)
    ax2.set_xlabel("‖observation‖₂")
    ax2.set_ylabel("density")
    ax2.legend(fontsize=8)
    ax2.set_title("state-norm histogram", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return stats


def returns(patterns: dict[str, str], tasks: list[str], out: Path, title: str) -> dict:
    """One panel per task: episode-return histograms of each dataset (``{task}`` in pattern)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), dpi=110)
    stats: dict[str, dict] = {}
    for ax, task in zip(np.atleast_1d(axes), tasks, strict=True):
        for (name, pat), c in zip(patterns.items(), ["tab:gray", "tab:orange"], strict=False):
            r = episode_returns(_load(pat.format(task=task)))
            stats.setdefault(task, {})[name] = {
                "episodes": int(len(r)),
                "mean": float(r.mean()),
                "max": float(r.max()),
            }
            ax.hist(r, bins=30, range=(0, 1000), alpha=0.6, color=c, label=f"{name} (n={len(r)})")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("relabelled episode return")
        ax.legend(fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("episodes")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agents.collect.figures")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("coverage")
    c.add_argument("datasets", nargs="+", help="NAME=PATH")
    c.add_argument("--out", required=True)
    c.add_argument("--title", default="state coverage")
    r = sub.add_parser("returns")
    r.add_argument("datasets", nargs="+", help="NAME=PATTERN with {task}")
    r.add_argument("--tasks", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--title", default="relabelled returns")
    a = p.parse_args(argv)
    named = dict(d.split("=", 1) for d in a.datasets)
    if a.cmd == "coverage":
        stats = coverage(named, Path(a.out), a.title)
    else:
        stats = returns(named, a.tasks.split(","), Path(a.out), a.title)
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
