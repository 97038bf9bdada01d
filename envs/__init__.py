"""Environments: gymnasium MuJoCo, dm_control suite and URLB/ExoRL tasks, flat float32 obs.

Public API:

* :func:`make` ``(task, seed=None) -> gymnasium.Env`` (flat float32 observations; physics state
  via ``env.get_physics_state()`` / ``env.set_physics_state(s)`` / ``info["physics"]``);
* :func:`physics_state` ``(env) -> np.ndarray | None``;
* :func:`normalized_score` ``(name, raw_return)``;
* :func:`relabel_rewards` ``(task, physics_states, actions=None) -> np.ndarray[T]``;
* :func:`max_episode_steps`, :func:`is_dm_control`, :func:`exorl_task`, :func:`resolve`,
  :func:`list_tasks`, :data:`TASKS`, :data:`EXORL_TASKS`, :data:`MUJOCO_TASKS`,
  :data:`CUSTOM_TASKS`;
* task families for in-context RL (:mod:`envs.families`): :data:`TASK_FAMILIES`
  (``ringrl/bandit-v0``, ``ringrl/darkroom-v0``, ``ringrl/darkroom_hard-v0``),
  :func:`is_task_family`; ``env.reset(options={"task_id": i})`` selects an instance and
  ``env.unwrapped.num_tasks`` counts them.
"""

import warnings

# dm_control imports glfw at import time; on a machine without a display that only means "no
# on-screen rendering" (we never render on screen), so keep its warning out of users' logs.
warnings.filterwarnings("ignore", message=".*DISPLAY environment variable is missing")

from envs.registry import (  # noqa: E402
    CUSTOM_TASKS,
    EXORL_TASKS,
    MUJOCO_TASKS,
    TASK_FAMILIES,
    TASKS,
    exorl_task,
    is_dm_control,
    is_task_family,
    list_tasks,
    make,
    max_episode_steps,
    physics_state,
    resolve,
)
from envs.relabel import relabel_rewards  # noqa: E402
from envs.scores import D4RL_REFERENCE, normalized_score  # noqa: E402

__all__ = [
    "CUSTOM_TASKS",
    "D4RL_REFERENCE",
    "EXORL_TASKS",
    "MUJOCO_TASKS",
    "TASKS",
    "TASK_FAMILIES",
    "exorl_task",
    "is_dm_control",
    "is_task_family",
    "list_tasks",
    "make",
    "max_episode_steps",
    "normalized_score",
    "physics_state",
    "relabel_rewards",
    "resolve",
]
