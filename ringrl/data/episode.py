"""Episodes and episode datasets, the in-memory form of every dataset format.

An :class:`Episode` holds one trajectory's arrays with fixed dtypes; an :class:`EpisodeDataset`
is an ordered list of episodes with the same observation and action sizes, plus a ``metadata``
dict (task, policy, source file, ...). Every format reader produces one; ``save_d4rl`` writes one.

**Discrete actions.** Integer actions are discrete (a gymnasium ``Discrete`` space): an episode's
``actions`` are int64 ``[T]`` (an integer ``[T, 1]`` input is flattened). A dataset of discrete
episodes needs the number of actions, ``metadata["num_actions"]`` (or the ``num_actions``
argument); its ``act_dim`` is that number and ``discrete`` is True. All episodes of a dataset are
discrete or none is.

**Multi-task data.** ``Episode.task_id`` (the task instance of a task family) and
``Episode.history_id`` (the learning history it belongs to) are ints or None; within a dataset
each is set on every episode or on none. A learning history is the episodes of one history id in
dataset order; without history ids, the episodes of one task id; without either, the whole
dataset (:meth:`EpisodeDataset.histories`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class DatasetError(ValueError):
    """A dataset that cannot be read: the message names the file, the key and the problem."""


def _as(x: Any, dtype: type, name: str) -> np.ndarray:
    """``x`` as an array of ``dtype`` (no copy when it already is one)."""
    arr = x if type(x) is np.ndarray else np.asarray(x)
    if arr.dtype == dtype:  # the common case (every reader's output): no dtype inspection
        return arr
    if dtype is np.bool_ and arr.dtype != np.bool_:
        return arr != 0
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise DatasetError(f"Episode.{name}: expected a numeric array, got dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


def _as_actions(x: Any) -> np.ndarray:
    """Integer actions as int64 ``[T]`` (discrete), anything else as float32 (continuous)."""
    arr = x if type(x) is np.ndarray else np.asarray(x)
    if arr.dtype == np.float32 or (arr.dtype == np.int64 and arr.ndim == 1):
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise DatasetError(
                f"Episode.actions: integer (discrete) actions must be one per step, shape [T]; "
                f"got shape {arr.shape}"
            )
        return arr.astype(np.int64, copy=False)
    return _as(arr, np.float32, "actions")


def _as_id(x: Any, name: str) -> int | None:
    """``x`` as a Python int (or None)."""
    if x is None:
        return None
    if type(x) is int:
        return x
    if isinstance(x, (bool, np.bool_)):
        raise DatasetError(f"Episode.{name}: expected an integer or None, got {x!r}")
    try:
        return operator.index(x)
    except TypeError:
        raise DatasetError(f"Episode.{name}: expected an integer or None, got {x!r}") from None


@dataclass(eq=False)
class Episode:
    """One trajectory of ``T`` steps; step ``t`` is ``(observations[t], actions[t], rewards[t])``.

    Attributes:
        observations: ``[T, obs_dim]`` float32, the observation the action was taken in.
        actions: ``[T, act_dim]`` float32 (continuous), or int64 ``[T]`` (discrete: integer
            inputs).
        rewards: ``[T]`` float32, the reward received for ``actions[t]``.
        terminals: ``[T]`` bool, the step ended the episode in a terminal state.
        timeouts: ``[T]`` bool, the step ended the episode by the time limit.
        next_observations: ``[T, obs_dim]`` float32 or None (the observation after the step).
        physics: ``[T, n]`` float64 or None, the simulator state *after* step ``t`` (the state
            ``rewards[t]`` is computed from), used to relabel rewards for another task.
        task_id: the task instance (of a task family) the episode was played on, or None.
        history_id: the learning history the episode belongs to, or None.

    Inputs are converted to these dtypes (no copy when they already have them).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    next_observations: np.ndarray | None = None
    physics: np.ndarray | None = None
    task_id: int | None = None
    history_id: int | None = None

    def __post_init__(self) -> None:
        self.observations = _as(self.observations, np.float32, "observations")
        self.actions = _as_actions(self.actions)
        self.task_id = _as_id(self.task_id, "task_id")
        self.history_id = _as_id(self.history_id, "history_id")
        self.rewards = _as(self.rewards, np.float32, "rewards")
        self.terminals = _as(self.terminals, np.bool_, "terminals")
        self.timeouts = _as(self.timeouts, np.bool_, "timeouts")
        if self.next_observations is not None:
            self.next_observations = _as(self.next_observations, np.float32, "next_observations")
        if self.physics is not None:
            self.physics = _as(self.physics, np.float64, "physics")
        self._check_shapes()

    def _check_shapes(self) -> None:
        T = len(self.rewards)
        expected = (
            ("observations", self.observations, 2),
            ("actions", self.actions, 1 if self.actions.dtype == np.int64 else 2),
            ("rewards", self.rewards, 1),
            ("terminals", self.terminals, 1),
            ("timeouts", self.timeouts, 1),
            ("next_observations", self.next_observations, 2),
            ("physics", self.physics, 2),
        )
        for name, arr, ndim in expected:
            if arr is None:
                continue
            if arr.ndim != ndim:
                raise DatasetError(f"Episode.{name}: expected {ndim}-D, got shape {arr.shape}")
            if len(arr) != T:
                raise DatasetError(f"Episode.{name}: {len(arr)} entries but {T} rewards")
        if T == 0:
            raise DatasetError("Episode: expected at least one step, got an empty episode")
        if self.next_observations is not None:
            if self.next_observations.shape != self.observations.shape:
                raise DatasetError(
                    f"Episode.next_observations: shape {self.next_observations.shape} differs "
                    f"from observations {self.observations.shape}"
                )

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def discrete(self) -> bool:
        """The actions are integers (a ``Discrete`` action space), ``[T]`` int64."""
        return self.actions.dtype == np.int64

    @property
    def episode_return(self) -> float:
        """Undiscounted sum of rewards (accumulated in float64)."""
        return float(np.sum(self.rewards, dtype=np.float64))

    @property
    def complete(self) -> bool:
        """The last step is a terminal or a timeout."""
        return bool(self.terminals[-1] or self.timeouts[-1])

    @property
    def truncated(self) -> bool:
        """The data ends before the episode did: the last step is neither terminal nor timeout.

        This is the trailing partial episode of a D4RL file (its last ``timeouts`` entry stays
        False, as stored). Not the same as a time-limit end, which is ``timeouts[-1]``.
        """
        return not self.complete


