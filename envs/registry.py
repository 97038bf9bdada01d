"""Task ids, ExoRL names, and :func:`make`.

Task ids are gymnasium ids:

* MuJoCo locomotion (D4RL's maintained equivalents): ``HalfCheetah-v5``, ``Hopper-v5``,
  ``Walker2d-v5``, ``Ant-v5`` (any other gymnasium id works too);
* dm_control suite tasks through shimmy: ``dm_control/<domain>-<task>-v0``;
* the URLB/ExoRL tasks missing from the suite (see :mod:`envs.custom`), registered here:
  ``ringrl/quadruped-stand-v0``, ``ringrl/quadruped-jump-v0``,
  ``ringrl/cheetah-run_backward-v0``, ``ringrl/jaco-reach_{top,bottom}_{left,right}-v0``, and
  ``ringrl/cartpole-swingup_ar8-v0`` (cartpole swingup deciding every 8 physics steps);
* the task families for in-context RL (see :mod:`envs.families`), registered here:
  ``ringrl/bandit-v0``, ``ringrl/darkroom-v0``, ``ringrl/darkroom_hard-v0`` (:data:`TASK_FAMILIES`);
* ``"package.module:EnvId-v0"``: ``package.module`` is imported first (it registers
  ``EnvId-v0``; gymnasium's convention), so users bring their own environments and task families.

``gymnasium.make`` on a ``dm_control/`` or ``ringrl/`` id gives shimmy's raw environment (dict
observations, actuator-range actions); :func:`make` adds the flattening wrapper.

ExoRL's own task names (``walker_stand``, ``jaco_reach_top_left``...) are accepted wherever a
task is expected and map to ids through :data:`EXORL_TASKS` / :func:`exorl_task`.
"""

from __future__ import annotations

import functools
import importlib

import gymnasium
import numpy as np
import shimmy  # noqa: F401  (registers the dm_control/* ids)
from shimmy.dm_control_compatibility import DmControlCompatibilityV0

from envs.custom import CUSTOM_BUILDERS, CUSTOM_EPISODE_STEPS
from envs.dmc import DmControlEnv, is_dm_control_id, load_dm_env
from envs.families import FAMILY_SPECS
from envs.wrappers import MujocoEnv

#: ExoRL task name -> gymnasium id.
EXORL_TASKS: dict[str, str] = {
    "walker_stand": "dm_control/walker-stand-v0",
    "walker_walk": "dm_control/walker-walk-v0",
    "walker_run": "dm_control/walker-run-v0",
    "cheetah_run": "dm_control/cheetah-run-v0",
    "cheetah_run_backward": "ringrl/cheetah-run_backward-v0",
    "quadruped_walk": "dm_control/quadruped-walk-v0",
    "quadruped_run": "dm_control/quadruped-run-v0",
    "quadruped_stand": "ringrl/quadruped-stand-v0",
    "quadruped_jump": "ringrl/quadruped-jump-v0",
    "cartpole_balance": "dm_control/cartpole-balance-v0",
    "cartpole_balance_sparse": "dm_control/cartpole-balance_sparse-v0",
    "cartpole_swingup": "dm_control/cartpole-swingup-v0",
    "cartpole_swingup_sparse": "dm_control/cartpole-swingup_sparse-v0",
    "jaco_reach_top_left": "ringrl/jaco-reach_top_left-v0",
    "jaco_reach_top_right": "ringrl/jaco-reach_top_right-v0",
    "jaco_reach_bottom_left": "ringrl/jaco-reach_bottom_left-v0",
    "jaco_reach_bottom_right": "ringrl/jaco-reach_bottom_right-v0",
}

#: D4RL's MuJoCo locomotion tasks as gymnasium v5 ids.
MUJOCO_TASKS: tuple[str, ...] = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5")

#: The project's own (URLB) dm_control-based ids.
CUSTOM_TASKS: tuple[str, ...] = tuple(CUSTOM_BUILDERS)

#: The project's own task families (in-context RL): bandit, Dark Room 9x9, Dark Room 17x17.
TASK_FAMILIES: tuple[str, ...] = tuple(FAMILY_SPECS)

JACO_EPISODE_STEPS = 250
DEFAULT_EPISODE_STEPS = 1000


def _make_custom(task_id: str, **render_kwargs: object) -> DmControlCompatibilityV0:
    return DmControlCompatibilityV0(load_dm_env(task_id), **render_kwargs)


def _register_custom_tasks() -> None:
    for task_id in CUSTOM_BUILDERS:
        if task_id not in gymnasium.registry:
            gymnasium.register(task_id, entry_point=functools.partial(_make_custom, task_id))
    for task_id, (entry_point, kwargs, steps) in FAMILY_SPECS.items():
        # The bandit's one pull terminates its episode: a TimeLimit(1) would also flag it as
        # truncated, so it gets none (max_episode_steps() still says 1). Dark Room truncates
        # itself after 20 steps; its TimeLimit(20) agrees.
        if task_id not in gymnasium.registry:
            gymnasium.register(
                task_id,
                entry_point=entry_point,
                kwargs=kwargs,
                max_episode_steps=None if steps == 1 else steps,
            )


_register_custom_tasks()


def list_tasks() -> list[str]:
    """The project's benchmark tasks: ExoRL's (as ids) then the MuJoCo locomotion ids."""
    return list(dict.fromkeys([*EXORL_TASKS.values(), *MUJOCO_TASKS]))


#: Same as :func:`list_tasks`, as a tuple.
TASKS: tuple[str, ...] = tuple(list_tasks())


def exorl_task(name: str) -> str:
    """ExoRL task name -> gymnasium id (``"walker_stand"`` -> ``"dm_control/walker-stand-v0"``)."""
    if name not in EXORL_TASKS:
        raise ValueError(f"unknown ExoRL task {name!r}; known: {sorted(EXORL_TASKS)}")
    return EXORL_TASKS[name]


