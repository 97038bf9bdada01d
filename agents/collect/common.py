"""Shared pieces of the collection agents: environments, episode recording, rollouts.

Every behaviour (random, SAC, exploration) produces a list of ``ringrl.data.Episode`` through an
:class:`EpisodeRecorder`, so the dataset layout is decided in exactly one place.

Physics states (dm_control tasks only) follow ExoRL's reward alignment: ``physics[t]`` is the
simulator state *after* ``actions[t]`` was applied, i.e. the state whose
``task.get_reward(physics)`` is ``rewards[t]``. Relabelling a dataset for another task of the same
domain is therefore ``rewards = envs.relabel_rewards(other_task, physics)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np


# --------------------------------------------------------------------------------------------
# Environments
# --------------------------------------------------------------------------------------------
def make_env(task: str, seed: int | None = None) -> gym.Env:
    """``envs.make(task, seed)``: a gymnasium env with flat float32 observations."""
    import envs

    return envs.make(task, seed=seed)


def is_dm_control(task: str) -> bool:
    """True for dm_control tasks (suite or the project's own), whose physics we save."""
    import envs

    return envs.is_dm_control(task)


def physics_state(env: gym.Env) -> np.ndarray | None:
    """The flat post-step physics state of a dm_control env (``physics.get_state()``)."""
    import envs

    return envs.physics_state(env)


def normalize_task(name: str) -> str:
    """A gymnasium id from a gymnasium id, an ExoRL name (``walker_run``) or a short dm_control
    name (``walker-run`` -> ``dm_control/walker-run-v0``)."""
    import envs

    try:
        return envs.resolve(name)
    except ValueError:
        if "/" in name:
            raise
        return envs.resolve(f"dm_control/{name}-v0")


def short_task(task: str) -> str:
    """``dm_control/walker-run-v0`` -> ``walker-run`` (for file names and titles)."""
    name = task.split("/")[-1]
    return name[: -len("-v0")] if name.endswith("-v0") else name


# --------------------------------------------------------------------------------------------
# Episodes
# --------------------------------------------------------------------------------------------
@dataclass
class EpisodeRecorder:
    """Accumulates transitions and cuts them into episodes (dicts of arrays with the fields of
    ``ringrl.data.Episode``: ``observations, actions, rewards, terminals, timeouts,
    next_observations`` and, with ``record_physics``, ``physics``).

    ``add`` takes one transition; an episode closes on ``terminated`` or ``truncated``. Integer
    actions (a ``Discrete`` action space) are kept as int64 (``actions [T]``), others as float32.
    ``finish()`` closes a trailing partial episode (marked as a timeout: it was cut short).
    """

    record_physics: bool = False
    episodes: list = field(default_factory=list)
    _buf: dict[str, list] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._buf = {k: [] for k in ("obs", "act", "rew", "term", "trunc", "next_obs", "phys")}

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: float,
        terminated: bool,
        truncated: bool,
        next_obs: np.ndarray,
        physics: np.ndarray | None = None,
    ) -> None:
        b = self._buf
        b["obs"].append(np.asarray(obs, np.float32))
        a = np.asarray(action)
        b["act"].append(
            a.astype(np.int64) if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32)
        )
        b["rew"].append(float(reward))
        b["term"].append(bool(terminated))
        b["trunc"].append(bool(truncated) and not terminated)
        b["next_obs"].append(np.asarray(next_obs, np.float32))
        if self.record_physics:
            b["phys"].append(np.asarray(physics, np.float64))
        if terminated or truncated:
            self._close()

    def _close(self) -> None:
        b = self._buf
        if not b["obs"]:
            return
        kwargs: dict[str, np.ndarray] = dict(
            observations=np.stack(b["obs"]),
            actions=np.stack(b["act"]),
            rewards=np.asarray(b["rew"], np.float32),
            terminals=np.asarray(b["term"], bool),
            timeouts=np.asarray(b["trunc"], bool),
            next_observations=np.stack(b["next_obs"]),
        )
        if self.record_physics:
            kwargs["physics"] = np.stack(b["phys"])
        self.episodes.append(kwargs)
        self._reset()

    def finish(self) -> list:
        """Close a trailing partial episode (as a timeout) and return all episodes."""
        if self._buf["obs"]:
            self._buf["trunc"][-1] = not self._buf["term"][-1]
            self._close()
        return self.episodes


Policy = Callable[[np.ndarray], np.ndarray]


def rollout(
    env: gym.Env,
    policy: Policy,
    num_steps: int,
    *,
    seed: int,
    record_physics: bool = False,
    progress: Any = None,
) -> list:
    """Run ``policy`` for ``num_steps`` environment steps; return the recorded episodes.

    The env is reset with ``seed`` once; later resets continue its RNG stream, so the whole
    rollout is deterministic given ``seed`` and a deterministic ``policy``. ``progress`` is an
    optional callable ``progress(n_steps)`` (e.g. ``tqdm.update``).
    """
    recorder = EpisodeRecorder(record_physics=record_physics)
    obs, _ = env.reset(seed=seed)
    for _ in range(num_steps):
        action = policy(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        phys = physics_state(env) if record_physics else None
        recorder.add(obs, action, reward, terminated, truncated, next_obs, phys)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
        if progress is not None:
            progress(1)
    return recorder.finish()


def evaluate(env: gym.Env, policy: Policy, num_episodes: int, *, seed: int) -> np.ndarray:
    """Undiscounted returns of ``num_episodes`` full episodes of ``policy``."""
    returns = []
    obs, _ = env.reset(seed=seed)
    for _ in range(num_episodes):
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
        obs, _ = env.reset()
    return np.asarray(returns)
