"""``ringrl eval RUN_DIR_OR_CHECKPOINT``: in-context evaluation by rollout.

Protocol (Agentic Transformer): a *trial* is ``K`` successive episodes in one environment, each
conditioned on the agent's own previous episodes of that trial (relabelled to one fixed target
return, the dataset's best by default), by the one context rule (:mod:`ringrl.context`: whole
episodes, the most recent that fit, ``--order sorted`` by return as in training or ``played``).
``T`` trials run in ``E`` parallel environments of a ``gymnasium.vector.SyncVectorEnv``; trial
``i`` runs in environment ``i % E``, fixed in advance, so every environment runs a fixed quota of
episodes and short episodes cannot crowd out long ones (the short-episode bias of "first N
episodes to finish").

Seeds: episode ``k`` of trial ``i`` is reset with seed ``seed + i * K + k``, so no reset seed
repeats within an evaluation; ``ringrl compare`` gives every (method, training seed) its own
block of seeds (:func:`seed_block`). ``eval.json`` lists them. The baselines -- uniform-random
actions and the best constant action of a small grid (chosen on separate selection seeds) --
run on the same reset seeds as the agent.

Acting: with a context that holds a whole episode the agent decodes incrementally from a
KV cache (:class:`ringrl.policies.IncrementalPolicy`; sharded over ``"seq"`` with
``--seq-shards``), otherwise (DT, BC: windows of a few steps) it recomputes its window at
every step (:class:`ringrl.policies.RecomputePolicy`). Both build the same context. Outputs in
the run directory: ``eval.json`` and ``eval_curve.png`` (return against in-context episode index,
mean and 95% bootstrap interval over trials).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ringrl.policies import (
    ConstantPolicy,
    PairedPolicy,
    Policy,
    RandomPolicy,
    RecomputePolicy,
    make_policy,
)

SEED_STRIDE = 10_000  # reset seeds per (method, training seed) block in a comparison
CONSTANT_GRID = (-1.0, -0.5, 0.0, 0.5, 1.0)  # every action dimension set to one value

# ---- rollouts -----------------------------------------------------------------------------------


def reset_seeds(seed: int, trials: int, episodes: int) -> np.ndarray:
    """``[trials, episodes]`` reset seeds, all distinct: ``seed + trial * episodes + k``."""
    return seed + np.arange(trials * episodes, dtype=np.int64).reshape(trials, episodes)


class TaskIdsError(ValueError):
    """A ``--task-ids`` spec that names no instances (a user mistake, one line)."""


def parse_task_ids(spec: str | None, report: dict) -> list[int] | None:
    """Task ids from ``--task-ids``: ``test`` / ``train`` (the split stored at training),
    ``data`` (the ids the training episodes were played on), or a list such as ``8000-8009,12``.
    ``None`` is the stored test split when there is one (else no task selection at all)."""
    if spec is None:
        ids = report.get("test_task_ids")
        return None if ids is None else [int(i) for i in ids]
    named = {"test": "test_task_ids", "train": "train_task_ids", "data": "data_task_ids"}
    if spec in named:
        if named[spec] not in report:
            raise TaskIdsError(f"--task-ids {spec}: the run's data.json stores no {named[spec]}")
        return [int(i) for i in report[named[spec]]]
    ids: list[int] = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            ids.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise TaskIdsError(
            f"--task-ids {spec!r}: expected test, train, data or ids such as 8000-8009,12"
        ) from None
    if not ids:
        raise TaskIdsError(f"--task-ids {spec!r}: no ids")
    return ids


def spread_task_ids(ids: Sequence[int] | None, trials: int) -> list[int] | None:
    """At most ``trials`` of ``ids``, evenly spread over the list (all of them if fewer)."""
    if ids is None or len(ids) <= trials:
        return None if ids is None else list(ids)
    pick = np.linspace(0, len(ids) - 1, trials).round().astype(int)
    return [int(ids[i]) for i in pick]


def trial_task_ids(task_ids: Sequence[int] | None, trials: int) -> list[int] | None:
    """The instance of every trial: ``task_ids[i % len(task_ids)]``."""
    if task_ids is None:
        return None
    return [int(task_ids[i % len(task_ids)]) for i in range(trials)]


def seed_block(method: int, train_seed: int) -> int:
    """First reset seed of the evaluation of (method index, training seed) in a comparison.

    Blocks of :data:`SEED_STRIDE` seeds never overlap: no reset seed is shared by two trials,
    two training seeds or two methods. Collection uses seeds below the first block.
    """
    return SEED_STRIDE * (1000 + 100 * method + train_seed)


def rollout(
    task: str,
    policy: Policy,
    *,
    trials: int,
    episodes: int,
    num_envs: int,
    seed: int = 0,
    task_ids: Sequence[int] | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, int]:
    """``(returns [trials, episodes], env steps)``; trial ``i`` runs in env ``i % num_envs``,
    its episode ``k`` reset with ``reset_seeds(seed, trials, episodes)[i, k]``.

    ``task_ids`` (task families): trial ``i`` plays instance ``task_ids[i % len(task_ids)]``,
    selected at its first reset (``options={"task_id": ...}``) and kept for its later episodes.
    Policies return actions as the agents do: continuous ones are clipped to the action box;
    for a ``Discrete`` space the one-hot rows become integers.
    """
    import gymnasium as gym

    import envs

    seeds = reset_seeds(seed, trials, episodes)
    E = min(num_envs, trials)
    pool = [envs.make(task) for _ in range(E)]
    space = pool[0].action_space
    discrete = isinstance(space, gym.spaces.Discrete)

    def to_env(a: np.ndarray):
        return int(np.argmax(a)) if discrete else np.clip(a, space.low, space.high)

    def reset(e: int, first: bool) -> np.ndarray:
        options = None
        if first and task_ids is not None:
            options = {"task_id": int(task_ids[trial[e] % len(task_ids)])}
        obs_e, _ = pool[e].reset(seed=int(seeds[trial[e], episode[e]]), options=options)
        return np.asarray(obs_e, np.float32)

    queue = [list(range(e, trials, E)) for e in range(E)]  # each env's trials, in order
    trial = np.array([q.pop(0) for q in queue])
    episode = np.zeros(E, int)
    returns = np.zeros((trials, episodes))
    steps = 0
    active = np.ones(E, bool)
    obs = np.stack([reset(e, True) for e in range(E)])
    policy.start_trial(active.copy())
    bar = _bar(progress, trials * episodes)
    rew, done = np.zeros(E, np.float32), np.zeros(E, bool)
    while active.any():
        act = np.asarray(policy.act(obs, active), np.float32)
        rew[:], done[:] = 0.0, False
        obs = obs.copy()  # a new array: policies may keep the one they acted on
        for e in np.flatnonzero(active):
            obs_e, r, term, trunc, _ = pool[e].step(to_env(act[e]))
            obs[e], rew[e], done[e] = obs_e, r, term or trunc
        returns[trial[active], episode[active]] += rew[active]
        steps += int(active.sum())
        policy.record(act, rew.copy(), done.copy(), active.copy())
        new_trial = np.zeros(E, bool)
        for e in np.flatnonzero(done):
            bar is not None and bar.update(1)
            episode[e] += 1
            if episode[e] == episodes:  # trial over: next one of this env, or idle
                if queue[e]:
                    trial[e], episode[e], new_trial[e] = queue[e].pop(0), 0, True
                else:
                    active[e] = False
            if active[e]:
                obs[e] = reset(e, bool(new_trial[e]))
        if new_trial.any():
            policy.start_trial(new_trial)
    for env in pool:
        env.close()
    if bar is not None:
        bar.close()
    return returns, steps


def _bar(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="episodes", unit="ep", dynamic_ncols=True, file=sys.stderr)


def baselines(
    task: str,
    act_dim: int,
    *,
    trials: int,
    episodes: int,
    num_envs: int,
    seed: int,
    discrete: bool = False,
    task_ids: Sequence[int] | None = None,
) -> dict:
    """Uniform-random and best-constant-action returns ``[trials, episodes]`` on the agent's
    reset seeds (and task instances). The constant is chosen from :data:`CONSTANT_GRID` (every
    action, for discrete actions) by the mean return of two episodes per value on selection
    seeds just below ``seed`` (never evaluation seeds), on the first trial's instance."""
    E = min(num_envs, trials)
    kw = dict(trials=trials, episodes=episodes, num_envs=num_envs, seed=seed, task_ids=task_ids)
    random_returns, _ = rollout(task, RandomPolicy(E, act_dim, seed, discrete), **kw)
    grid = np.eye(act_dim) if discrete else [np.full(act_dim, c) for c in CONSTANT_GRID]
    names = list(range(act_dim)) if discrete else list(CONSTANT_GRID)
    selection = {}
    for j, (name, action) in enumerate(zip(names, grid, strict=True)):
        r, _ = rollout(
            task,
            ConstantPolicy(1, action),
            trials=1,
            episodes=2,
            num_envs=1,
            seed=seed - 2 * (j + 1),
            task_ids=None if task_ids is None else list(task_ids)[:1],
        )
        selection[name] = float(r.mean())
    best = max(selection, key=selection.get)
    const = grid[names.index(best)]
    const_returns, _ = rollout(task, ConstantPolicy(E, const), **kw)
    return {
        "random": random_returns,
        "constant": const_returns,
        "constant_action": best,
        "constant_selection": selection,
    }