def _import_env_module(task: str) -> str:
    """Imports ``package.module`` of ``"package.module:EnvId-v0"``; returns ``task`` once
    ``EnvId-v0`` is registered (gymnasium's own ``module:id`` convention)."""
    module, _, env_id = task.partition(":")
    if not module or not env_id or ":" in env_id:
        raise ValueError(f"task {task!r}: expected 'package.module:EnvId-v0'")
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ValueError(
            f"task {task!r}: cannot import module {module!r} (it should register {env_id!r} "
            f"with gymnasium.register): {type(e).__name__}: {e}"
        ) from e
    if env_id not in gymnasium.registry:
        raise ValueError(
            f"task {task!r}: importing {module!r} did not register {env_id!r} with gymnasium"
        )
    return task


def resolve(task: str) -> str:
    """Returns the gymnasium id for ``task`` (a gymnasium id or an ExoRL name).

    ``"package.module:EnvId-v0"`` imports ``package.module`` first and is returned as given (so
    that it stays usable in another process: ``gymnasium.make`` imports the module again).

    Raises:
        ValueError: if ``task`` is neither registered with gymnasium nor an ExoRL name, or its
            module cannot be imported or registers no such id.
    """
    if task in EXORL_TASKS:
        return EXORL_TASKS[task]
    if task in gymnasium.registry:
        return task
    if ":" in task:
        return _import_env_module(task)
    raise ValueError(
        f"unknown task {task!r}: not a registered gymnasium id nor an ExoRL name; "
        f"project tasks: {list_tasks()}"
    )


def is_dm_control(task: str) -> bool:
    """True if ``task`` (id or ExoRL name) is a dm_control task (suite or URLB custom)."""
    task_id = EXORL_TASKS.get(task, task)
    return is_dm_control_id(task_id)


def _spec(task_id: str) -> gymnasium.envs.registration.EnvSpec:
    """The registered spec of a resolved id (``"module:EnvId-v0"``: of ``EnvId-v0``)."""
    return gymnasium.spec(task_id.rpartition(":")[2])


def is_task_family(task: str) -> bool:
    """True for the project's task families (:data:`TASK_FAMILIES`) and for any other id whose
    environment class declares ``num_tasks`` (a user's task family)."""
    task_id = resolve(task)
    if task_id in FAMILY_SPECS:
        return True
    if is_dm_control_id(task_id):
        return False
    entry = _spec(task_id).entry_point
    if isinstance(entry, str):
        try:
            entry = gymnasium.envs.registration.load_env_creator(entry)
        except (ImportError, AttributeError, ValueError):
            return False
    return isinstance(getattr(entry, "num_tasks", None), int)


def max_episode_steps(task: str) -> int:
    """Episode length: 250 for jaco, 125 for cartpole swingup at action repeat 8, 1000 for other
    dm_control tasks and MuJoCo locomotion.

    Other gymnasium ids use their registered ``max_episode_steps`` (the bandit 1, Dark Room 20).
    """
    task_id = resolve(task)
    if task_id in FAMILY_SPECS:
        return FAMILY_SPECS[task_id][2]
    if task_id.startswith("ringrl/jaco-"):
        return JACO_EPISODE_STEPS
    if task_id in CUSTOM_EPISODE_STEPS:
        return CUSTOM_EPISODE_STEPS[task_id]
    if is_dm_control_id(task_id):
        return DEFAULT_EPISODE_STEPS
    steps = _spec(task_id).max_episode_steps
    return DEFAULT_EPISODE_STEPS if steps is None else int(steps)


def make(task: str, seed: int | None = None) -> gymnasium.Env:
    """Builds ``task`` (gymnasium id or ExoRL name) with flat float32 observations.

    ``seed`` seeds the action space and the first ``reset()`` that is called without a seed
    (later resets continue the environment's random stream, as in gymnasium).

    Returns an :class:`envs.dmc.DmControlEnv` for dm_control tasks (observation dict flattened
    in dm_control's key order, actions in ``[-1, 1]`` rescaled to the actuator range) and an
    :class:`envs.wrappers.MujocoEnv` otherwise. Both expose ``get_physics_state()`` /
    ``set_physics_state(state)`` and put the post-reset / post-step state in
    ``info["physics"]`` (dm_control: ``physics.get_state()``; MuJoCo: ``concat(qpos, qvel)``).
    Other gymnasium envs with a ``Box`` observation space (the task families, a user's
    ``"package.module:EnvId-v0"``) get the same float32 wrapper, without physics; reset options
    (``{"task_id": i}``) pass through to the environment.
    """
    task_id = resolve(task)
    env = gymnasium.make(task_id, disable_env_checker=True)
    if is_dm_control_id(task_id):
        return DmControlEnv(env, seed=seed)
    if not isinstance(env.observation_space, gymnasium.spaces.Box):
        raise ValueError(f"{task_id!r} has a non-Box observation space: {env.observation_space}")
    return MujocoEnv(env, seed=seed)


def physics_state(env: gymnasium.Env) -> np.ndarray | None:
    """``physics.get_state()`` (flat float64) of a dm_control env made by :func:`make`, else None.

    Also accepts a bare shimmy dm_control env. Returns None for non-dm_control envs.
    """
    current = env
    while True:
        if isinstance(current, DmControlEnv):
            return current.get_physics_state()
        if not isinstance(current, gymnasium.Wrapper):
            break
        current = current.env
    dm = getattr(env.unwrapped, "_env", None)
    physics = getattr(dm, "physics", None)
    return None if physics is None else np.array(physics.get_state(), dtype=np.float64)
