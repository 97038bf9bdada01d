"""Task families for in-context RL: a Bernoulli bandit and Dark Room (Algorithm Distillation's).

A *task family* is one gymnasium environment class whose instances ("tasks") differ in a hidden
parameter. The family's contract (``DESIGN.md``, "Environments"):

* ``env.reset(seed=s, options={"task_id": i})`` selects instance ``i`` (``0 <= i < num_tasks``)
  and keeps it for every later reset that passes no ``task_id``; before any selection the
  instance is task 0;
* ``env.unwrapped.num_tasks`` is the number of instances, ``env.unwrapped.task_id`` the current
  one; ``info["task_id"]`` carries it after every reset and step;
* actions are ``Discrete``; observations are flat float32 boxes.

Registered ids (see :mod:`envs.registry`):

* ``ringrl/bandit-v0`` — :class:`BernoulliBandit`, 10 arms, one pull per episode. The
  observation is a constant ``[0.0]``; the one step's action is an arm; the reward is 1 with that
  arm's probability, else 0; the episode then terminates. Task ``i``'s arm probabilities are
  ``np.random.default_rng(i).uniform(size=10)`` (:func:`bandit_arm_probs`); 10,000 instances.
* ``ringrl/darkroom-v0`` (9x9) and ``ringrl/darkroom_hard-v0`` (17x17) — :class:`DarkRoom`:
  the agent starts at the centre cell ``(size // 2, size // 2)`` and sees only its position
  ``(x, y)`` (float32); 5 actions ``0 stay, 1 up (y - 1), 2 down (y + 1), 3 left (x - 1),
  4 right (x + 1)`` (moves into a wall leave it in place); the reward is 1 for every step that
  *ends* on the hidden goal cell, else 0; episodes never terminate and are truncated after 20
  steps. Task ``i`` is the goal cell ``i`` in row-major order: ``(x, y) = (i % size,
  i // size)``; ``size**2`` instances (81 / 289). An optimal episode returns 20 when the goal is
  the start cell, else ``21 - d`` for a goal ``d`` moves away (:attr:`DarkRoom.optimal_return`).

Random streams: the bandit's rewards come from the env's ``np_random`` (seeded by
``reset(seed=...)``); Dark Room is deterministic.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

BANDIT_ARMS = 10
BANDIT_TASKS = 10_000
DARKROOM_HORIZON = 20

#: Dark Room actions, in order (stay, up, down, left, right): (dx, dy) of each.
DARKROOM_MOVES: tuple[tuple[int, int], ...] = ((0, 0), (0, -1), (0, 1), (-1, 0), (1, 0))


def bandit_arm_probs(task_id: int, num_arms: int = BANDIT_ARMS) -> np.ndarray:
    """Arm success probabilities of bandit task ``task_id``: ``default_rng(task_id).uniform``."""
    return np.random.default_rng(int(task_id)).uniform(size=num_arms)


def darkroom_goal(task_id: int, size: int) -> tuple[int, int]:
    """Goal cell ``(x, y)`` of Dark Room task ``task_id``: row-major order on a ``size`` grid."""
    return int(task_id) % size, int(task_id) // size


class TaskFamilyEnv(gymnasium.Env):
    """Base of the task families: task selection through ``reset(options={"task_id": i})``."""

    num_tasks: int = 1

    def __init__(self) -> None:
        self._task_id = 0
        self._select(0)

    @property
    def task_id(self) -> int:
        """The current task instance."""
        return self._task_id

    def _select(self, task_id: int) -> None:
        """Set up instance ``task_id`` (already validated)."""
        raise NotImplementedError

    def _reset_task(self, options: dict[str, Any] | None) -> None:
        task_id = (options or {}).get("task_id")
        if task_id is None:
            return
        if isinstance(task_id, (bool, np.bool_)) or not isinstance(task_id, (int, np.integer)):
            raise ValueError(f"options['task_id'] must be an integer, got {task_id!r}")
        if not 0 <= task_id < self.num_tasks:
            raise ValueError(
                f"options['task_id'] = {task_id} is out of range: this family has "
                f"{self.num_tasks} task instances (0..{self.num_tasks - 1})"
            )
        self._task_id = int(task_id)
        self._select(self._task_id)

    def _action(self, action: Any) -> int:
        """``action`` (int, numpy integer, or a one-element array) as an int in range."""
        if isinstance(action, (int, np.integer)) and not isinstance(action, (bool, np.bool_)):
            value = int(action)
        else:
            a = np.asarray(action)
            integral = a.size == 1 and (
                np.issubdtype(a.dtype, np.integer)
                or (np.issubdtype(a.dtype, np.floating) and float(a.item()).is_integer())
            )
            if not integral:
                raise ValueError(
                    f"expected one integer action in {self.action_space}, got {action!r}"
                )
            value = int(a.item())
        if not 0 <= value < self.action_space.n:
            raise ValueError(f"action {value} is outside {self.action_space}")
        return value


class BernoulliBandit(TaskFamilyEnv):
    """A ``num_arms``-arm Bernoulli bandit, one pull per episode (see the module docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, num_arms: int = BANDIT_ARMS, num_tasks: int = BANDIT_TASKS) -> None:
        self.num_arms = int(num_arms)
        self.num_tasks = int(num_tasks)
        self.observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Discrete(self.num_arms)
        self._obs = np.zeros(1, np.float32)
        super().__init__()

    def _select(self, task_id: int) -> None:
        self.arm_probs = bandit_arm_probs(task_id, self.num_arms)

    @property
    def optimal_return(self) -> float:
        """Expected reward of the best arm."""
        return float(self.arm_probs.max())

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._reset_task(options)
        return self._obs.copy(), {"task_id": self._task_id}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        arm = self._action(action)
        reward = float(self.np_random.random() < self.arm_probs[arm])
        return self._obs.copy(), reward, True, False, {"task_id": self._task_id}


