"""Minari datasets, read through the ``minari`` package.

A dataset is given as a directory (``<root>/<id>/`` holding ``data/metadata.json`` and the data
file, or that ``data/`` directory itself) or as a dataset id resolved under
``MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``). Nothing is downloaded.

Minari stores ``T + 1`` observations per episode; the :class:`Episode` gets
``observations = obs[:-1]`` and ``next_observations = obs[1:]``. ``terminals`` and ``timeouts``
are Minari's ``terminations`` and ``truncations``. Dict (and tuple) observations are flattened:
each entry reshaped to ``[T + 1, -1]`` and concatenated in the dict's key order (for gymnasium
``Dict`` spaces, the space's key order), recursively. Actions follow the dataset's action space:
a ``Box`` gives float32 ``[T, act_dim]``; a ``Discrete(n)`` gives int64 ``[T]`` with
``num_actions = n`` (``ds.act_dim == n``, ``ds.discrete``); other spaces are refused.

Multi-task data: an episode's ``task_id`` / ``history_id`` come from its episode metadata
(``task_id`` / ``history_id`` entries, e.g. added by a ``minari`` ``EpisodeMetadataCallback``),
else from recorded step infos ``infos["task_id"]`` / ``infos["history_id"]`` (the task families
put ``task_id`` in every info), which must then be constant within the episode.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ringrl.data._validate import check_finite, check_ndim, check_numeric, fail
from ringrl.data.episode import DatasetError, Episode, EpisodeDataset

METADATA_KEYS = ("dataset_id", "algorithm_name", "env_spec", "minari_version", "author")


def data_dir(path: str | os.PathLike) -> Path | None:
    """The Minari ``data/`` directory of a dataset directory, or None if ``path`` is not one."""
    p = Path(path)
    for candidate in (p / "data", p):
        if (candidate / "metadata.json").is_file():
            return candidate
    return None


def id_data_dir(dataset_id: str) -> Path | None:
    """The ``data/`` directory of a local dataset id under ``MINARI_DATASETS_PATH``, or None."""
    root = os.environ.get("MINARI_DATASETS_PATH") or Path("~/.minari/datasets").expanduser()
    return data_dir(Path(root) / dataset_id)


def flatten(value: Any, where: Any, key: str) -> np.ndarray:
    """``[T, ...]`` array, or dict/tuple of them, as one ``[T, d]`` array (dict key order)."""
    if isinstance(value, dict):
        parts = [flatten(v, where, f"{key}/{k}") for k, v in value.items()]
    elif isinstance(value, (tuple, list)):
        parts = [flatten(v, where, f"{key}/{i}") for i, v in enumerate(value)]
    else:
        arr = np.asarray(value)
        check_numeric(arr, where, key)
        return arr.reshape(len(arr), -1)
    if not parts:
        raise fail(where, key, "expected array data, got an empty dict/tuple")
    return np.concatenate(parts, axis=1)


def _action_kind(space: Any, where: str) -> int | None:
    """The number of actions of a ``Discrete`` action space, None for a ``Box``; else an error."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        if int(space.start) != 0:
            raise fail(where, "action_space", f"expected Discrete actions from 0, got {space}")
        return int(space.n)
    if isinstance(space, spaces.Box) or space is None:
        return None
    raise fail(where, "action_space", f"expected a Box or Discrete action space, got {space}")


def _episode_id(value: Any, where: str, key: str) -> int | None:
    """A task/history id from episode metadata or step infos (constant within the episode)."""
    if value is None:
        return None
    arr = np.asarray(value).reshape(-1)
    if arr.size == 0:
        return None
    if not np.issubdtype(arr.dtype, np.integer):
        raise fail(where, key, f"expected integer ids, got dtype {arr.dtype}")
    if (arr != arr[0]).any():
        step = int(np.flatnonzero(arr != arr[0])[0])
        raise fail(
            where,
            key,
            f"expected one value per episode, got {arr[0]} at step 0 and {arr[step]} at step "
            f"{step}",
        )
    return int(arr[0])


