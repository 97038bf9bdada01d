"""Episodes and episode datasets, the in-memory form of every dataset format.

An :class:`Episode` holds one trajectory's arrays with fixed dtypes; an :class:`EpisodeDataset`
is an ordered list of episodes with the same observation and action sizes, plus a ``metadata``
dict (task, policy, source file, ...). Every format reader produces one; ``save_d4rl`` writes one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class DatasetError(ValueError):
    """A dataset that cannot be read: the message names the file, the key and the problem."""


def _as(x: Any, dtype: type, name: str) -> np.ndarray:
    """``x`` as an array of ``dtype`` (no copy when it already is one)."""
    arr = np.asarray(x)
    if dtype is np.bool_ and arr.dtype != np.bool_:
        return arr != 0
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise DatasetError(f"Episode.{name}: expected a numeric array, got dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


@dataclass(eq=False)
class Episode:
    """One trajectory of ``T`` steps; step ``t`` is ``(observations[t], actions[t], rewards[t])``.

    Attributes:
        observations: ``[T, obs_dim]`` float32, the observation the action was taken in.
        actions: ``[T, act_dim]`` float32.
        rewards: ``[T]`` float32, the reward received for ``actions[t]``.
        terminals: ``[T]`` bool, the step ended the episode in a terminal state.
        timeouts: ``[T]`` bool, the step ended the episode by the time limit.
        next_observations: ``[T, obs_dim]`` float32 or None (the observation after the step).
        physics: ``[T, n]`` float64 or None, the simulator state *after* step ``t`` (the state
            ``rewards[t]`` is computed from), used to relabel rewards for another task.

    Inputs are converted to these dtypes (no copy when they already have them).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    next_observations: np.ndarray | None = None
    physics: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.observations = _as(self.observations, np.float32, "observations")
        self.actions = _as(self.actions, np.float32, "actions")
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
        expected = {
            "observations": 2,
            "actions": 2,
            "rewards": 1,
            "terminals": 1,
            "timeouts": 1,
            "next_observations": 2,
            "physics": 2,
        }
        for name, ndim in expected.items():
            arr = getattr(self, name)
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
    """An ordered list of episodes sharing ``obs_dim`` and ``act_dim``, with ``metadata``."""

    def __init__(self, episodes: Sequence[Episode], metadata: dict | None = None) -> None:
        self.episodes: list[Episode] = list(episodes)
        self.metadata: dict[str, Any] = dict(metadata or {})
        if not self.episodes:
            where = self.metadata.get("source", "EpisodeDataset")
            raise DatasetError(f"{where}: expected at least one episode, got an empty dataset")
        self._check_dims()
        self._returns: np.ndarray | None = None

    @classmethod
    def from_episodes(
        cls, episodes: Sequence[Episode], metadata: dict | None = None
    ) -> EpisodeDataset:
        """A dataset of ``episodes`` (in order); raises DatasetError if empty or inconsistent."""
        return cls(episodes, metadata=metadata)

    def _check_dims(self) -> None:
        first = self.episodes[0]
        for i, ep in enumerate(self.episodes):
            for name in ("observations", "actions"):
                got, want = getattr(ep, name).shape[1], getattr(first, name).shape[1]
                if got != want:
                    raise DatasetError(
                        f"episode {i}: {name} has dimension {got}, episode 0 has {want}"
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
        """Action size."""
        return int(self.episodes[0].actions.shape[1])

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
        return EpisodeDataset(chosen, metadata=meta)

    def summary(self) -> dict[str, Any]:
        """Counts and the return distribution: plain Python numbers, JSON-ready."""
        r = self.returns
        lengths = self.lengths
        return {
            "episodes": self.num_episodes,
            "steps": self.num_steps,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
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