class DarkRoom(TaskFamilyEnv):
    """AD's Dark Room on a ``size`` x ``size`` grid (see the module docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, size: int = 9, horizon: int = DARKROOM_HORIZON) -> None:
        self.size = int(size)
        self.horizon = int(horizon)
        self.num_tasks = self.size * self.size
        self.start = (self.size // 2, self.size // 2)
        self.observation_space = spaces.Box(0.0, float(self.size - 1), (2,), np.float32)
        self.action_space = spaces.Discrete(len(DARKROOM_MOVES))
        self._pos = self.start
        self._t = 0
        super().__init__()

    def _select(self, task_id: int) -> None:
        self.goal = darkroom_goal(task_id, self.size)

    @property
    def optimal_return(self) -> float:
        """Return of the shortest walk to the goal, then staying on it."""
        d = abs(self.goal[0] - self.start[0]) + abs(self.goal[1] - self.start[1])
        return float(self.horizon if d == 0 else max(0, self.horizon + 1 - d))

    def _observation(self) -> np.ndarray:
        return np.asarray(self._pos, np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._reset_task(options)
        self._pos, self._t = self.start, 0
        return self._observation(), {"task_id": self._task_id}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        dx, dy = DARKROOM_MOVES[self._action(action)]
        x = min(max(self._pos[0] + dx, 0), self.size - 1)
        y = min(max(self._pos[1] + dy, 0), self.size - 1)
        self._pos = (x, y)
        self._t += 1
        reward = float(self._pos == self.goal)
        truncated = self._t >= self.horizon
        return self._observation(), reward, False, truncated, {"task_id": self._task_id}


#: gymnasium id -> (entry point, kwargs, episode length) of every family defined here. The entry
#: points are strings so that the specs serialise (``EnvSpec.to_json``, Minari datasets).
FAMILY_SPECS: dict[str, tuple[str, dict[str, Any], int]] = {
    "ringrl/bandit-v0": ("envs.families:BernoulliBandit", {}, 1),
    "ringrl/darkroom-v0": ("envs.families:DarkRoom", {"size": 9}, DARKROOM_HORIZON),
    "ringrl/darkroom_hard-v0": ("envs.families:DarkRoom", {"size": 17}, DARKROOM_HORIZON),
}
