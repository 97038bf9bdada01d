"""D4RL layout: one HDF5 file of step-aligned arrays.

Required keys: ``observations [N, obs_dim]``, ``actions [N, act_dim]``, ``rewards [N]``,
``terminals [N]``, ``timeouts [N]``. Optional: ``next_observations [N, obs_dim]``, ``infos/*``
(``infos/physics`` or ``infos/qpos`` + ``infos/qvel`` become ``Episode.physics``;
``infos/task_id`` and ``infos/history_id`` become ``Episode.task_id`` / ``history_id``; the rest
is ignored) and ``metadata/*`` (scalars, read into ``EpisodeDataset.metadata``).

**Discrete actions**: an integer ``actions`` array (``[N]``, or ``[N, 1]``) holds discrete actions,
read as int64 ``[T]`` per episode; the file must then give the number of actions as the integer
scalar dataset ``metadata/num_actions`` (``save_d4rl`` writes it; an attribute ``num_actions`` on
the ``metadata`` group or the file root is read the same way), else :class:`DatasetError` names
the file and ``metadata/num_actions``. Every action must lie in ``[0, num_actions)``.

**Multi-task data**: ``infos/task_id`` and ``infos/history_id`` are integer ``[N]`` arrays,
constant within each episode (else :class:`DatasetError` names the file, the key and the
episode); each episode takes its value. ``metadata/train_task_ids`` / ``metadata/test_task_ids``
(a task family's split, written by the collectors) are read in full, whatever their size.

An episode ends at a step whose ``terminals`` or ``timeouts`` is true; the steps after the last
end form a final episode whose ``truncated`` property is True (its last ``timeouts`` stays False,
as stored, so that a save/load round trip is exact).

Reading is vectorised: each array is read once, validated with numpy, and cut into episodes with
``np.split`` (views of the one array, no copies).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ringrl.data._validate import (
    check_finite,
    check_lengths,
    check_ndim,
    check_numeric,
    fail,
    relabel_episode,
)
from ringrl.data.episode import DatasetError, Episode, EpisodeDataset

REQUIRED = ("observations", "actions", "rewards", "terminals", "timeouts")
NDIM = {"observations": 2, "actions": 2, "rewards": 1, "terminals": 1, "timeouts": 1}
FLOAT_KEYS = ("observations", "actions", "rewards", "next_observations")
#: Per-step integer keys that hold one value per episode -> the Episode field they fill.
ID_KEYS = {"infos/task_id": "task_id", "infos/history_id": "history_id"}
#: Metadata arrays read whatever their size (other metadata datasets only up to 4096 entries).
FULL_METADATA_KEYS = ("train_task_ids", "test_task_ids")


def _read(f: h5py.File, key: str, where: Path) -> np.ndarray:
    """The whole dataset ``key`` as a numpy array."""
    if key not in f:
        raise fail(where, key, "missing (expected an HDF5 dataset)")
    node = f[key]
    if not isinstance(node, h5py.Dataset):
        raise fail(where, key, f"expected an HDF5 dataset, got a {type(node).__name__}")
    try:
        arr = node[()]
    except (OSError, RuntimeError) as e:
        raise fail(where, key, f"unreadable data (truncated or corrupt file?): {e}") from e
    if not isinstance(arr, np.ndarray):
        raise fail(where, key, f"expected an array, got a scalar {arr!r}")
    check_numeric(arr, where, key)
    return arr


def _prepare(arr: np.ndarray, key: str, where: Path) -> np.ndarray:
    """Shape check, finiteness check and conversion to the D4RL dtype (no copy if already)."""
    if key == "actions" and np.issubdtype(arr.dtype, np.integer):
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise fail(
                where,
                key,
                f"integer (discrete) actions must be one per step, shape [N]; got shape "
                f"{arr.shape} (continuous actions must be floats)",
            )
        return arr.astype(np.int64, copy=False)
    arr = check_ndim(arr, NDIM.get(key, 2), where, key)
    check_finite(arr, where, key)
    if key in FLOAT_KEYS:
        return arr.astype(np.float32, copy=False)
    if key in ("terminals", "timeouts"):
        return arr if arr.dtype == np.bool_ else arr != 0
    return arr.astype(np.float64, copy=False)


def _read_physics(f: h5py.File, where: Path) -> tuple[str, np.ndarray] | None:
    """``infos/physics``, else ``infos/qpos`` + ``infos/qvel`` concatenated, else None."""
    if "infos/physics" in f:
        return "infos/physics", _read(f, "infos/physics", where)
    if "infos/qpos" in f and "infos/qvel" in f:
        qpos, qvel = _read(f, "infos/qpos", where), _read(f, "infos/qvel", where)
        qpos = check_ndim(qpos, 2, where, "infos/qpos")
        qvel = check_ndim(qvel, 2, where, "infos/qvel")
        check_lengths({"infos/qpos": qpos, "infos/qvel": qvel}, where)
        return "infos/qpos+infos/qvel", np.concatenate([qpos, qvel], axis=1)
    return None


def _scalar(value: Any) -> Any:
    """An HDF5 scalar or small array as a Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_metadata(f: h5py.File) -> dict[str, Any]:
    """``metadata/*`` datasets (nested keys joined with '/') and the file's root attributes."""
    meta: dict[str, Any] = {k: _scalar(v) for k, v in f.attrs.items()}
    group = f.get("metadata")
    if isinstance(group, h5py.Group):
        meta.update({k: _scalar(v) for k, v in group.attrs.items()})

        def visit(name: str, node: Any) -> None:
            if isinstance(node, h5py.Dataset) and name in FULL_METADATA_KEYS:
                meta[name] = np.asarray(node[()]).tolist()
            elif isinstance(node, h5py.Dataset) and node.size <= 4096:
                meta[name] = _scalar(node[()])

        group.visititems(visit)
    return meta


