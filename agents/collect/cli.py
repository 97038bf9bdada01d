"""``ringrl collect TASK --policy random|sac|explore|history --steps N --out PATH [--seed S]``.

Writes a D4RL-layout HDF5 dataset (dm_control tasks: plus ``infos/physics``), atomically, with a
progress bar, a printed summary and text histogram of returns (not with ``--quiet``),
``<out>.summary.json`` and ``<out>.returns.png``; SAC and exploration runs also write their
learning curve (``<out>.curve.json/.png``). The return histogram and the number of episodes that
lie wholly in the uniform-random warm-up (``--learning-starts``; SAC replay and explore only) go
into the summary and the dataset's metadata.

- ``random``: uniform random actions (seeded).
- ``sac``: Soft Actor-Critic trained online for ``--steps``. ``--split replay`` (default) writes
  every transition it collected while learning (D4RL medium-replay recipe); ``--split medium``
  / ``expert`` roll out a saved actor snapshot (stochastic policy) for ``--rollout-steps``:
  ``expert`` = the snapshot with the best evaluation return, ``medium`` = the snapshot whose
  evaluation return is closest to ``--medium-fraction`` (1/3, D4RL) of it. Snapshots go to
  ``--sac-snapshots DIR`` (default ``<out>.sac/``); if DIR already holds snapshots from an
  earlier run, medium/expert reuse them instead of training again.
- ``explore``: RND intrinsic reward + SAC learner, extrinsic reward ignored (ExoRL recipe).
- ``history``: learning histories on a task family (``ringrl/bandit-v0``: Thompson sampling,
  ``--history-episodes`` pulls per instance for ``--tasks`` instances; ``ringrl/darkroom-v0`` /
  ``ringrl/darkroom_hard-v0``: an explore-then-exploit learner on the goals of the train split;
  see :mod:`agents.collect.families`). ``--steps`` is not used. Episodes carry
  ``infos/task_id`` / ``infos/history_id``; the metadata stores ``train_task_ids`` /
  ``test_task_ids``.

dm_control tasks save the physics states; rewards are those of TASK, or with ``--relabel a,b,c``
(any policy) one file per listed task of the domain, ``<out stem>-<task><suffix>``, whose rewards
are relabelled from the physics states (``envs.relabel_rewards``); ``<out>`` itself is not
written then.

Nothing is lost: an existing output is never replaced without ``--force`` (and with it, only
once the new file is complete), every option is checked before any work (exit code 2 and one
line naming the option), and the hidden temporary files of a killed run are removed by the next
run for the same output.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

from agents.collect import output
from agents.collect.common import (
    is_dm_control,
    make_env,
    normalize_task,
    rollout,
    short_task,
)
from ringrl.cli import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "task",
        help="gymnasium id (HalfCheetah-v5, dm_control/walker-run-v0), ExoRL name (walker_run) "
        "or dm_control short name (walker-run)",
    )
    parser.add_argument(
        "--policy",
        choices=["random", "sac", "explore", "history"],
        default="random",
        help="behaviour: uniform random actions, Soft Actor-Critic, RND exploration, or "
        "learning histories on a task family (Thompson sampling / explore-then-exploit)",
    )
    parser.add_argument(
        "--steps", type=int, default=100_000, help="environment steps to collect (or learn for)"
    )
    parser.add_argument("--out", required=True, help="output HDF5 path (D4RL layout)")
    parser.add_argument(
        "--force", action="store_true", help="replace --out (and --relabel outputs) if they exist"
    )
    parser.add_argument("--seed", type=int, default=0, help="environment and policy seed")
    g = parser.add_argument_group("sac / explore")
    g.add_argument(
        "--split",
        choices=["replay", "medium", "expert"],
        default="replay",
        help="sac: every transition seen while learning, or rollouts of a saved snapshot",
    )
    g.add_argument("--sac-snapshots", default=None, help="snapshot directory (default: <out>.sac/)")
    g.add_argument(
        "--rollout-steps", type=int, default=None, help="medium/expert size (default: --steps)"
    )
    g.add_argument(
        "--medium-fraction",
        type=float,
        default=1 / 3,
        help="medium: the snapshot whose return is closest to this fraction of the best's",
    )
    g.add_argument(
        "--learning-starts", type=int, default=5_000, help="uniform-random warm-up steps"
    )
    g.add_argument(
        "--eval-every", type=int, default=10_000, help="environment steps between evaluations"
    )
    g.add_argument("--eval-episodes", type=int, default=10, help="episodes per evaluation")
    g.add_argument(
        "--update-every",
        type=int,
        default=1,
        help="env steps per SAC (and RND) update: 1 is the paper's update-to-data ratio of 1, "
        "4 a quarter of it (default: %(default)s)",
    )
    g.add_argument("--batch-size", type=int, default=256, help="SAC minibatch size")
    g.add_argument("--hidden", type=int, nargs="+", default=[256, 256], help="MLP widths")
    g.add_argument("--intrinsic", choices=["rnd"], default="rnd", help="exploration bonus")
    h = parser.add_argument_group("history (task families)")
    h.add_argument(
        "--tasks",
        type=int,
        default=None,
        help="task instances with a history each (bandit: ids 0..N-1, default 1000; Dark Room: "
        "the first N goals of the train split, default all)",
    )
    h.add_argument(
        "--history-episodes",
        type=int,
        default=None,
        help="episodes per history (bandit: pulls, default 500; Dark Room: default 100)",
    )
    h.add_argument(
        "--histories-per-task", type=int, default=1, help="Dark Room: histories per goal"
    )
    parser.add_argument(
        "--relabel",
        default=None,
        help="dm_control: comma-separated tasks of the domain; writes one file per task",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no histogram")


# --------------------------------------------------------------------------------------------
def _resolve_task(name: str, what: str) -> str:
    """The gymnasium id of ``name``, or a UsageError naming it and the known tasks."""
    import envs

    try:
        return normalize_task(name)
    except ValueError:
        raise UsageError(
            f"{what}: unknown task {name!r} (expected a gymnasium id, an ExoRL name such as "
            f"walker_run or a dm_control name such as walker-run); project tasks: "
            f"{', '.join(envs.list_tasks())}"
        ) from None


def _domain(task: str) -> str:
    return short_task(task).split("-")[0]


def validate(args: argparse.Namespace) -> tuple[str, list[str], list[Path]]:
    """Check every argument before any work: ``(task id, relabel task ids, dataset paths to
    write)``; raises :class:`~ringrl.cli.UsageError` naming the first bad option."""
    positive = {
        "--steps": args.steps,
        "--rollout-steps": args.rollout_steps,
        "--eval-every": args.eval_every,
        "--eval-episodes": args.eval_episodes,
        "--batch-size": args.batch_size,
        "--tasks": getattr(args, "tasks", None),
        "--history-episodes": getattr(args, "history_episodes", None),
        "--histories-per-task": getattr(args, "histories_per_task", None),
    }
    for option, value in positive.items():
        if value is not None and value < 1:
            raise UsageError(f"{option}: expected an integer >= 1, got {value}")
    if args.update_every < 1:
        raise UsageError(f"--update-every: expected an integer >= 1, got {args.update_every}")
    if args.learning_starts < 0:
        raise UsageError(f"--learning-starts: expected an integer >= 0, got {args.learning_starts}")
    if any(h < 1 for h in args.hidden):
        raise UsageError(f"--hidden: expected widths >= 1, got {' '.join(map(str, args.hidden))}")
    if not 0 <= args.medium_fraction <= 1:
        raise UsageError(
            f"--medium-fraction: expected a number in [0, 1], got {args.medium_fraction}"
        )

    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out}: is a directory (expected the path of an HDF5 file)")
    if args.sac_snapshots and Path(args.sac_snapshots).is_file():
        raise UsageError(f"--sac-snapshots {args.sac_snapshots}: is a file (expected a directory)")

    task = _resolve_task(args.task, "TASK")
    dmc = is_dm_control(task)
    if args.policy == "explore" and not dmc:
        raise UsageError(f"--policy explore: needs a dm_control task (physics states), got {task}")
    if args.policy == "history":
        from agents.collect import families

        try:
            families.history_plan(task, args.tasks, args.history_episodes, args.histories_per_task)
        except ValueError as e:
            raise UsageError(f"--policy history: {e}") from None
        if task == families.BANDIT and args.histories_per_task != 1:
            raise UsageError("--histories-per-task: the bandit collects one history per instance")
    elif args.policy == "sac" and _is_task_family(task):
        raise UsageError(f"--policy sac: needs continuous actions; {task} is a task family")
    relabel: list[str] = []
    if args.relabel is not None:
        if not dmc:
            raise UsageError(f"--relabel: needs a dm_control task (physics states), got {task}")
        names = [t.strip() for t in args.relabel.split(",") if t.strip()]
        if not names:
            raise UsageError(f"--relabel: expected comma-separated tasks, got {args.relabel!r}")
        for name in names:
            t = _resolve_task(name, "--relabel")
            if not is_dm_control(t) or _domain(t) != _domain(task):
                raise UsageError(
                    f"--relabel: {name!r} is not a task of the {_domain(task)} domain of {task} "
                    f"(its physics states cannot be relabelled for {t})"
                )
            relabel.append(t)

    paths = [_relabel_path(out, t) for t in relabel] if relabel else [out]
    for path in paths:
        if path.is_dir():
            raise UsageError(f"{path}: is a directory (expected the path of an HDF5 file)")
        if path.exists() and not args.force:
            raise UsageError(f"{path}: already exists; pass --force to replace it")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(
            f"--out {out}: cannot create its directory {parent}: {e.strerror}"
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: directory {parent} is not writable")
    return task, relabel, paths


# --------------------------------------------------------------------------------------------
def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=quiet, mininterval=1.0, smoothing=0.05)


def _print_summary(out: Path, s: dict, quiet: bool = False) -> None:
    r = s["returns"]
    print(
        f"wrote {out}: {s['episodes']} episodes, {s['steps']} steps; returns "
        f"mean {r.get('mean', float('nan')):.1f} ± {r.get('std', float('nan')):.1f} "
        f"[min {r.get('min', float('nan')):.1f}, median {r.get('median', float('nan')):.1f}, "
        f"max {r.get('max', float('nan')):.1f}]"
    )
    if s["warmup_steps"]:
        print(
            f"warm-up: {s['warmup_episodes']} of {s['episodes']} episodes wholly within the "
            f"first {s['warmup_steps']} uniform-random steps"
        )
    if not quiet:
        print(output.format_histogram(s["return_histogram"]))


def _warmup_steps(args: argparse.Namespace) -> int:
    """Uniform-random warm-up steps at the start of the written episodes: SAC's replay split and
    exploration record their ``learning_starts`` random steps; other behaviours have none."""
    trains_into_dataset = args.policy == "explore" or (
        args.policy == "sac" and args.split == "replay"
    )
    return min(args.learning_starts, args.steps) if trains_into_dataset else 0


def _sac_config(args: argparse.Namespace, total_steps: int):
    from agents.collect.sac import SACConfig

    return SACConfig(
        total_steps=total_steps,
        learning_starts=min(args.learning_starts, total_steps),
        batch_size=args.batch_size,
        hidden_dims=tuple(args.hidden),
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        update_every=args.update_every,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    task, relabel, paths = validate(args)
    out = Path(args.out)
    dmc = is_dm_control(task)
    for path in {out, *paths}:
        for stale in output.remove_stale_temp_files(path):
            print(f"removed {stale} (left by a killed run)", file=sys.stderr)
    meta = {"task": task, "policy": args.policy, "seed": args.seed, "steps": args.steps}
    t0 = time.perf_counter()

    if args.policy == "random":
        env = make_env(task, seed=args.seed)
        env.action_space.seed(args.seed)
        if hasattr(env.action_space, "n"):  # Discrete: the dataset needs the number of actions
            meta["num_actions"] = int(env.action_space.n)
        with _progress(args.steps, "random", args.quiet) as bar:
            episodes = rollout(
                env,
                lambda _obs: env.action_space.sample(),
                args.steps,
                seed=args.seed,
                record_physics=dmc,
                progress=bar.update,
            )
        writes = [(out, task, episodes)]

    elif args.policy == "sac":
        episodes = _run_sac(args, task, out, meta)
        writes = [(out, task, episodes)]

    elif args.policy == "history":
        episodes = _run_history(args, task, meta)
        writes = [(out, task, episodes)]

    else:  # explore
        episodes = _run_explore(args, task, out, meta)
        writes = [(out, task, episodes)]

    if relabel:
        writes = _relabelled(writes[0][2], relabel, out)

    for path, t, eps in writes:
        m = {**meta, "task": t, "wall_s": round(time.perf_counter() - t0, 2)}
        title = f"{short_task(t)} · {args.policy}" + (
            f" ({args.split})" if args.policy == "sac" else ""
        )
        summary = output.write_collection(eps, path, m, title, warmup_steps=_warmup_steps(args))
        _print_summary(path, summary, args.quiet)
        if args.policy == "history":
            _print_histories(eps, m)
    return 0


def _is_task_family(task: str) -> bool:
    import envs

    return envs.is_task_family(task)


def _run_history(args: argparse.Namespace, task: str, meta: dict) -> list[dict]:
    from agents.collect import families

    plan = families.history_plan(task, args.tasks, args.history_episodes, args.histories_per_task)
    with _progress(plan["steps"], "history", args.quiet) as bar:
        episodes, extra = families.collect_histories(
            task,
            args.tasks,
            args.history_episodes,
            histories_per_task=args.histories_per_task,
            seed=args.seed,
            progress=bar.update,
        )
    meta.update(extra)
    meta["steps"] = plan["steps"]
    return episodes


def _print_histories(episodes: list[dict], meta: dict) -> None:
    from agents.collect import families

    per = int(meta["episodes_per_history"])
    window = max(1, min(100 if per >= 200 else 10, per // 2))
    first, last = families.improvement(episodes, window)
    tasks = len({int(e["task_id"]) for e in episodes})
    print(
        f"{meta['histories']} histories of {per} episodes on {tasks} task ids (split: "
        f"{len(meta['train_task_ids'])} train / {len(meta['test_task_ids'])} test ids); mean "
        f"return per episode, first {window}: {first:.3f} -> last {window}: {last:.3f}"
    )


# --------------------------------------------------------------------------------------------
def _run_sac(args: argparse.Namespace, task: str, out: Path, meta: dict) -> list[dict]:
    from agents.collect import sac

    snap_dir = Path(args.sac_snapshots) if args.sac_snapshots else output.sibling(out, ".sac")
    meta["split"] = args.split
    dmc = is_dm_control(task)
    snapshots = sac.list_snapshots(snap_dir) if args.split != "replay" else []

    if not snapshots:
        cfg = _sac_config(args, args.steps)
        meta["sac_config"] = dataclasses.asdict(cfg)
        env = make_env(task, seed=args.seed)
        eval_env = make_env(task, seed=args.seed + 10_000)
        with _progress(args.steps, "sac", args.quiet) as bar:
            result = sac.train(
                env,
                eval_env,
                cfg,
                snapshot_dir=snap_dir,
                record_physics=dmc and args.split == "replay",
                progress=bar.update,
                log=bar.write,
            )
        meta["steps_per_s"] = round(result.steps_per_s, 1)
        meta["train_wall_s"] = round(result.wall_s, 1)
        output.write_curve(
            result.curve,
            out,
            f"SAC · {short_task(task)} · seed {args.seed}",
            {"steps_per_s": result.steps_per_s, "wall_s": result.wall_s, "task": task},
        )
        if args.split == "replay":
            return result.episodes
        snapshots = result.snapshots

    best = max(snapshots, key=lambda s: s["eval_return"])
    if args.split == "expert":
        chosen = best
    else:
        goal = args.medium_fraction * best["eval_return"]
        chosen = min(snapshots, key=lambda s: abs(s["eval_return"] - goal))
    meta["snapshot"] = chosen
    agent, actor, _ = sac.load_snapshot(chosen["path"])
    env = make_env(task, seed=args.seed)
    scaler = sac.ActionScaler.of(env.action_space)
    policy = sac.stochastic_policy(agent, actor, scaler, seed=args.seed)
    n = args.rollout_steps or args.steps
    with _progress(n, f"{args.split} rollout", args.quiet) as bar:
        return rollout(env, policy, n, seed=args.seed, record_physics=dmc, progress=bar.update)


def _run_explore(args: argparse.Namespace, task: str, out: Path, meta: dict) -> list[dict]:
    from agents.collect import explore

    cfg = explore.ExploreConfig(sac=_sac_config(args, args.steps))
    meta["explore_config"] = dataclasses.asdict(cfg)
    meta["intrinsic"] = args.intrinsic
    env = make_env(task, seed=args.seed)
    with _progress(args.steps, f"explore ({args.intrinsic})", args.quiet) as bar:
        result = explore.train(env, cfg, progress=bar.update, log=bar.write)
    meta["steps_per_s"] = round(result.steps_per_s, 1)
    output.write_curve(
        result.curve,
        out,
        f"RND exploration · {short_task(task)} · extrinsic return of its episodes (ignored)",
        {"steps_per_s": result.steps_per_s, "wall_s": result.wall_s, "task": task},
    )
    return result.episodes


def _relabelled(episodes: list[dict], tasks: list[str], out: Path) -> list:
    import envs

    writes = []
    for t in tasks:
        eps = []
        for e in episodes:
            r = np.asarray(envs.relabel_rewards(t, e["physics"]), np.float32)
            eps.append({**e, "rewards": r})
        writes.append((_relabel_path(out, t), t, eps))
    return writes


def _relabel_path(out: Path, task: str) -> Path:
    """``data/x.hdf5`` relabelled for walker-run -> ``data/x-walker-run.hdf5``."""
    return out.with_name(f"{out.stem}-{short_task(task)}{out.suffix}")


def main(argv: list[str] | None = None) -> int:
    """Same as ``ringrl collect ARGS`` (one-line errors, exit code 2)."""
    from ringrl.cli import main as ringrl_main

    return ringrl_main(["collect", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
