"""ExoRL layout: a directory of ``np.savez_compressed`` episodes.

Each file ``<prefix>_<episode index>_<episode length>.npz`` (anywhere under the directory, e.g.
``datasets/walker/rnd/buffer/``) holds ``observation [L+1, obs_dim]``, ``action [L+1, act_dim]``,
``reward [L+1, 1]``, ``discount [L+1, 1]`` and ``physics [L+1, n]``. Entry 0 is the reset (its
action and reward are dummies); ExoRL's replay sampler forms transition ``i`` (1..L) from
``observation[i-1], action[i], reward[i], discount[i], observation[i]``. So an :class:`Episode`
of ``T = L`` steps gets ``observations = observation[:-1]``, ``next_observations =
observation[1:]``, ``actions = action[1:]``, ``rewards = reward[1:]`` and ``physics =
physics[1:]`` (the state after step i, from which reward[i] is computed).

ExoRL episodes end by the time limit: ``timeouts[-1] = True`` and ``terminals`` all False,
except that ``discount[i] == 0`` is honoured as a terminal step. Episodes are ordered by the
index in their file names. ``physics`` is needed only for relabelling (``task=...``).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from ringrl.data._validate import (
    check_finite,
    check_ndim,
    check_numeric,
    fail,
    relabel_episode,
)
from ringrl.data.episode import DatasetError, Episode, EpisodeDataset

KEYS = {"observation": 2, "action": 2, "reward": 1, "discount": 1, "physics": 2}
REQUIRED = ("observation", "action", "reward", "discount")


def episode_files(root: Path) -> list[tuple[int, int, Path]]:
    """``(index, length, path)`` of every ``*.npz`` under ``root``, sorted by index."""
    found = []
    for path in root.rglob("*.npz"):
        parts = path.stem.split("_")
        try:
            index, length = int(parts[-2]), int(parts[-1])
        except (IndexError, ValueError):
            raise DatasetError(
                f"{path}: file name does not match ExoRL's '<prefix>_<index>_<length>.npz'"
            ) from None
        found.append((index, length, path))
    return sorted(found, key=lambda t: (t[0], str(t[2])))


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of one episode file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DatasetError(f"{path}: not a readable .npz file (truncated or corrupt?): {e}") from e


def _check_arrays(raw: dict[str, np.ndarray], length: int, path: Path) -> dict[str, np.ndarray]:
    """Keys present, numeric, right ndim, ``length + 1`` entries, finite."""
    out = {}
    for key, ndim in KEYS.items():
        if key not in raw:
            if key in REQUIRED:
                raise fail(path, key, f"missing (file has {sorted(raw)})")
            continue
        arr = raw[key]
        check_numeric(arr, path, key)
        arr = check_ndim(arr, ndim, path, key)
        if len(arr) != length + 1:
            raise fail(
                path,
                key,
                f"expected {length + 1} entries (episode length {length} from the file name, "
                f"plus the reset entry), got {len(arr)}",
            )
        check_finite(arr, path, key)
        out[key] = arr
    if length < 1:
        raise fail(path, "observation", "expected an episode of at least one step")
    return out


def load_episode(path: Path, length: int, task: str | None = None) -> Episode:
    """One ExoRL episode file as an :class:`Episode` (rewards relabelled when ``task``)."""
    a = _check_arrays(_load_npz(path), length, path)
    terminals = a["discount"][1:] == 0
    timeouts = np.zeros(length, dtype=bool)
    timeouts[-1] = not terminals[-1]
    physics = a.get("physics")
    ep = Episode(
        observations=a["observation"][:-1],
        actions=a["action"][1:],
        rewards=a["reward"][1:],
        terminals=terminals,
        timeouts=timeouts,
        next_observations=a["observation"][1:],
        physics=None if physics is None else physics[1:],
    )
    if task is not None:
        ep = relabel_episode(ep, task, path, "physics")
    return ep


def load_exorl(path: str | os.PathLike, task: str | None = None) -> EpisodeDataset:
    """Read an ExoRL episode directory into an :class:`EpisodeDataset`.

    With ``task`` the rewards are recomputed from each step's physics state with
    ``envs.relabel_rewards(task, physics)``; an unknown task raises :class:`DatasetError`
    naming the file and the task.
    """
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"{root}: directory not found (expected ExoRL *.npz episodes)")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory (expected ExoRL *.npz episodes)")
    files = episode_files(root)
    if not files:
        raise DatasetError(f"{root}: no '*.npz' episode files found (empty dataset)")
    episodes = [load_episode(p, length, task) for _, length, p in files]
    metadata = {"format": "exorl", "source": str(root), "episode_files": len(files)}
    if task is not None:
        metadata["task"] = task
        metadata["relabelled_task"] = task
    return EpisodeDataset(episodes, metadata=metadata)