def _episode(ep: Any, where: str, num_actions: int | None = None, meta: Any = None) -> Episode:
    """One ``minari.EpisodeData`` as an :class:`Episode` (``meta``: its episode metadata)."""
    key = f"episode_{ep.id}"
    obs = flatten(ep.observations, where, f"{key}/observations")
    if num_actions is not None:
        actions = check_ndim(np.asarray(ep.actions), 1, where, f"{key}/actions")
        if not np.issubdtype(actions.dtype, np.integer):
            raise fail(
                where,
                f"{key}/actions",
                f"expected integer actions (Discrete({num_actions})), got {actions.dtype}",
            )
    else:
        actions = flatten(ep.actions, where, f"{key}/actions")
        if not np.issubdtype(actions.dtype, np.floating):
            raise fail(
                where,
                f"{key}/actions",
                f"expected continuous (float) actions, got {actions.dtype}",
            )
    rewards = check_ndim(np.asarray(ep.rewards), 1, where, f"{key}/rewards")
    T = len(rewards)
    if len(obs) != T + 1 or len(actions) != T:
        raise fail(
            where,
            key,
            f"expected {T + 1} observations and {T} actions for {T} "
            f"rewards, got {len(obs)} and {len(actions)}",
        )
    if T == 0:
        raise fail(where, key, "expected at least one step, got an empty episode")
    for name, arr in (("observations", obs), ("actions", actions), ("rewards", rewards)):
        check_finite(arr, where, f"{key}/{name}")
    ids = {}
    infos = ep.infos or {}
    for name in ("task_id", "history_id"):
        if isinstance(meta, dict) and meta.get(name) is not None:
            ids[name] = _episode_id(meta[name], where, f"{key}/metadata/{name}")
        elif isinstance(infos, dict) and name in infos:
            ids[name] = _episode_id(infos[name], where, f"{key}/infos/{name}")
    return Episode(
        observations=obs[:-1],
        actions=actions,
        rewards=rewards,
        terminals=np.asarray(ep.terminations),
        timeouts=np.asarray(ep.truncations),
        next_observations=obs[1:],
        **ids,
    )


def _open(path: str | os.PathLike) -> tuple[Any, str]:
    """``(MinariDataset, description of where)`` for a directory or a local id."""
    import minari

    d = data_dir(path)
    if d is None and not Path(path).exists():
        d = id_data_dir(str(path))
    if d is None:
        raise DatasetError(
            f"{path}: not a local Minari dataset (expected a directory with data/metadata.json, "
            f"or a dataset id under MINARI_DATASETS_PATH="
            f"{os.environ.get('MINARI_DATASETS_PATH', '~/.minari/datasets')})"
        )
    try:
        return minari.MinariDataset(d), str(d)
    except Exception as e:  # minari raises many kinds (KeyError, OSError, ValueError...)
        raise DatasetError(f"{d}: not a readable Minari dataset: {type(e).__name__}: {e}") from e


def load_minari(path: str | os.PathLike) -> EpisodeDataset:
    """Read a local Minari dataset (directory or id) into an :class:`EpisodeDataset`."""
    ds, where = _open(path)
    num_actions = _action_kind(ds.action_space, where)
    data = list(ds.iterate_episodes())
    if not data:
        raise DatasetError(f"{where}: expected at least one episode, got an empty dataset")
    episode_meta = list(ds.storage.get_episode_metadata([ep.id for ep in data]))
    episodes = [
        _episode(ep, where, num_actions, m) for ep, m in zip(data, episode_meta, strict=True)
    ]
    meta = ds.storage.metadata
    metadata: dict[str, Any] = {k: str(meta[k]) for k in METADATA_KEYS if meta.get(k) is not None}
    metadata.update({"format": "minari", "source": where})
    return EpisodeDataset(episodes, metadata=metadata, num_actions=num_actions)
