"""Wrappers shared by all tasks: construction-time seeding and MuJoCo (gymnasium v5) envs."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np


class SeededWrapper(gymnasium.Wrapper):
    """Applies a construction-time seed to the first ``reset`` and seeds the action space.

    ``reset(seed=s)`` with an explicit seed always wins (and cancels the pending seed).
    """

    def __init__(self, env: gymnasium.Env, seed: int | None = None) -> None:
        super().__init__(env)
        self.seed_next_reset(seed)

    def seed_next_reset(self, seed: int | None) -> None:
        """Uses ``seed`` for the next unseeded ``reset`` and seeds ``action_space`` with it."""
        self._pending_seed = seed
        if seed is not None:
            self.action_space.seed(seed)

    def take_seed(self, seed: int | None) -> int | None:
        """Returns the seed for this reset: the explicit one, else the pending one (once)."""
        pending, self._pending_seed = self._pending_seed, None
        return pending if seed is None else seed


class MujocoEnv(SeededWrapper):
    """A gymnasium MuJoCo env with float32 observations and physics-state access.

    The physics state is ``concat(qpos, qvel)`` (float64), also given as ``info["physics"]``
    after ``reset`` and every ``step`` (post-step state); ``set_physics_state`` restores it via
    the env's own ``set_state(qpos, qvel)``.
    """

    def __init__(self, env: gymnasium.Env, seed: int | None = None) -> None:
        super().__init__(env, seed=None)
        space = env.observation_space
        low = np.asarray(space.low, dtype=np.float32)
        high = np.asarray(space.high, dtype=np.float32)
        self.observation_space = gymnasium.spaces.Box(low, high, space.shape, np.float32)
        self.seed_next_reset(seed)

    @property
    def has_physics(self) -> bool:
        """False for gymnasium envs that are not MuJoCo-based (e.g. ``Pendulum-v1``)."""
        return hasattr(getattr(self.env.unwrapped, "data", None), "qpos")

    def get_physics_state(self) -> np.ndarray:
        """``concat(qpos, qvel)`` as float64 (a copy)."""
        if not self.has_physics:
            raise ValueError(
                f"{self.env.spec.id if self.env.spec else self.env} has no MuJoCo physics"
            )
        data = self.env.unwrapped.data
        return np.concatenate([data.qpos, data.qvel]).astype(np.float64)

    def set_physics_state(self, state: np.ndarray) -> None:
        """Restores a state from :meth:`get_physics_state`."""
        nq = self.env.unwrapped.model.nq
        state = np.asarray(state, dtype=np.float64)
        self.env.unwrapped.set_state(state[:nq], state[nq:])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Resets; ``info["physics"]`` holds the initial physics state."""
        obs, info = self.env.reset(seed=self.take_seed(seed), options=options)
        if self.has_physics:
            info["physics"] = self.get_physics_state()
        return np.asarray(obs, dtype=np.float32), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Steps; ``info["physics"]`` is the post-step state."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.has_physics:
            info["physics"] = self.get_physics_state()
        return np.asarray(obs, dtype=np.float32), float(reward), terminated, truncated, info
