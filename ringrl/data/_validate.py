"""Vectorised checks shared by the format readers; each raises DatasetError naming file and key."""

from __future__ import annotations

from typing import Any

import numpy as np

from ringrl.data.episode import DatasetError, Episode


def fail(where: Any, key: str, problem: str) -> DatasetError:
    """The error for ``key`` of file ``where``."""
    return DatasetError(f"{where}: key {key!r}: {problem}")


def check_numeric(arr: np.ndarray, where: Any, key: str) -> None:
    """Numeric or bool dtype."""
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise fail(where, key, f"expected a numeric array, got dtype {arr.dtype}")


def check_ndim(arr: np.ndarray, ndim: int, where: Any, key: str) -> np.ndarray:
    """``arr`` with ``ndim`` dimensions; a 1-D quantity stored as ``[N, 1]`` is flattened."""
    if ndim == 1 and arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != ndim:
        raise fail(where, key, f"expected a {ndim}-D array, got shape {arr.shape}")
    return arr


def check_finite(arr: np.ndarray, where: Any, key: str) -> None:
    """No NaN or inf (integer and bool arrays are always finite)."""
    if not np.issubdtype(arr.dtype, np.floating):
        return
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad = np.argwhere(~finite)[0]
    value = arr[tuple(bad)]
    raise fail(where, key, f"expected finite values, found {value} at index {tuple(bad.tolist())}")


def check_lengths(arrays: dict[str, np.ndarray], where: Any) -> int:
    """All arrays have the same first dimension; returns it."""
    lengths = {k: len(v) for k, v in arrays.items()}
    first_key = next(iter(lengths))
    for key, n in lengths.items():
        if n != lengths[first_key]:
            raise fail(
                where,
                key,
                f"expected {lengths[first_key]} entries (like {first_key!r}), got {n}; "
                f"lengths: {lengths}",
            )
    return lengths[first_key]


def relabel_episode(ep: Episode, task: str, where: Any, key: str = "physics") -> Episode:
    """``ep`` with rewards recomputed by ``envs.relabel_rewards(task, ep.physics)``."""
    if ep.physics is None:
        raise fail(where, key, f"reward relabelling for task {task!r} needs physics states")
    try:
        from envs import relabel_rewards
    except ImportError as e:  # pragma: no cover - depends on the envs package
        raise DatasetError(f"{where}: cannot relabel for task {task!r}: {e}") from e
    try:
        rewards = relabel_rewards(task, ep.physics, ep.actions)
    except ValueError as e:
        raise DatasetError(f"{where}: key {key!r}: cannot relabel for task {task!r}: {e}") from e
    rewards = np.asarray(rewards, dtype=np.float32)
    if rewards.shape != ep.rewards.shape:
        raise fail(
            where,
            key,
            f"relabelled rewards have shape {rewards.shape}, expected {ep.rewards.shape}",
        )
    ep.rewards = rewards
    return ep