# ---- loading a trained agent --------------------------------------------------------------------


def find_run(path: str | Path) -> tuple[Path, int | None]:
    """``(run_dir, step)`` from a run directory or one of its checkpoint step directories."""
    p = Path(path).absolute()
    if (p / "config.yaml").exists():
        return p, None
    if p.name.isdigit() and (p.parent.parent / "config.yaml").exists():
        return p.parent.parent, int(p.name)
    raise FileNotFoundError(f"{path}: neither a run directory (config.yaml) nor a checkpoint")


def load_agent(path: str | Path, *, data_path: str | None = None, dataset=None):
    """``(agent, cfg, dataset, step)`` restored from a run directory or checkpoint.

    Works from any working directory, and after the run directory moved with its dataset:
    without ``data_path``, the config's dataset path is tried as given, relative to the run
    directory, then the absolute and run-relative paths stored in ``data.json`` at training
    (:func:`ringrl.rundir.resolve_dataset`); none existing is a
    :class:`ringrl.rundir.DatasetNotFound` naming every path tried. ``dataset``: the run's
    dataset, already loaded (nothing is read then).
    """
    from flax import nnx

    from ringrl.checkpoint import Checkpointer
    from ringrl.config import load_config
    from ringrl.data import DatasetError
    from ringrl.parallel import make_mesh
    from ringrl.rundir import DatasetNotFound, read_data_report, resolve_dataset
    from ringrl.train import init_state, load_episodes

    run_dir, step = find_run(path)
    cfg = load_config(run_dir / "config.yaml")
    report = read_data_report(run_dir)
    if dataset is not None:
        ds = dataset
    elif data_path:
        cfg.data.path = data_path
        ds = load_episodes(cfg)
    else:
        try:
            cfg.data.path = resolve_dataset(run_dir, cfg.data.path, report)
            ds = load_episodes(cfg)
        except DatasetNotFound as missing:
            try:  # no such file: perhaps a Minari dataset id
                ds = load_episodes(cfg)
            except DatasetError:
                raise missing from None
    stored = (report.get("obs_dim"), report.get("act_dim"))
    if None not in stored and stored != (ds.obs_dim, ds.act_dim):
        raise ValueError(
            f"{cfg.data.path} has observations/actions of sizes {ds.obs_dim}/{ds.act_dim}; "
            f"run {run_dir} was trained on {stored[0]}/{stored[1]}"
        )
    mesh = make_mesh(1, 1)
    graphdef, rng_state, state = init_state(cfg, ds.obs_dim, ds.act_dim, mesh, discrete=ds.discrete)
    ckpt = Checkpointer(run_dir / "checkpoints")
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint")
    pure, _ = ckpt.restore(step, nnx.to_pure_dict(state))
    ckpt.close()
    nnx.replace_by_pure_dict(state, pure)
    agent, _ = nnx.merge(graphdef, rng_state, state)
    return agent, cfg, ds, step