def _read_ids(f: h5py.File, where: Path) -> dict[str, np.ndarray]:
    """``infos/task_id`` / ``infos/history_id`` present in ``f``, as int64 ``[N]``."""
    ids = {}
    for key in ID_KEYS:
        if key not in f:
            continue
        arr = check_ndim(_read(f, key, where), 1, where, key)
        if not np.issubdtype(arr.dtype, np.integer):
            raise fail(where, key, f"expected integer ids, got dtype {arr.dtype}")
        ids[key] = arr.astype(np.int64, copy=False)
    return ids


def _num_actions(metadata: dict[str, Any], where: Path) -> int:
    """``metadata/num_actions`` of a file with integer actions, validated."""
    key = "metadata/num_actions"
    n = metadata.get("num_actions")
    if n is None:
        raise fail(
            where,
            key,
            "missing: 'actions' holds integers (discrete actions), so the file must give the "
            "number of actions as the integer dataset metadata/num_actions",
        )
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise fail(where, key, f"expected an integer >= 1 (the number of actions), got {n!r}")
    return int(n)


def _check_constant(arr: np.ndarray, bounds: np.ndarray, key: str, where: Path) -> np.ndarray:
    """One value per episode of the per-step ``arr`` (constant within each episode)."""
    starts = np.concatenate([[0], bounds]).astype(np.int64)
    lengths = np.diff(np.concatenate([starts, [len(arr)]]))
    first = arr[starts]
    bad = np.flatnonzero(arr != np.repeat(first, lengths))
    if bad.size:
        step = int(bad[0])
        e = int(np.searchsorted(starts, step, side="right") - 1)
        raise fail(
            where,
            key,
            f"expected one value per episode, but episode {e} (steps {starts[e]}.."
            f"{starts[e] + lengths[e] - 1}) has {first[e]} at step {starts[e]} and {arr[step]} "
            f"at step {step}",
        )
    return first


def _episode_bounds(terminals: np.ndarray, timeouts: np.ndarray) -> np.ndarray:
    """Indices where new episodes start (the ``np.split`` points)."""
    ends = np.flatnonzero(terminals | timeouts) + 1
    return ends[:-1] if len(ends) and ends[-1] == len(terminals) else ends


def _open(where: Path) -> h5py.File:
    if not where.exists():
        raise DatasetError(f"{where}: file not found (expected a D4RL HDF5 file)")
    if where.is_dir():
        raise DatasetError(f"{where}: is a directory (expected a D4RL HDF5 file)")
    try:
        return h5py.File(where, "r")
    except OSError as e:
        raise DatasetError(
            f"{where}: not a readable HDF5 file (truncated, corrupt or another format): {e}"
        ) from e


def load_d4rl(path: str | os.PathLike, task: str | None = None) -> EpisodeDataset:
    """Read a D4RL-layout HDF5 file into an :class:`EpisodeDataset`.

    With ``task``, rewards are recomputed from the physics states (``infos/physics``) with
    ``envs.relabel_rewards``. Raises :class:`DatasetError` for a missing or unreadable file,
    a missing key, wrong ndim or dtype, arrays of different lengths, NaN/inf or no steps.
    """
    where = Path(path)
    with _open(where) as f:
        arrays = {key: _prepare(_read(f, key, where), key, where) for key in REQUIRED}
        if "next_observations" in f:
            arrays["next_observations"] = _prepare(
                _read(f, "next_observations", where), "next_observations", where
            )
        physics = _read_physics(f, where)
        if physics is not None:
            arrays[physics[0]] = _prepare(physics[1], physics[0], where)
        arrays.update(_read_ids(f, where))
        metadata = _read_metadata(f)
    n = check_lengths(arrays, where)
    if n == 0:
        raise fail(where, "observations", "expected at least one step, got an empty dataset")
    for key in ("next_observations",):
        if key in arrays and arrays[key].shape[1] != arrays["observations"].shape[1]:
            raise fail(
                where,
                key,
                f"expected shape {arrays['observations'].shape}, got {arrays[key].shape}",
            )
    num_actions = None
    if arrays["actions"].dtype == np.int64:
        num_actions = _num_actions(metadata, where)
        lo, hi = int(arrays["actions"].min()), int(arrays["actions"].max())
        if lo < 0 or hi >= num_actions:
            step = int(
                np.flatnonzero((arrays["actions"] < 0) | (arrays["actions"] >= num_actions))[0]
            )
            raise fail(
                where,
                "actions",
                f"discrete actions must lie in [0, {num_actions}) (metadata/num_actions), found "
                f"{arrays['actions'][step]} at step {step}",
            )
    episodes = _split(arrays, physics[0] if physics else None, where)
    metadata.update({"format": "d4rl", "source": str(where)})
    if task is not None:
        key = physics[0] if physics else "infos/physics"
        episodes = [relabel_episode(ep, task, where, key) for ep in episodes]
        metadata["relabelled_task"] = task
    return EpisodeDataset(episodes, metadata=metadata, num_actions=num_actions)


