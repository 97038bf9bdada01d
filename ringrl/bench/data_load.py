"""Load benchmark for ``ringrl.data``: a synthetic D4RL file of ``--steps`` steps.

Writes a D4RL-layout HDF5 file (observations float32 ``[N, obs_dim]``, actions float32
``[N, act_dim]``, rewards float32, terminals/timeouts bool, episodes of ``--episode-len`` steps) in
a temporary directory, then loads it with ``ringrl.data.load_dataset`` in a fresh Python process
so that the memory figures are clean, and prints a table:

- load time (wall clock, ``load_dataset`` only, file in the page cache as just written);
- peak RSS increase: ``ru_maxrss`` after the load minus the resident size just before it;
- tracemalloc peak: the largest amount of memory allocated at once during a second load.

Usage: ``python -m ringrl.bench.data_load --steps 1000000``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

CHILD = r"""
import gc, json, resource, sys, time, tracemalloc
import numpy as np
from ringrl.data import load_dataset

def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024

path = sys.argv[1]
gc.collect()
before = rss_kib()
t0 = time.perf_counter()
ds = load_dataset(path)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {"seconds": seconds, "rss_increase_kib": peak - before, "episodes": ds.num_episodes,
       "steps": ds.num_steps, "obs_dim": ds.obs_dim, "act_dim": ds.act_dim}
del ds
gc.collect()
tracemalloc.start()
ds = load_dataset(path)
out["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
print(json.dumps(out))
"""


def make_file(path: Path, steps: int, obs_dim: int, act_dim: int, episode_len: int) -> int:
    """Write the synthetic D4RL file; returns its arrays' total size in bytes."""
    rng = np.random.default_rng(0)
    timeouts = np.zeros(steps, dtype=bool)
    timeouts[episode_len - 1 :: episode_len] = True
    arrays = {
        "observations": rng.standard_normal((steps, obs_dim), dtype=np.float32),
        "actions": rng.uniform(-1, 1, (steps, act_dim)).astype(np.float32),
        "rewards": rng.standard_normal(steps, dtype=np.float32),
        "terminals": np.zeros(steps, dtype=bool),
        "timeouts": timeouts,
    }
    with h5py.File(path, "w") as f:
        for key, arr in arrays.items():
            f.create_dataset(key, data=arr)
    return sum(a.nbytes for a in arrays.values())


def measure(path: Path) -> dict:
    """Load ``path`` in a fresh interpreter; returns the child's measurements."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[tuple[str, str]]) -> str:
    """Two-column plain-text table."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--episode-len", type=int, default=1000)
    args = parser.parse_args(argv)
    mib = 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="ringrl-data-bench-") as tmp:
        path = Path(tmp) / "bench.hdf5"
        nbytes = make_file(path, args.steps, args.obs_dim, args.act_dim, args.episode_len)
        file_bytes = path.stat().st_size
        m = measure(path)
    rss = m["rss_increase_kib"] * 1024
    rows = [
        (
            "dataset",
            f"{m['steps']} steps, {m['episodes']} episodes, obs {m['obs_dim']}, act {m['act_dim']}",
        ),
        ("file size", f"{file_bytes / mib:.1f} MiB"),
        ("arrays' size", f"{nbytes / mib:.1f} MiB"),
        ("load time", f"{m['seconds']:.2f} s"),
        ("peak RSS increase", f"{rss / mib:.1f} MiB ({rss / nbytes:.2f}x arrays)"),
        (
            "tracemalloc peak",
            f"{m['tracemalloc_peak_bytes'] / mib:.1f} MiB "
            f"({m['tracemalloc_peak_bytes'] / nbytes:.2f}x arrays)",
        ),
    ]
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