def paired(run: str, episodes: int, order: str = "sorted", seed: int = 7) -> dict:
    """Largest action difference, cache against recompute, on one trial's shared history
    (the exact check: free-running returns of a chaotic task drift apart on float rounding)."""
    import envs

    agent, cfg, ds, _ = load_agent(run)
    task = ds.metadata.get("task") or cfg.data.task
    max_steps = int(envs.max_episode_steps(task))
    target = float(ds.returns.max())
    lead, _ = make_policy(agent, 1, target, max_steps, decode="cache", seq_shards=1, order=order)
    agent2, *_ = load_agent(run)
    follow, _ = make_policy(
        agent2, 1, target, max_steps, decode="recompute", seq_shards=1, order=order
    )
    assert isinstance(follow, RecomputePolicy)
    policy = PairedPolicy(lead, follow)
    returns, steps = rollout(task, policy, trials=1, episodes=episodes, num_envs=1, seed=seed)
    return {
        "episodes": episodes,
        "steps": steps,
        "max_abs_action_difference": policy.worst,
        "returns": returns.tolist(),
        "prefills": lead.prefills,
    }


# ---- results -------------------------------------------------------------------------------------


def _curve(returns: np.ndarray) -> tuple[list, list]:
    """Per-episode mean over trials and its 95% bootstrap interval (rows: trials)."""
    from ringrl.stats import interval

    cis = [interval(returns[:, k], n_resamples=2000) for k in range(returns.shape[1])]
    return [round(c["mean"], 3) for c in cis], [[round(x, 3) for x in c["ci95"]] for c in cis]