def _split(arrays: dict[str, np.ndarray], physics_key: str | None, where: Path) -> list[Episode]:
    """Cut the step arrays into episodes (views); per-episode ids from ``infos/*_id``."""
    bounds = _episode_bounds(arrays["terminals"], arrays["timeouts"])
    fields = {k: k for k in REQUIRED}
    if "next_observations" in arrays:
        fields["next_observations"] = "next_observations"
    if physics_key is not None:
        fields["physics"] = physics_key
    starts = np.concatenate([[0], bounds]).astype(np.int64).tolist()
    stops = [*starts[1:], len(arrays["terminals"])]
    spans = list(zip(starts, stops, strict=True))
    # views of the one array per key (np.split's own loop is several times slower)
    parts = {name: [arrays[key][a:b] for a, b in spans] for name, key in fields.items()}
    ids = {
        name: _check_constant(arrays[key], bounds, key, where).tolist()
        for key, name in ID_KEYS.items()
        if key in arrays
    }
    return [
        Episode(
            **{name: parts[name][i] for name in fields},
            **{name: values[i] for name, values in ids.items()},
        )
        for i in range(len(bounds) + 1)
    ]


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------
def _concat(dataset: EpisodeDataset, name: str, dtype: type) -> np.ndarray | None:
    """One field concatenated over episodes, or None if any episode lacks it."""
    parts = [getattr(ep, name) for ep in dataset.episodes]
    if any(p is None for p in parts):
        return None
    if name == "physics" and len({p.shape[1] for p in parts}) != 1:
        return None
    return np.concatenate(parts).astype(dtype, copy=False)


def _step_arrays(dataset: EpisodeDataset) -> dict[str, np.ndarray]:
    """The D4RL arrays of ``dataset``; a partial episode that is not last ends with a timeout
    (so it stays its own episode when read back)."""
    arrays = {
        "observations": _concat(dataset, "observations", np.float32),
        "actions": _concat(dataset, "actions", np.int64 if dataset.discrete else np.float32),
        "rewards": _concat(dataset, "rewards", np.float32),
        "terminals": _concat(dataset, "terminals", np.bool_),
        "timeouts": _concat(dataset, "timeouts", np.bool_).copy(),
        "next_observations": _concat(dataset, "next_observations", np.float32),
        "infos/physics": _concat(dataset, "physics", np.float64),
    }
    lengths = dataset.lengths
    ends = np.cumsum(lengths) - 1
    cut_short = [i for i, ep in enumerate(dataset.episodes[:-1]) if ep.truncated]
    arrays["timeouts"][ends[cut_short]] = True
    for key, ids in (
        ("infos/task_id", dataset.task_ids),
        ("infos/history_id", dataset.history_ids),
    ):
        if ids is not None:
            arrays[key] = np.repeat(ids, lengths)
    return {k: v for k, v in arrays.items() if v is not None}


def _h5_value(value: Any) -> Any:
    """A metadata value HDF5 can store (str, number, bool, numeric array); else JSON text."""
    if isinstance(value, (str, bool, int, float, np.number, np.bool_)):
        return value
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.number):
        return value
    if isinstance(value, Path):
        return str(value)
    return json.dumps(value, default=str)


def _write(f: h5py.File, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
    for key, arr in arrays.items():
        f.create_dataset(key, data=arr)
    for key, value in metadata.items():
        if value is None or key in ("source", "format"):
            continue
        if key in FULL_METADATA_KEYS:
            value = np.asarray(value, dtype=np.int64)
        f.create_dataset(f"metadata/{key}", data=_h5_value(value))


def save_d4rl(dataset: EpisodeDataset, path: str | os.PathLike) -> None:
    """Write ``dataset`` to ``path`` in the D4RL layout, atomically.

    Writes ``observations, actions, rewards`` (float32; discrete actions int64 ``[N]`` with
    ``metadata/num_actions``), ``terminals, timeouts`` (bool), ``next_observations`` (float32)
    when every episode has them, ``infos/physics`` (float64) when every episode has physics
    states of one size, ``infos/task_id`` / ``infos/history_id`` (int64, each episode's id on
    each of its steps) when the episodes carry them, and ``metadata/<key>`` for each metadata
    entry.
    The file is written to a temporary file in the same directory, then renamed over ``path``
    with ``os.replace``: a failure leaves neither a partial dataset nor the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = _step_arrays(dataset)
    metadata = dict(dataset.metadata)
    if dataset.discrete:
        metadata["num_actions"] = int(dataset.num_actions)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            _write(f, arrays, metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
