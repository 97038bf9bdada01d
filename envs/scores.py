"""Normalised scores: D4RL's for MuJoCo locomotion, raw returns for dm_control tasks."""

from __future__ import annotations

import numpy as np

from envs.registry import EXORL_TASKS, MUJOCO_TASKS, is_dm_control

#: D4RL reference returns (random, expert) per locomotion environment.
D4RL_REFERENCE: dict[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}

_D4RL_DATASETS = ("random", "medium", "medium-replay", "medium-expert", "expert", "full-replay")


def _d4rl_env(name: str) -> str | None:
    """``"Hopper-v5"`` / ``"hopper-medium-replay-v2"`` -> ``"hopper"``; None otherwise."""
    env, _, rest = name.partition("-")
    env = env.lower()
    if env not in D4RL_REFERENCE or not rest:
        return None
    version_ok = lambda s: s[:1] == "v" and s[1:].isdigit()
    if version_ok(rest):  # gymnasium id: HalfCheetah-v5
        return env
    dataset, _, version = rest.rpartition("-")
    return env if dataset in _D4RL_DATASETS and version_ok(version) else None


def _known_names() -> list[str]:
    datasets = [f"{env}-<{'|'.join(_D4RL_DATASETS)}>-v2" for env in D4RL_REFERENCE]
    return [*MUJOCO_TASKS, *datasets, "dm_control/<domain>-<task>-v0", *EXORL_TASKS]


def normalized_score(name: str, raw_return: float | np.ndarray) -> float | np.ndarray:
    """Maps a return to the benchmark's normalised score.

    MuJoCo locomotion (``name`` a gymnasium id like ``"Hopper-v5"`` or a D4RL dataset name like
    ``"hopper-medium-v2"``): ``100 * (R - random) / (expert - random)`` with D4RL's reference
    returns. dm_control tasks (suite ids, ``ringrl/...`` ids, ExoRL names): ``R`` unchanged.
    Scalars give a float, arrays an array of the same shape.

    Raises:
        ValueError: for an unknown ``name`` (the message lists the accepted names).
    """
    env = _d4rl_env(name)
    ret = np.asarray(raw_return, dtype=np.float64)
    if env is not None:
        random, expert = D4RL_REFERENCE[env]
        score = 100.0 * (ret - random) / (expert - random)
    elif is_dm_control(name):
        score = ret
    else:
        raise ValueError(f"no normalised score for {name!r}; known: {_known_names()}")
    return float(score) if score.ndim == 0 else score