def summarize(task: str, method: str, returns: np.ndarray, base: dict | None = None) -> dict:
    """The ``eval.json`` numbers for ``returns [trials, episodes]`` and the baselines.

    The headline is the final in-context episode (``final_return``); beside it the mean over a
    trial's episodes and the AT paper's max over them (optimistic: labelled). Intervals here are
    95% bootstrap intervals over trials of one trained model; ``ringrl compare`` puts intervals
    over training seeds on top.
    """
    import envs
    from ringrl.stats import interval

    def norm(x: float) -> float | None:
        try:
            return float(envs.normalized_score(task, x))
        except ValueError:  # a task without reference scores
            return None

    final = interval(returns[:, -1])
    mean = interval(returns.mean(1))
    best = interval(returns.max(1))
    curve, curve_ci = _curve(returns)
    out = {
        "task": task,
        "method": method,
        "trials": int(returns.shape[0]),
        "episodes": int(returns.shape[1]),
        "returns": returns.round(3).tolist(),
        "episode_return_mean": curve,
        "episode_return_ci95": curve_ci,
        "episode_return_std": returns.std(0).round(3).tolist(),
        "final_return_mean": final["mean"],
        "final_return_ci95": final["ci95"],
        "final_return_std": float(returns[:, -1].std()),
        "mean_return_mean": mean["mean"],
        "mean_return_ci95": mean["ci95"],
        "max_return_mean": best["mean"],
        "max_return_note": "AT paper's number: max over the in-context episodes of a trial, "
        "averaged over trials (optimistic; final_return_mean is the honest one)",
        "final_normalized_mean": norm(final["mean"]),
        "max_normalized_mean": norm(best["mean"]),
        "ci_note": "95% percentile-bootstrap intervals over trials of this one trained model",
    }
    if base is not None:
        out.update(baseline_fields(base))
        out["random_normalized_mean"] = norm(out["random_return_mean"])
    return out


def baseline_fields(base: dict) -> dict:
    """The ``eval.json`` numbers of :func:`baselines`' output: means, 95% bootstrap intervals
    over trials and every return of the uniform-random and best-constant policies."""
    from ringrl.stats import interval

    rand, const = base["random"], base["constant"]
    return {
        "random_return_mean": float(rand.mean()),
        "random_return_ci95": interval(rand.mean(1))["ci95"],
        "random_returns": rand.round(3).tolist(),
        "constant_action": base["constant_action"],
        "constant_selection": base["constant_selection"],
        "constant_return_mean": float(const.mean()),
        "constant_return_ci95": interval(const.mean(1))["ci95"],
        "constant_returns": const.round(3).tolist(),
    }