class EpisodeDataset:
    """An ordered list of episodes sharing ``obs_dim`` and ``act_dim``, with ``metadata``.

    Discrete episodes (integer actions) need the number of actions: ``num_actions``, else
    ``metadata["num_actions"]``; it is kept in ``metadata["num_actions"]`` (so ``save_d4rl``
    writes it) and every action must lie in ``[0, num_actions)``.
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        metadata: dict | None = None,
        num_actions: int | None = None,
    ) -> None:
        self.episodes: list[Episode] = list(episodes)
        self.metadata: dict[str, Any] = dict(metadata or {})
        if not self.episodes:
            raise DatasetError(
                f"{self._where}: expected at least one episode, got an empty dataset"
            )
        self._check_dims()
        self._num_actions = self._check_actions(num_actions)
        self._check_ids()
        self._returns: np.ndarray | None = None

    @classmethod
    def from_episodes(
        cls,
        episodes: Sequence[Episode],
        metadata: dict | None = None,
        num_actions: int | None = None,
    ) -> EpisodeDataset:
        """A dataset of ``episodes`` (in order); raises DatasetError if empty or inconsistent."""
        return cls(episodes, metadata=metadata, num_actions=num_actions)

    @property
    def _where(self) -> str:
        return str(self.metadata.get("source", "EpisodeDataset"))

    def _check_dims(self) -> None:
        first = self.episodes[0]
        for i, ep in enumerate(self.episodes):
            if ep.discrete != first.discrete:
                kinds = {True: "discrete (integer)", False: "continuous (float)"}
                raise DatasetError(
                    f"{self._where}: episode {i} has {kinds[ep.discrete]} actions, episode 0 has "
                    f"{kinds[first.discrete]} actions"
                )
            for name in ("observations", "actions"):
                a, b = getattr(ep, name), getattr(first, name)
                got = a.shape[1] if a.ndim == 2 else 1
                want = b.shape[1] if b.ndim == 2 else 1
                if got != want:
                    raise DatasetError(
                        f"episode {i}: {name} has dimension {got}, episode 0 has {want}"
                    )

    def _check_actions(self, num_actions: int | None) -> int | None:
        """The number of actions of a discrete dataset (validated), None for a continuous one."""
        if not self.episodes[0].discrete:
            return None
        n = num_actions if num_actions is not None else self.metadata.get("num_actions")
        if n is None:
            raise DatasetError(
                f"{self._where}: key 'num_actions': discrete (integer) actions need the number "
                f"of actions (metadata['num_actions'], in a D4RL file 'metadata/num_actions')"
            )
        try:
            n = operator.index(n) if not isinstance(n, (bool, np.bool_)) else None
        except TypeError:
            n = None
        if n is None or n < 1:
            raise DatasetError(
                f"{self._where}: key 'num_actions': expected an integer >= 1, got "
                f"{num_actions if num_actions is not None else self.metadata.get('num_actions')!r}"
            )
        actions = np.concatenate([ep.actions for ep in self.episodes])
        lo, hi = int(actions.min()), int(actions.max())
        if lo < 0 or hi >= n:
            bad = lo if lo < 0 else hi
            raise DatasetError(
                f"{self._where}: key 'actions': discrete actions must lie in [0, {n}) "
                f"(num_actions = {n}), found {bad}"
            )
        self.metadata["num_actions"] = n
        return n

    def _check_ids(self) -> None:
        for name in ("task_id", "history_id"):
            has = [getattr(ep, name) is not None for ep in self.episodes]
            if any(has) and not all(has):
                i = has.index(not has[0])
                raise DatasetError(
                    f"{self._where}: key 'infos/{name}': episode {i} "
                    f"{'has' if has[i] else 'lacks'} a {name} but episode 0 "
                    f"{'has' if has[0] else 'lacks'} one (every episode or none must carry one)"
                )

    # ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.episodes)

    def __iter__(self) -> Iterator[Episode]:
        return iter(self.episodes)

    def __getitem__(self, i: int) -> Episode:
        return self.episodes[i]

    def __repr__(self) -> str:
        return (
            f"EpisodeDataset(episodes={self.num_episodes}, steps={self.num_steps}, "
            f"obs_dim={self.obs_dim}, act_dim={self.act_dim})"
        )

    @property
    def num_episodes(self) -> int:
        """Number of episodes."""
        return len(self.episodes)

    @property
    def num_steps(self) -> int:
        """Total number of steps (transitions) over all episodes."""
        return int(sum(len(ep) for ep in self.episodes))

    @property
    def obs_dim(self) -> int:
        """Observation size."""
        return int(self.episodes[0].observations.shape[1])

    @property
    def act_dim(self) -> int:
        """Action size; for discrete actions, the number of actions."""
        if self._num_actions is not None:
            return self._num_actions
        return int(self.episodes[0].actions.shape[1])

    @property
    def discrete(self) -> bool:
        """The actions are integers ``[T]`` (a gymnasium ``Discrete`` space)."""
        return self._num_actions is not None

    @property
    def num_actions(self) -> int | None:
        """The number of discrete actions, None for continuous actions."""
        return self._num_actions

    @property
    def task_ids(self) -> np.ndarray | None:
        """Each episode's task id, int64 ``[num_episodes]``; None if episodes carry none."""
        if self.episodes[0].task_id is None:
            return None
        return np.array([ep.task_id for ep in self.episodes], dtype=np.int64)

    @property
    def history_ids(self) -> np.ndarray | None:
        """Each episode's history id, int64 ``[num_episodes]``; None if episodes carry none."""
        if self.episodes[0].history_id is None:
            return None
        return np.array([ep.history_id for ep in self.episodes], dtype=np.int64)

    def histories(self) -> list[np.ndarray]:
        """The learning histories: episode indices (int64, dataset order) of each history id,
        else of each task id, else one history of all episodes; ordered by first appearance."""
        ids = self.history_ids
        if ids is None:
            ids = self.task_ids
        if ids is None:
            return [np.arange(self.num_episodes, dtype=np.int64)]
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        groups = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))[:-1]
        parts = np.split(groups, bounds)
        return [parts[g].astype(np.int64) for g in order]

    @property
    def lengths(self) -> np.ndarray:
        """Episode lengths, int64 ``[num_episodes]``."""
        return np.array([len(ep) for ep in self.episodes], dtype=np.int64)

    @property
    def returns(self) -> np.ndarray:
        """Undiscounted episode returns, float64 ``[num_episodes]`` (computed once, cached)."""
        if self._returns is None or len(self._returns) != len(self.episodes):
            self._returns = np.array([ep.episode_return for ep in self.episodes])
        return self._returns

    # ---------------------------------------------------------------------------------------
    def filter_top(self, fraction: float) -> EpisodeDataset:
        """The ``fraction`` of episodes with the highest returns (filtered BC, e.g. 0.1).

        Keeps ``max(1, int(fraction * num_episodes))`` episodes (CORL's rule), in their original
        order; ties are broken by dataset order. The episodes are shared, not copied.
        """
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        keep = max(1, int(math.floor(fraction * self.num_episodes + 1e-9)))
        order = np.argsort(-self.returns, kind="stable")[:keep]
        chosen = [self.episodes[i] for i in np.sort(order)]
        meta = {**self.metadata, "filter_top": float(fraction)}
        return EpisodeDataset(chosen, metadata=meta, num_actions=self._num_actions)

    def summary(self) -> dict[str, Any]:
        """Counts and the return distribution: plain Python numbers, JSON-ready."""
        r = self.returns
        lengths = self.lengths
        return {
            "episodes": self.num_episodes,
            "steps": self.num_steps,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "discrete": self.discrete,
            "tasks": 0 if self.task_ids is None else int(len(np.unique(self.task_ids))),
            "histories": len(self.histories()),
            "truncated_episodes": int(sum(ep.truncated for ep in self.episodes)),
            "length_min": int(lengths.min()),
            "length_max": int(lengths.max()),
            "return_min": float(r.min()),
            "return_mean": float(r.mean()),
            "return_max": float(r.max()),
            "return_std": float(r.std()),
        }

    def save_d4rl(self, path: str | Path) -> None:
        """Write the dataset as one D4RL-layout HDF5 file, atomically (see ``ringrl.data.d4rl``)."""
        from ringrl.data.d4rl import save_d4rl

        save_d4rl(self, path)
