"""``ringrl quickstart [--run-dir DIR]``: the whole pipeline, end to end, on a small task.

1. Collect (or reuse) a small SAC *replay* dataset for ``dm_control/cartpole-swingup-v0``
   (``ringrl collect ... --policy sac``: every transition SAC saw while learning).
2. Train an Agentic Transformer (ring attention over 4 host devices, chains of N = 2 whole
   episodes, the dataset's 20 episodes being 10 x N) and a Decision Transformer (its paper's
   return/state/action tokens, K = 20 step windows, as many training tokens as AT) on it.
3. Evaluate both (``ringrl eval``): AT over 2N in-context episodes per trial with the KV cache
   (the previous episodes sorted by return, as in training), DT over independent episodes;
   uniform-random and best-constant baselines on the same reset seeds.
4. Print a table with 95% bootstrap intervals over trials (one training seed: these intervals
   say nothing about training variance) and write ``summary.json`` and ``curve.png``.

Everything is resumable: the dataset, each training run and each evaluation are reused when
already complete. ``--tiny`` shrinks every stage (a smoke test; the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

TASK = "dm_control/cartpole-swingup-v0"


@dataclasses.dataclass
class Plan:
    """Sizes of every stage."""

    task: str = TASK
    collect_steps: int = 20_000  # SAC env steps (20 episodes of 1000 steps)
    learning_starts: int = 5_000
    at_steps: int = 400
    at_batch: int = 4  # chains per step (4 x 2000 tokens)
    # DT: as many training tokens as AT (800 x 64 windows x 20 steps x 3 tokens = 3.1M, AT 400 x
    # 4 x 2000 x 1 = 3.2M), i.e. a third of AT's action targets (DT has 3 tokens per step)
    dt_steps: int = 800
    dt_batch: int = 64
    at_trajectories: int = 2  # N whole episodes per training chain (20 episodes = 10 x N)
    tokens_per_step: int = 1  # fused: 2000 tokens for 2 episodes
    d_model: int = 64
    num_layers: int = 2
    block_size: int = 125  # 2000 = 8 zigzag chunks of 2 blocks: no padding
    remat: bool = False  # activations of 4 x 2000 tokens x width 64 fit easily: no recompute
    seq_devices: int = 4
    trials: int = 5
    envs: int = 5
    dt_trials: int = 5
    dt_episodes: int = 2
    collect_policy: str = "sac"


TINY = Plan(
    task="Reacher-v5",
    collect_steps=1_000,
    learning_starts=200,
    at_steps=3,
    dt_steps=3,
    dt_batch=8,
    at_trajectories=2,
    d_model=16,
    num_layers=1,
    block_size=50,
    trials=2,
    envs=2,
    dt_trials=2,
    collect_policy="random",
)


def collect(plan: Plan, data_dir: Path) -> Path:
    """The replay dataset (reused when present)."""
    from ringrl.cli import main as cli

    out = (
        data_dir / f"{plan.task.replace('/', '_')}-{plan.collect_policy}-{plan.collect_steps}.hdf5"
    )
    if out.exists():
        print(f"[1/4] reusing dataset {out}", flush=True)
        return out
    print(
        f"[1/4] collecting {plan.collect_steps} steps ({plan.collect_policy}) -> {out}", flush=True
    )
    argv = [
        "collect",
        plan.task,
        "--policy",
        plan.collect_policy,
        "--steps",
        str(plan.collect_steps),
        "--out",
        str(out),
        "--quiet",
    ]
    if plan.collect_policy == "sac":
        argv += ["--learning-starts", str(plan.learning_starts), "--eval-every", "100000000"]
    if cli(argv) != 0:
        raise RuntimeError("collection failed")
    return out


def at_overrides(plan: Plan, data: Path, max_steps: int) -> list[str]:
    return [
        "name=quickstart-at",
        f"data.path={data}",
        "agent.kind=at",
        f"agent.num_trajectories={plan.at_trajectories}",
        f"agent.steps_per_trajectory={max_steps}",
        f"agent.tokens_per_step={plan.tokens_per_step}",
        f"agent.max_timestep={max_steps}",
        *_model(plan, "ring"),
        f"train.steps={plan.at_steps}",
        f"train.batch_size={plan.at_batch}",
        f"train.mesh_seq={plan.seq_devices}",
        f"train.ckpt_every={plan.at_steps}",
        "optim.lr=0.001",
        f"optim.warmup_steps={max(plan.at_steps // 10, 1)}",
        "optim.end_lr_ratio=0.1",
    ]


def dt_overrides(plan: Plan, data: Path, max_steps: int) -> list[str]:
    return [
        "name=quickstart-dt",
        f"data.path={data}",
        "agent.kind=dt",
        "agent.num_trajectories=1",
        "agent.steps_per_trajectory=20",
        "agent.random_window_start=true",
        "agent.tokens_per_step=3",
        f"agent.max_timestep={max_steps}",
        *_model(plan, "vanilla"),
        "model.block_size=60",
        f"train.steps={plan.dt_steps}",
        f"train.batch_size={plan.dt_batch}",
        f"train.log_every={max(plan.dt_steps // 50, 1)}",
        "train.mesh_seq=1",
        f"train.ckpt_every={plan.dt_steps}",
        "optim.lr=0.001",
        f"optim.warmup_steps={max(plan.dt_steps // 10, 1)}",
        "optim.end_lr_ratio=0.1",
    ]


def _model(plan: Plan, attention: str) -> list[str]:
    return [
        f"model.num_layers={plan.num_layers}",
        f"model.d_model={plan.d_model}",
        "model.num_heads=4",
        "model.num_kv_heads=4",
        "model.dropout=0.1",
        f"model.attention={attention}",
        f"model.block_size={plan.block_size}",
        f"model.remat={str(plan.remat).lower()}",
    ]


def train_run(overrides: list[str], run_dir: Path, label: str) -> None:
    from ringrl.config import load_config
    from ringrl.train import train

    cfg = load_config(None, overrides)
    print(f"[{label}] training {cfg.name}: {cfg.train.steps} steps -> {run_dir}", flush=True)
    if train(cfg, run_dir, progress=sys.stderr.isatty()) != 0:
        raise RuntimeError(f"training {cfg.name} failed")


def evaluate_run(run_dir: Path, trials: int, envs: int, episodes: int, seed: int) -> dict:
    from ringrl.evaluate import evaluate

    done = run_dir / "eval.json"
    if done.exists():
        r = json.loads(done.read_text())
        if (r.get("trials"), r.get("episodes"), r.get("reset_seeds", [[None]])[0][0]) == (
            trials,
            episodes,
            seed,
        ):
            return r
    return evaluate(run_dir, trials=trials, num_envs=envs, episodes=episodes, seed=seed)


def quickstart(
    run_dir: str | Path, plan: Plan | None = None, data_dir: str | Path | None = None
) -> dict:
    """Run every stage into ``run_dir``; returns the summary (also ``summary.json``)."""
    plan = plan or Plan()
    import envs
    from ringrl.evaluate import plot_curve, seed_block

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = collect(plan, Path(data_dir) if data_dir else run_dir)
    max_steps = int(envs.max_episode_steps(plan.task))
    stamps = {"collect_s": time.perf_counter() - t0}
    train_run(at_overrides(plan, data, max_steps), run_dir / "at", "2/4")
    stamps["train_at_s"] = time.perf_counter() - t0 - sum(stamps.values())
    train_run(dt_overrides(plan, data, max_steps), run_dir / "dt", "3/4")
    stamps["train_dt_s"] = time.perf_counter() - t0 - sum(stamps.values())
    print("[4/4] evaluating AT (in-context, KV cache) and DT", flush=True)
    K = 2 * plan.at_trajectories
    at = evaluate_run(run_dir / "at", plan.trials, plan.envs, K, seed_block(0, 0))
    dt = evaluate_run(run_dir / "dt", plan.dt_trials, plan.envs, plan.dt_episodes, seed_block(1, 0))
    stamps["eval_s"] = time.perf_counter() - t0 - sum(stamps.values())
    at["label"], dt["label"] = "AT", "DT"
    plot_curve([at, dt], run_dir / "curve.png", f"{plan.task}: in-context return")
    keys = ("final_return", "mean_return", "random_return", "constant_return")
    summary = {
        "task": plan.task,
        "N": plan.at_trajectories,
        "episodes": K,
        "dataset_best_return": at["dataset_best_return"],
        "dataset_mean_return": at["dataset_mean_return"],
        "at": {k: [at[f"{k}_mean"], *at[f"{k}_ci95"]] for k in keys},
        "at_max_return_mean": at["max_return_mean"],
        "at_curve": at["episode_return_mean"],
        "dt": {k: [dt[f"{k}_mean"], *dt[f"{k}_ci95"]] for k in keys},
        "at_vs_random": (
            at["final_return_mean"] / at["random_return_mean"]
            if at["random_return_mean"] > 0
            else None
        ),
        "compute": {
            "at_action_targets": plan.at_steps * plan.at_batch * plan.at_trajectories * max_steps,
            "at_tokens": plan.at_steps
            * plan.at_batch
            * plan.at_trajectories
            * max_steps
            * plan.tokens_per_step,
            "dt_action_targets": plan.dt_steps * plan.dt_batch * 20,
            "dt_tokens": plan.dt_steps * plan.dt_batch * 20 * 3,
        },
        "wall_s": {k: round(v, 1) for k, v in stamps.items()},
        "total_s": round(time.perf_counter() - t0, 1),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(table(summary, at, dt))
    return summary


def table(s: dict, at: dict, dt: dict) -> str:
    def ci(v: list) -> str:
        return f"{v[0]:.1f} [{v[1]:.1f}, {v[2]:.1f}]"

    curve = " -> ".join(f"{x:.1f}" for x in s["at_curve"])
    a, d, c = s["at"], s["dt"], s["compute"]
    rows = [
        ("random (uniform actions)", ci(a["random_return"])),
        ("best constant action", ci(a["constant_return"])),
        (
            "dataset best / mean episode",
            f"{s['dataset_best_return']:.1f} / {s['dataset_mean_return']:.1f}",
        ),
        (f"DT ({dt['trials']} trials x {dt['episodes']} episodes)", ci(d["mean_return"])),
        (f"AT final episode ({at['trials']} trials)", ci(a["final_return"])),
        (f"AT mean over its {s['episodes']} episodes", ci(a["mean_return"])),
        ("AT max over episodes (AT paper's metric)", f"{s['at_max_return_mean']:.1f}"),
        (f"AT in-context curve (episode 1 -> {s['episodes']})", curve),
        ("AT final / random", "n/a" if s["at_vs_random"] is None else f"{s['at_vs_random']:.1f}x"),
        (
            "training: action targets / tokens",
            f"AT {c['at_action_targets'] / 1e6:.2f}M / {c['at_tokens'] / 1e6:.2f}M, "
            f"DT {c['dt_action_targets'] / 1e6:.2f}M / {c['dt_tokens'] / 1e6:.2f}M",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [
        f"{s['task']} -- return per episode, mean [95% bootstrap interval over trials of one "
        f"trained model] (time: {s['total_s']:.0f} s)"
    ]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    lines.append(
        f"  AT was trained on chains of N = {s['N']} episodes; the episodes after episode "
        f"{s['N']} show whether it keeps improving past its training context"
    )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-dir",
        default=None,
        help="output directory: dataset, runs, summary (default: runs/quickstart, "
        "runs/quickstart_tiny with --tiny)",
    )
    parser.add_argument(
        "--data-dir", default=None, help="dataset directory (default: the run directory)"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="every stage in about a minute on Reacher-v5, a smoke test (meaningless numbers)",
    )


def run(args: argparse.Namespace) -> int:
    run_dir = args.run_dir or ("runs/quickstart_tiny" if args.tiny else "runs/quickstart")
    quickstart(run_dir, TINY if args.tiny else Plan(), args.data_dir)
    return 0