def plot_curve(results: list[dict], path: str | Path, title: str = "") -> None:
    """Return against in-context episode index (mean and 95% interval over trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        mean = np.asarray(r["episode_return_mean"])
        x = np.arange(1, len(mean) + 1)
        ax.plot(x, mean, marker="o", label=r.get("label", r["method"]))
        if "episode_return_ci95" in r:
            lo, hi = np.asarray(r["episode_return_ci95"]).T
            ax.fill_between(x, lo, hi, alpha=0.2)
    if results and "random_return_mean" in results[0]:
        ax.axhline(results[0]["random_return_mean"], color="gray", ls=":", label="random")
        ax.axhline(results[0]["constant_return_mean"], color="gray", ls="-.", label="best constant")
    if results and "target_return" in results[0]:
        ax.axhline(results[0]["target_return"], color="k", ls="--", lw=0.8, label="target")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("episode in context (trial)")
    ax.set_ylabel("return (mean, 95% CI over trials)")
    ax.set_title(title or (results[0]["task"] if results else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_trials(
    agent,
    task: str,
    *,
    trials: int,
    episodes: int,
    num_envs: int,
    target: float,
    seed: int,
    order: str = "sorted",
    decode: str = "auto",
    seq_shards: int = 1,
    task_ids: Sequence[int] | None = None,
    actions: str = "sample",
    progress: bool = False,
) -> tuple[np.ndarray, dict]:
    """An agent's in-context returns ``[trials, episodes]`` and how they were made.

    ``task_ids``: the task-family instances trials cycle through (:func:`rollout`);
    ``actions``: greedy or sampled discrete actions (the generator seeded by ``seed``)."""
    import envs

    max_steps = int(envs.max_episode_steps(task))
    order = agent.FIXED_ORDER or order
    policy, mode = make_policy(
        agent,
        min(num_envs, trials),
        target,
        max_steps,
        decode=decode,
        seq_shards=seq_shards,
        order=order,
        actions=actions,
        seed=seed,
    )
    t0 = time.perf_counter()
    returns, steps = rollout(
        task,
        policy,
        trials=trials,
        episodes=episodes,
        num_envs=num_envs,
        seed=seed,
        task_ids=task_ids,
        progress=progress,
    )
    wall = time.perf_counter() - t0
    info = {
        "decode": mode,
        "order": order,
        "task_ids": trial_task_ids(task_ids, trials),
        "actions": actions if agent.cfg.discrete else "continuous",
        "target_return": float(target),
        "reset_seeds": reset_seeds(seed, trials, episodes).tolist(),
        "context_steps": int(agent.cfg.context_steps),
        "success_return": float(agent.success_return[...]),
        "wall_s": round(wall, 2),
        "env_steps": steps,
        "env_steps_per_s": round(steps / wall, 1),
    }
    return returns, info


def evaluate(
    path: str | Path,
    *,
    episodes: int | None = None,
    trials: int = 10,
    num_envs: int = 5,
    target: float | None = None,
    target_scale: float = 1.0,
    seed: int | None = None,
    order: str = "sorted",
    decode: str = "auto",
    seq_shards: int = 1,
    task: str | None = None,
    data_path: str | None = None,
    out_dir: str | Path | None = None,
    with_baselines: bool = True,
    task_ids: str | Sequence[int] | None = None,
    actions: str = "sample",
    progress: bool = False,
) -> dict:
    """Evaluate a run (see the module docstring); writes ``eval.json`` and ``eval_curve.png``.

    ``episodes`` defaults to 2N for AT (does improvement continue past the training context?)
    and 1 for DT/BC; ``seed`` (the first reset seed) to :func:`seed_block` of the run's
    training seed. ``task_ids`` (task families): a ``--task-ids`` spec or a list; by default the
    held-out (test) instances stored at training, spread over the trials.
    """
    from ringrl.rundir import read_data_report

    agent, cfg, ds, step = load_agent(path, data_path=data_path)
    run_dir, _ = find_run(path)
    if task_ids is None or isinstance(task_ids, str):
        task_ids = parse_task_ids(task_ids, read_data_report(run_dir))
    task_ids = spread_task_ids(task_ids, trials)
    task = task or ds.metadata.get("task") or cfg.data.task
    if not task:
        raise ValueError("the dataset names no task; pass --task")
    kind = cfg.agent.kind
    K = episodes or (2 * cfg.agent.num_trajectories if kind in ("at", "ad") else 1)
    seed = seed_block(0, cfg.train.seed) if seed is None else int(seed)
    best = float(ds.returns.max())
    target = best * target_scale if target is None else float(target)
    returns, info = run_trials(
        agent,
        task,
        trials=trials,
        episodes=K,
        num_envs=num_envs,
        target=target,
        seed=seed,
        order=order,
        decode=decode,
        seq_shards=seq_shards,
        task_ids=task_ids,
        actions=actions,
        progress=progress,
    )
    base = None
    if with_baselines:
        base = baselines(
            task,
            ds.act_dim,
            trials=trials,
            episodes=K,
            num_envs=num_envs,
            seed=seed,
            discrete=ds.discrete,
            task_ids=task_ids,
        )
    result = summarize(task, kind, returns, base)
    result.update(
        info,
        run=cfg.name,
        train_seed=cfg.train.seed,
        num_trajectories=cfg.agent.num_trajectories,
        dataset_best_return=best,
        dataset_mean_return=float(ds.returns.mean()),
        checkpoint_step=step,
    )
    from ringrl.rundir import write_text_atomic

    out = Path(out_dir) if out_dir else run_dir
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "eval.json", json.dumps(result, indent=1))
    plot_curve([result], out / "eval_curve.png", f"{task}: {cfg.name}")
    return result


# ---- CLI --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="run directory, or a checkpoint (<run>/checkpoints/<step>)")
    parser.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="in-context episodes per trial (default: AT 2N, DT/BC 1)",
    )
    parser.add_argument("--trials", type=int, default=10, help="trials (default: %(default)s)")
    parser.add_argument("--envs", type=int, default=5, help="parallel environments")
    parser.add_argument(
        "--target",
        type=float,
        default=None,
        help="target return (default: dataset best x --target-scale)",
    )
    parser.add_argument(
        "--target-scale",
        type=float,
        default=1.0,
        help="multiplies the dataset's best return when no --target is given",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="first reset seed; episode k of trial i uses seed + i*K + k "
        "(default: this training seed's own block)",
    )
    parser.add_argument(
        "--order",
        choices=["sorted", "played"],
        default="sorted",
        help="order of the previous episodes in the context: by return as in training, or as "
        "played (default: %(default)s)",
    )
    parser.add_argument(
        "--decode",
        choices=["auto", "cache", "recompute"],
        default="auto",
        help="KV cache or recompute the window at every step; auto: the cache when the "
        "context holds a whole episode (default: %(default)s)",
    )
    parser.add_argument(
        "--seq-shards",
        type=int,
        default=1,
        help="devices the KV cache is sharded over (ring-style decoding; default: %(default)s)",
    )
    parser.add_argument(
        "--task-ids",
        default=None,
        help="task-family instances the trials play: test, train, data (the ids trained on) or "
        "a list such as 8000-8009,12 (default: the held-out test split stored at training)",
    )
    parser.add_argument(
        "--actions",
        choices=["sample", "greedy"],
        default="sample",
        help="discrete actions: sampled from the policy (AD's) or its argmax "
        "(default: %(default)s)",
    )
    parser.add_argument("--task", default=None, help="env id (default: the dataset's task)")
    parser.add_argument("--data", default=None, help="dataset path (default: the config's)")
    parser.add_argument("--out", default=None, help="output directory (default: the run dir)")
    parser.add_argument(
        "--no-baselines",
        action="store_true",
        help="skip the uniform-random and best-constant baselines",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    r = evaluate(
        args.path,
        episodes=args.episodes,
        trials=args.trials,
        num_envs=args.envs,
        target=args.target,
        target_scale=args.target_scale,
        seed=args.seed,
        order=args.order,
        decode=args.decode,
        seq_shards=args.seq_shards,
        task=args.task,
        data_path=args.data,
        out_dir=args.out,
        with_baselines=not args.no_baselines,
        task_ids=args.task_ids,
        actions=args.actions,
        progress=not args.no_progress,
    )
    from ringrl.stats import describe

    def ci(key: str) -> str:
        return describe({"mean": r[f"{key}_mean"], "ci95": r[f"{key}_ci95"]})

    curve = " ".join(f"{x:.1f}" for x in r["episode_return_mean"])
    line = (
        f"{r['task']} {r['method']} ({r['trials']} trials x {r['episodes']} episodes, "
        f"95% CI over trials): final {ci('final_return')}, mean over episodes "
        f"{ci('mean_return')}, max-over-episodes (AT paper) {r['max_return_mean']:.1f}"
    )
    if "random_return_mean" in r:
        line += f"; random {ci('random_return')}, best constant {ci('constant_return')}"
    print(f"{line}\nper-episode mean: {curve}")
    return 0
