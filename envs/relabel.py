"""Reward relabelling from stored physics states, as ExoRL does it.

ExoRL's ``relabel_episode`` (and ours): for every stored state ``s``::

    with physics.reset_context():
        physics.set_state(s)
    reward = task.get_reward(physics)

``reset_context`` runs ``mj_forward``, so every position- and velocity-dependent quantity the
rewards read (heights, orientations, sensor velocities, site positions) is recomputed from ``s``.
dm_control computes the reward of step ``t`` after the physics step, from the resulting state, so
``physics_states[t]`` must be the *post-step* state (``info["physics"]`` of :func:`envs.make`'s
envs). Entry 0 of an ExoRL episode (the reset state) is relabelled too, like ExoRL does.

Note (faithful to ExoRL): the jaco reach reward is the distance from the hand to the *brick*,
whose position is part of the physics state, so jaco states keep the brick where the collecting
task put it; relabelling them for another corner does not move the brick.
"""

from __future__ import annotations

import functools

import dm_env
import numpy as np

from envs.dmc import is_dm_control_id, load_dm_env
from envs.registry import resolve


@functools.lru_cache(maxsize=16)
def _reward_env(task_id: str) -> dm_env.Environment:
    """A raw dm_control env per task, built once and reused for relabelling."""
    return load_dm_env(task_id, seed=0)


def _check_inputs(
    task_id: str, states: np.ndarray, expected: int, actions: np.ndarray | None
) -> None:
    if states.ndim != 2:
        raise ValueError(f"physics_states must be 2-D [T, n], got shape {states.shape}")
    if states.shape[1] != expected:
        raise ValueError(
            f"physics state dimension mismatch for {task_id!r}: expected {expected}, "
            f"got {states.shape[1]}"
        )
    if actions is not None and len(actions) != len(states):
        raise ValueError(f"{len(actions)} actions for {len(states)} physics states")


def relabel_rewards(
    task: str, physics_states: np.ndarray, actions: np.ndarray | None = None
) -> np.ndarray:
    """Recomputes each step's reward of dm_control ``task`` from ``physics_states`` [T, n].

    ``task`` is a dm_control id (``"dm_control/walker-stand-v0"``, ``"ringrl/..."``) or an ExoRL
    name; the states may come from any task of the same domain (same model). ``actions`` is
    accepted for API symmetry and only length-checked: none of these rewards depends on actions.

    Returns:
        float32 array of shape [T].

    Raises:
        ValueError: unknown or non-dm_control task, non-2-D states, or a state dimension that
            does not match the task's physics (the message gives expected vs got).
    """
    task_id = resolve(task)
    if not is_dm_control_id(task_id):
        raise ValueError(f"reward relabelling needs a dm_control task, got {task!r}")
    env = _reward_env(task_id)
    physics, dm_task = env.physics, env.task
    states = np.asarray(physics_states, dtype=np.float64)
    _check_inputs(task_id, states, physics.get_state().size, actions)
    rewards = np.empty(len(states), dtype=np.float32)
    for i, state in enumerate(states):
        with physics.reset_context():
            physics.set_state(state)
        rewards[i] = dm_task.get_reward(physics)
    return rewards
