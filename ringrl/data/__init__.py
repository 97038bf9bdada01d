"""Offline-RL datasets: D4RL HDF5 files, ExoRL episode directories and Minari datasets.

Public API::

    from ringrl.data import load_dataset, EpisodeDataset, Episode, DatasetError

    ds = load_dataset(path, format="auto", task=None)   # "d4rl" | "exorl" | "minari" | "auto"
    ds.episodes, ds.num_episodes, ds.num_steps, ds.obs_dim, ds.act_dim, ds.returns
    ds.discrete, ds.num_actions  # integer actions [T]: act_dim is the number of actions
    ds.task_ids, ds.history_ids  # per-episode ids (infos/task_id, infos/history_id) or None
    ds.histories()               # episode indices of each learning history, in dataset order
    ds.save_d4rl(path)          # atomic write in D4RL layout
    ds.filter_top(0.1)          # top 10% episodes by return
    ds.summary()                # counts and return statistics

See ``docs/data.md`` for the layouts and their step alignment.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from ringrl.data.d4rl import load_d4rl, save_d4rl
from ringrl.data.episode import DatasetError, Episode, EpisodeDataset
from ringrl.data.exorl import load_exorl
from ringrl.data.minari_io import data_dir, id_data_dir, load_minari

__all__ = [
    "DatasetError",
    "Episode",
    "EpisodeDataset",
    "detect_format",
    "load_d4rl",
    "load_dataset",
    "load_exorl",
    "load_minari",
    "load_training_data",
    "save_d4rl",
]

FORMATS = ("auto", "d4rl", "exorl", "minari")
HDF5_SUFFIXES = (".hdf5", ".h5", ".he5")


def detect_format(path: str | os.PathLike) -> str:
    """``"d4rl"``, ``"exorl"`` or ``"minari"`` for ``path``; DatasetError if none fits.

    An ``.hdf5``/``.h5`` file (or any HDF5 file) is D4RL; a directory that is a Minari dataset
    (``data/metadata.json``) is Minari; a directory with ``*.npz`` files anywhere below is ExoRL;
    a path that does not exist but names a local Minari dataset id is Minari.
    """
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() in HDF5_SUFFIXES or h5py.is_hdf5(p):
            return "d4rl"
        raise DatasetError(
            f"{p}: cannot infer the dataset format (expected a .hdf5/.h5 D4RL file, an ExoRL "
            f"directory of *.npz episodes or a Minari dataset)"
        )
    if p.is_dir():
        if data_dir(p) is not None:
            return "minari"
        if next(p.rglob("*.npz"), None) is not None:
            return "exorl"
        raise DatasetError(
            f"{p}: cannot infer the dataset format: the directory has no '*.npz' episodes "
            f"(ExoRL) and no 'data/metadata.json' (Minari)"
        )
    if p.suffix.lower() not in HDF5_SUFFIXES and id_data_dir(str(path)) is not None:
        return "minari"
    raise DatasetError(f"{p}: file not found (and not a local Minari dataset id)")


def load_dataset(
    path: str | os.PathLike, format: str = "auto", task: str | None = None
) -> EpisodeDataset:
    """Load an offline dataset as an :class:`EpisodeDataset`.

    Args:
        path: a D4RL HDF5 file, an ExoRL directory of ``*.npz`` episodes, a Minari dataset
            directory, or a Minari dataset id under ``MINARI_DATASETS_PATH``.
        format: ``"d4rl"``, ``"exorl"``, ``"minari"`` or ``"auto"`` (see :func:`detect_format`).
        task: relabel rewards for this task from the stored physics states with
            ``envs.relabel_rewards`` (ExoRL, or D4RL files with ``infos/physics``).

    Raises:
        DatasetError: malformed, missing or empty dataset, or an unknown task; the message names
            the file, the key and what was expected.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if format == "auto":
        format = detect_format(path)
    if format == "d4rl":
        return load_d4rl(path, task=task)
    if format == "exorl":
        return load_exorl(path, task=task)
    if task is not None:
        raise DatasetError(
            f"{path}: Minari datasets carry no physics states to relabel for task {task!r}"
        )
    return load_minari(path)


def load_training_data(
    path: str | os.PathLike,
    format: str = "auto",
    task: str | None = None,
    top_fraction: float = 1.0,
) -> EpisodeDataset:
    """A training config's dataset (its ``data`` section): :func:`load_dataset`, then, for
    filtered BC, only the top ``top_fraction`` of the episodes by return."""
    ds = load_dataset(path, format=format, task=task)
    return ds.filter_top(top_fraction) if top_fraction < 1.0 else ds
