"""dm_control tasks as gymnasium environments with flat float32 observations and physics access.

Every dm_control task (the suite through shimmy's ``"dm_control/<domain>-<task>-v0"`` ids, and
the URLB tasks of :mod:`envs.custom` under ``"ringrl/..."`` ids) is wrapped in
:class:`DmControlEnv`, which reproduces ExoRL's ``states`` pipeline:

* observation: the dm_control observation ``OrderedDict`` flattened in its own key order
  (each value ``ravel()``-ed, then concatenated), cast to float32: exactly dm_control's
  ``flat_observation=True`` / URLB's ``FlattenJacoObservationWrapper`` followed by ExoRL's
  ``ObservationDTypeWrapper(np.float32)``;
* action: ``Box(-1, 1)`` float32, affinely rescaled to the task's actuator range, as ExoRL's
  ``action_scale.Wrapper(minimum=-1, maximum=1)`` does (the identity for walker, cheetah and
  cartpole; it matters for quadruped and jaco, whose ExoRL actions live in ``[-1, 1]``);
* physics: ``info["physics"]`` after ``reset`` and after every ``step`` holds
  ``physics.get_state()`` (flat float64: qpos, qvel, act) of the state the returned observation
  and reward were computed from, i.e. the *post-step* state, which is what ExoRL stores in its
  ``physics`` array and what :func:`envs.relabel_rewards` expects. The same vector is available
  as :meth:`DmControlEnv.get_physics_state` and can be restored with
  :meth:`DmControlEnv.set_physics_state`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dm_env
import gymnasium
import numpy as np
from dm_control import suite

from envs.custom import CUSTOM_BUILDERS
from envs.wrappers import SeededWrapper

DMC_PREFIX = "dm_control/"


def suite_domain_task(task_id: str) -> tuple[str, str] | None:
    """``"dm_control/walker-run-v0"`` -> ``("walker", "run")``; None if not a suite task."""
    if not task_id.startswith(DMC_PREFIX):
        return None
    parts = task_id[len(DMC_PREFIX) :].split("-")
    if len(parts) != 3 or (parts[0], parts[1]) not in suite.ALL_TASKS:
        return None
    return parts[0], parts[1]


def is_dm_control_id(task_id: str) -> bool:
    """True for dm_control suite ids and the project's own dm_control-based ids."""
    return suite_domain_task(task_id) is not None or task_id in CUSTOM_BUILDERS


def load_dm_env(task_id: str, seed: int | None = None) -> dm_env.Environment:
    """Builds the raw dm_control environment (``control`` or ``composer``) for a gymnasium id."""
    if task_id in CUSTOM_BUILDERS:
        return CUSTOM_BUILDERS[task_id](seed)
    domain_task = suite_domain_task(task_id)
    if domain_task is None:
        raise ValueError(f"{task_id!r} is not a dm_control task id")
    return suite.load(*domain_task, task_kwargs={"random": seed})


def flatten_observation(observation: Mapping[str, Any], keys: Sequence[str]) -> np.ndarray:
    """Concatenates ``observation[k].ravel()`` for ``k`` in ``keys``, as float32."""
    parts = [np.asarray(observation[key], dtype=np.float64).ravel() for key in keys]
    return np.concatenate(parts).astype(np.float32)


class DmControlEnv(SeededWrapper):
    """Flat float32 observations, ``[-1, 1]`` actions and physics state for a dm_control env.

    Wraps a shimmy ``DmControlCompatibilityV0`` environment (possibly inside gymnasium's
    ``make`` wrappers). ``physics`` and ``task`` expose the underlying dm_control objects.
    """

    def __init__(self, env: gymnasium.Env, seed: int | None = None) -> None:
        super().__init__(env, seed=None)
        self._dm_env: dm_env.Environment = env.unwrapped._env
        obs_spec = self._dm_env.observation_spec()
        self._keys = tuple(obs_spec.keys())
        dim = sum(int(np.prod(spec.shape)) for spec in obs_spec.values())
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        act_spec = self._dm_env.action_spec()
        self._act_low = np.broadcast_to(act_spec.minimum, act_spec.shape).astype(np.float64)
        self._act_high = np.broadcast_to(act_spec.maximum, act_spec.shape).astype(np.float64)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, act_spec.shape, np.float32)
        self.seed_next_reset(seed)

    @property
    def physics(self) -> Any:
        """The dm_control ``Physics`` of the wrapped environment."""
        return self._dm_env.physics

    @property
    def task(self) -> Any:
        """The dm_control task (``get_reward(physics)``, ``get_observation(physics)``...)."""
        return self._dm_env.task

    @property
    def dm_env(self) -> dm_env.Environment:
        """The raw dm_control environment."""
        return self._dm_env

    def get_physics_state(self) -> np.ndarray:
        """``physics.get_state()``: flat float64 ``[qpos, qvel, act]`` (a copy)."""
        return np.array(self.physics.get_state(), dtype=np.float64)

    def set_physics_state(self, state: np.ndarray) -> None:
        """Restores a state from :meth:`get_physics_state` (``reset_context`` + ``set_state``).

        Derived quantities (positions, sensors) are recomputed; no observation is returned.
        """
        with self.physics.reset_context():
            self.physics.set_state(np.asarray(state, dtype=np.float64))

    def _scale_action(self, action: np.ndarray) -> np.ndarray:
        action = np.asarray(action, dtype=np.float64)
        return self._act_low + (action + 1.0) * 0.5 * (self._act_high - self._act_low)

    def _convert(self, obs: Mapping[str, Any], info: dict[str, Any]) -> np.ndarray:
        info["physics"] = self.get_physics_state()
        return flatten_observation(obs, self._keys)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Resets; ``info["physics"]`` holds the initial physics state."""
        obs, info = self.env.reset(seed=self.take_seed(seed), options=options)
        return self._convert(obs, info), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Steps with an action in ``[-1, 1]``; ``info["physics"]`` is the post-step state."""
        obs, reward, terminated, truncated, info = self.env.step(self._scale_action(action))
        return self._convert(obs, info), float(reward), terminated, truncated, info
