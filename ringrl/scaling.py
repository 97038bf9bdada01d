"""``ringrl scaling``: return against the number of episodes in context, N, with intervals.

For one task family (a study preset in ``configs/scaling/``), every agent (AD, AT) is trained at
every N on the same number of training tokens -- ``train.batch_size = episodes_per_update / N``
chains of N episodes, the same number of updates -- for every seed, then evaluated in context
on held-out task instances: ``trials`` trials of ``K`` episodes, whole-episode eviction (the one
context rule), discrete actions sampled from the policy. Beside them, on the same protocol:

* the **oracle** for each N: the data's learning algorithm with a memory of only the ``N - 1``
  previous episodes an N-episode context holds (:mod:`agents.oracles`; windowed Thompson
  sampling, a coverage explorer): the ceiling for that context;
* the **source** algorithm: the same learner with the whole trial in memory;
* uniform-random actions.

Metrics, per trial then averaged over the trials of one seed (the unit of the intervals):

* ``mean_return``: mean return over the K evaluated episodes;
* ``mean_return_first64``: over the first 64 (or K) episodes -- what memory buys in
  exploration speed;
* ``final_return``: mean over the last 10% of the episodes (at least one) -- the level reached.

``scaling.json`` (the contract in DESIGN.md) holds, per agent / oracle, metric and N, the
per-seed values, their mean and 95% percentile-bootstrap interval over seeds, plus each N's
in-context curve, the source and random levels, training tokens/s and the study's CPU time.
``scaling.png`` plots them. Everything is resumable: finished trainings and evaluations in
``--run-dir`` are reused (a killed study continues where it stopped).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import yaml

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "scaling"
FAMILY_PRESETS = {
    "ringrl/bandit-v0": "bandit",
    "ringrl/darkroom-v0": "darkroom",
    "ringrl/darkroom_hard-v0": "darkroom_hard",
}
METRICS = ("final_return", "mean_return", "mean_return_first64")
RING_TOKENS = 16_384  # chains at least this long train with ring attention over host devices


class StudyError(ValueError):
    """A study that cannot run as asked (unknown task, bad N list): a user mistake."""


# ---- the study --------------------------------------------------------------------------------


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_study(task: str, *, quick: bool = False, preset: str | Path | None = None) -> dict:
    """The study preset for ``task`` (``configs/scaling/<family>.yaml``), reduced by ``quick``."""
    path = Path(preset) if preset else None
    if path is None:
        if task not in FAMILY_PRESETS:
            raise StudyError(
                f"no scaling preset for {task!r}; presets: {', '.join(FAMILY_PRESETS)} "
                "(or pass --preset FILE)"
            )
        path = PRESETS / f"{FAMILY_PRESETS[task]}.yaml"
    study = yaml.safe_load(path.read_text())
    quick_part = study.pop("quick", {}) or {}
    if quick:
        study = _merge(study, quick_part)
    study["preset"] = str(path)
    study["quick"] = bool(quick)
    return study


def metric_values(returns: np.ndarray) -> dict[str, float]:
    """The study's metrics of one seed's returns ``[trials, K]`` (see the module docstring)."""
    K = returns.shape[1]
    tail = max(1, K // 10)
    return {
        "final_return": float(returns[:, -tail:].mean()),
        "mean_return": float(returns.mean()),
        "mean_return_first64": float(returns[:, : min(64, K)].mean()),
    }


def run_config(study: dict, agent: str, N: int, seed: int):
    """The training config of one run: the preset's, at N episodes per chain and equal tokens."""
    from ringrl.config import Config, from_dict

    per_update = int(study["episodes_per_update"])
    if per_update % N:
        raise StudyError(f"episodes_per_update ({per_update}) must divide by N = {N}")
    data = _merge(
        study["config"],
        {
            "name": f"{agent}_n{N}_seed{seed}",
            "agent": {"kind": agent, "num_trajectories": N},
            "train": {"batch_size": per_update // N, "seed": seed},
        },
    )
    cfg = from_dict(Config, data)
    steps = cfg.agent.steps_per_trajectory * N * max(cfg.agent.tokens_per_step, 1)
    if steps >= RING_TOKENS:  # a long chain: exact ring attention over the host's devices
        cfg.model = dataclasses.replace(cfg.model, attention="ring")
        cfg.train.mesh_seq = -1
    return cfg.validate()


def ensure_data(study: dict, run_dir: Path) -> Path:
    """The study's dataset (collected with ``ringrl collect --policy history`` if missing)."""
    from agents.collect.cli import main as collect_main

    slug = study["task"].split("/")[-1]
    path = run_dir / "data" / f"{slug}_histories.hdf5"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    c = study.get("collect", {})
    argv = [study["task"], "--policy", "history", "--out", str(path), "--quiet"]
    for key, flag in (
        ("tasks", "--tasks"),
        ("episodes", "--history-episodes"),
        ("histories_per_task", "--histories-per-task"),
    ):
        if key in c:
            argv += [flag, str(c[key])]
    print(f"collecting {path} (ringrl collect {' '.join(argv)})", file=sys.stderr)
    if collect_main(argv) != 0:
        raise RuntimeError(f"collecting {path} failed")
    return path


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: dict) -> None:
    from ringrl.rundir import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=1))


def _eval_plan(study: dict, report: dict) -> dict:
    from ringrl.evaluate import spread_task_ids

    e = study["eval"]
    trials, K = int(e["trials"]), int(e["episodes"])
    ids = report.get("test_task_ids")
    return {
        "trials": trials,
        "episodes": K,
        "actions": e.get("actions", "sample"),
        "decode": e.get("decode", "auto"),
        "task_ids": spread_task_ids(ids, trials),
    }


def train_and_evaluate(study: dict, run_dir: Path, agent: str, N: int, seed: int, method: int):
    """One (agent, N, seed): train (or reuse) then evaluate (or reuse); its ``scaling_eval``."""
    from ringrl.evaluate import load_agent, run_trials, seed_block
    from ringrl.train import train

    cfg = run_config(study, agent, N, seed)
    data = ensure_data(study, run_dir)
    cfg.data.path = str(data)
    rdir = run_dir / "runs" / f"{agent}_n{N}" / f"seed{seed}"
    out = rdir / "scaling_eval.json"
    plan = _eval_plan(study, {"test_task_ids": _test_ids(str(data))})
    done = _read_json(out)
    if done is not None and done.get("plan") == plan and done.get("steps") == cfg.train.steps:
        return done
    t0, c0 = time.perf_counter(), _cpu_s()
    ds = _dataset(str(data))
    if train(cfg, rdir, progress=False, dataset=ds) != 0:
        raise RuntimeError(f"training {rdir} stopped on a non-finite loss")
    # the training's cost, summed over the invocations that trained it (an evaluation that
    # failed after its training, then reused, still reports what the training took)
    cost_path = rdir / "scaling_train_cost.json"
    cost = _read_json(cost_path) or {"wall_s": 0.0, "cpu_s": 0.0}
    cost = {
        "wall_s": cost["wall_s"] + time.perf_counter() - t0,
        "cpu_s": cost["cpu_s"] + _cpu_s() - c0,
    }
    _write_json(cost_path, cost)
    train_wall, train_cpu = cost["wall_s"], cost["cpu_s"]
    agent_obj, cfg, ds, step = load_agent(rdir, dataset=ds)
    t1, c1 = time.perf_counter(), _cpu_s()
    returns, info = run_trials(
        agent_obj,
        study["task"],
        trials=plan["trials"],
        episodes=plan["episodes"],
        num_envs=min(plan["trials"], 10),
        target=float(ds.returns.max()),
        seed=seed_block(method, seed),
        task_ids=plan["task_ids"],
        actions=plan["actions"],
        decode=plan["decode"],
    )
    rows = [json.loads(line) for line in (rdir / "metrics.jsonl").read_text().splitlines()]
    tok = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]  # past the compile
    result = {
        "agent": agent,
        "n": N,
        "seed": seed,
        "steps": cfg.train.steps,
        "plan": plan,
        "returns": returns.round(4).tolist(),
        **metric_values(returns),
        "reset_seed_first": seed_block(method, seed),
        "train_tokens_per_s": float(np.median(tok)) if tok else None,
        "train_wall_s": round(train_wall, 1),
        "train_cpu_s": round(train_cpu, 1),
        "eval_wall_s": round(time.perf_counter() - t1, 1),
        "eval_cpu_s": round(_cpu_s() - c1, 1),
        "decode": info["decode"],
        "order": info["order"],
    }
    _write_json(out, result)
    return result


def reference_policy(study: dict, kind: str, window: int | None, num_envs: int, seed: int):
    """The oracle (``kind="oracle"``, memory of ``window`` episodes) or source learner."""
    from agents.oracles import ExplorerPolicy, ThompsonPolicy

    task = study["task"]
    if task == "ringrl/bandit-v0":
        return ThompsonPolicy(num_envs, 10, window, seed)
    import envs

    size = int(envs.make(task).unwrapped.size)
    eps = 0.0 if kind == "oracle" else None
    episodes = int(study.get("collect", {}).get("episodes", 100))
    return ExplorerPolicy(num_envs, size, window, seed, epsilon=eps, schedule_episodes=episodes)


def evaluate_reference(study: dict, run_dir: Path, kind: str, N: int | None, seed: int, method):
    """Returns of the oracle at N (or the source, or ``kind="random"``) for one seed."""
    from ringrl.evaluate import RandomPolicy, rollout, seed_block

    data = ensure_data(study, run_dir)
    report = {"test_task_ids": _test_ids(str(data))}
    plan = _eval_plan(study, report)
    name = f"{kind}_n{N}" if N is not None else kind
    out = run_dir / "reference" / f"{name}_seed{seed}.json"
    done = _read_json(out)
    if done is not None and done.get("plan") == plan:
        return done
    E = min(plan["trials"], 10)
    if kind == "random":
        policy = RandomPolicy(E, _num_actions(study["task"]), seed, discrete=True)
    else:
        policy = reference_policy(study, kind, None if N is None else N - 1, E, seed)
    returns, _ = rollout(
        study["task"],
        policy,
        trials=plan["trials"],
        episodes=plan["episodes"],
        num_envs=E,
        seed=seed_block(method, seed),
        task_ids=plan["task_ids"],
    )
    result = {"kind": kind, "n": N, "seed": seed, "plan": plan, **metric_values(returns)}
    result["curve"] = returns.mean(0).round(4).tolist()
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_json(out, result)
    return result


@functools.lru_cache(maxsize=1)
def _dataset(path: str):
    """The study's dataset, loaded once for all its runs."""
    from ringrl.data import load_dataset

    return load_dataset(path)


def _test_ids(path: str) -> list[int] | None:
    """The held-out task ids stored in the dataset's metadata."""
    ids = _dataset(path).metadata.get("test_task_ids")
    return None if ids is None else [int(i) for i in np.asarray(ids).reshape(-1)]


def _num_actions(task: str) -> int:
    import envs

    return int(envs.make(task).action_space.n)


# ---- aggregation, plot --------------------------------------------------------------------------


def _entry(values: list[float]) -> dict:
    from ringrl.stats import interval

    ci = interval(values)
    return {"per_seed": [round(v, 4) for v in values], "mean": ci["mean"], "ci95": ci["ci95"]}


def aggregate(study: dict, runs: list[dict], refs: list[dict], cost: dict) -> dict:
    """``scaling.json``'s content from the per-run and reference results."""
    results: dict = {}
    curves: dict = {}
    tokens: dict = {}
    for name in [*study["agents"], "oracle"]:
        mine = [r for r in runs if r["agent"] == name] or [
            r for r in refs if r["kind"] == name and r["n"] is not None
        ]
        if not mine:
            continue
        results[name] = {m: {} for m in METRICS}
        curves[name] = {}
        for N in study["n"]:
            at_n = sorted((r for r in mine if r["n"] == N), key=lambda r: r["seed"])
            if not at_n:
                continue
            for m in METRICS:
                results[name][m][str(N)] = _entry([r[m] for r in at_n])
                results[name][m][str(N)]["seeds"] = [int(r["seed"]) for r in at_n]
            if "returns" in at_n[0]:
                per_ep = np.mean([np.mean(r["returns"], 0) for r in at_n], 0)
            else:
                per_ep = np.mean([r["curve"] for r in at_n], 0)
            curves[name][str(N)] = [round(float(x), 4) for x in per_ep]
            tok = [r["train_tokens_per_s"] for r in at_n if r.get("train_tokens_per_s")]
            if tok:
                tokens.setdefault(name, {})[str(N)] = round(float(np.median(tok)), 1)
    levels = {}
    for kind in ("source", "random"):
        mine = sorted((r for r in refs if r["kind"] == kind), key=lambda r: r["seed"])
        if mine:
            levels[kind] = {m: _entry([r[m] for r in mine]) for m in METRICS}
            levels[kind]["curve"] = [
                round(float(x), 4) for x in np.mean([r["curve"] for r in mine], 0)
            ]
    return {
        "task": study["task"],
        "agents": list(study["agents"]),
        "n": [int(n) for n in study["n"]],
        "seeds": [int(s) for s in study["seeds"]],
        "quick": study["quick"],
        "preset": study["preset"],
        "eval": study["eval"],
        "episodes_per_update": study["episodes_per_update"],
        "train_steps": study["config"]["train"]["steps"],
        "results": results,
        "curves": curves,
        "levels": levels,
        "train_tokens_per_s": tokens,
        "cost": cost,
        "metric_notes": {
            "final_return": "mean return of the last 10% of the K episodes of each trial",
            "mean_return": "mean return over the K evaluated episodes",
            "mean_return_first64": "mean return over the first min(64, K) episodes",
            "intervals": "95% percentile bootstrap over seeds of the per-seed trial means",
            "oracle": "the data's learner remembering only the N - 1 previous episodes",
            "source": "the data's learner remembering the whole trial",
        },
    }


def plot(result: dict, path: Path) -> None:
    """``scaling.png``: metrics against N (95% CIs over seeds) and the in-context curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in result["results"]]
    curve_agents = [a for a in result["agents"] if a in result["curves"]]
    fig, axes = plt.subplots(1, 2 + len(curve_agents), figsize=(5 * (2 + len(curve_agents)), 4))
    for ax, metric in zip(axes[:2], ("mean_return", "final_return"), strict=True):
        for name in names:
            entries = result["results"][name][metric]
            ns = sorted(int(n) for n in entries)
            mean = np.array([entries[str(n)]["mean"] for n in ns])
            lo, hi = np.array([entries[str(n)]["ci95"] for n in ns]).T
            style = "--" if name == "oracle" else "-"
            ax.errorbar(
                ns, mean, yerr=[mean - lo, hi - mean], fmt="o" + style, capsize=3, label=name
            )
        for kind, ls in (("source", ":"), ("random", "-.")):
            if kind in result["levels"]:
                ax.axhline(result["levels"][kind][metric]["mean"], color="gray", ls=ls, label=kind)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("episodes in context, N")
        ax.set_ylabel(f"{metric} (mean, 95% CI over seeds)")
        ax.set_title(f"{result['task']}: {metric}")
        ax.legend(fontsize=8)
    for ax, name in zip(axes[2:], curve_agents, strict=True):
        K = result["eval"]["episodes"]
        w = max(1, K // 25)  # moving average over w episodes
        for N, curve in sorted(result["curves"][name].items(), key=lambda kv: int(kv[0])):
            c = np.convolve(curve, np.ones(w) / w, mode="valid")
            ax.plot(np.arange(len(c)) + w, c, label=f"N={N}")
        if "source" in result["levels"]:
            c = np.convolve(result["levels"]["source"]["curve"], np.ones(w) / w, mode="valid")
            ax.plot(np.arange(len(c)) + w, c, "k:", label="source")
        ax.set_xlabel("episode of the trial")
        ax.set_ylabel(f"return (moving mean over {w})")
        ax.set_title(f"{name}: in-context curves")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- the whole study -------------------------------------------------------------------------


def run_study(
    study: dict, run_dir: str | Path, *, progress: bool = True, new_runs: bool = True
) -> dict:
    """Train, evaluate and aggregate ``study`` in ``run_dir``; writes scaling.json / .png.

    ``new_runs=False``: aggregate the finished runs only (nothing is trained or evaluated but
    the references); scaling.json then lists, per agent and N, the seeds it holds."""
    from tqdm import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ns = [int(n) for n in study["n"]]
    if not ns or min(ns) < 1:
        raise StudyError(f"N must be positive integers, got {study['n']}")
    t0, c0 = time.perf_counter(), _cpu_s()
    ensure_data(study, run_dir)
    # seed by seed: a study stopped early has every (agent, N) at its first seeds
    jobs = [(a, N, s) for s in study["seeds"] for a in study["agents"] for N in ns]
    refs_todo = [("oracle", N, s) for N in ns for s in study["seeds"]]
    refs_todo += [(k, None, s) for k in ("source", "random") for s in study["seeds"]]
    bar = tqdm(total=len(jobs) + len(refs_todo), desc="scaling", unit="run", disable=not progress)
    runs, refs = [], []
    for agent, N, seed in jobs:
        bar.set_postfix_str(f"{agent} N={N} seed {seed}")
        method = 10 * study["agents"].index(agent) + ns.index(N)
        done = run_dir / "runs" / f"{agent}_n{N}" / f"seed{seed}" / "scaling_eval.json"
        if new_runs or done.exists():
            runs.append(train_and_evaluate(study, run_dir, agent, N, seed, method))
        bar.update(1)
    for kind, N, seed in refs_todo:
        bar.set_postfix_str(f"{kind} N={N} seed {seed}")
        method = 80 + (ns.index(N) if N is not None else (10 if kind == "source" else 11))
        refs.append(evaluate_reference(study, run_dir, kind, N, seed, method))
        bar.update(1)
    bar.close()
    cost = {
        "this_invocation_wall_s": round(time.perf_counter() - t0, 1),
        "this_invocation_cpu_s": round(_cpu_s() - c0, 1),
        "runs_train_cpu_s": round(sum(r["train_cpu_s"] for r in runs), 1),
        "runs_eval_cpu_s": round(sum(r["eval_cpu_s"] for r in runs), 1),
        "note": "runs_* sum what each run cost when it was made (also in earlier invocations)",
    }
    result = aggregate(study, runs, refs, cost)
    _write_json(run_dir / "scaling.json", result)
    plot(result, run_dir / "scaling.png")
    return result


def summary_lines(result: dict) -> list[str]:
    """One line per agent and N: the metrics with their intervals."""
    from ringrl.stats import describe

    lines = [f"{result['task']} ({len(result['seeds'])} seeds, 95% CI over seeds):"]
    for name, metrics in result["results"].items():
        for N in sorted(metrics["mean_return"], key=int):
            parts = [f"{m} {describe(metrics[m][N], 3)}" for m in ("mean_return", "final_return")]
            lines.append(f"  {name:>6} N={N:>4}: " + ", ".join(parts))
    for kind, level in result["levels"].items():
        lines.append(f"  {kind:>6}       : mean_return {describe(level['mean_return'], 3)}")
    return lines


def markdown_table(result: dict, metrics: tuple[str, ...] = ("mean_return", "final_return")) -> str:
    """The study as a markdown table: one row per agent and N, mean [95% CI] over seeds."""
    from ringrl.stats import describe

    head = "| agent | N | " + " | ".join(metrics) + " | train tokens/s |"
    lines = [head, "|" + "---|" * (len(metrics) + 3)]
    for name, by_metric in result["results"].items():
        for N in sorted(by_metric[metrics[0]], key=int):
            cells = [describe(by_metric[m][N], 3) for m in metrics]
            tok = result.get("train_tokens_per_s", {}).get(name, {}).get(N)
            lines.append(
                f"| {name} | {N} | "
                + " | ".join(cells)
                + f" | {'' if tok is None else f'{tok:,.0f}'} |"
            )
    for kind, level in result.get("levels", {}).items():
        cells = [describe(level[m], 3) for m in metrics]
        lines.append(f"| {kind} | - | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


# ---- CLI ----------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help=f"task family: {', '.join(FAMILY_PRESETS)}")
    parser.add_argument(
        "--n", type=_ints, default=None, help="episodes in context (default: preset)"
    )
    parser.add_argument(
        "--seeds", type=_ints, default=None, help="training seeds (default: preset)"
    )
    parser.add_argument("--agents", default=None, help="comma-separated: ad,at (default: preset)")
    parser.add_argument("--quick", action="store_true", help="the preset's reduced study (<15 min)")
    parser.add_argument("--preset", default=None, help="a study YAML (default: configs/scaling/)")
    parser.add_argument(
        "--run-dir", required=True, help="study directory (resumable): scaling.json, scaling.png"
    )
    parser.add_argument(
        "--no-new-runs",
        action="store_true",
        help="aggregate the finished runs only (train and evaluate nothing new)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    study = load_study(args.task, quick=args.quick, preset=args.preset)
    if args.n:
        study["n"] = args.n
    if args.seeds:
        study["seeds"] = args.seeds
    if args.agents:
        study["agents"] = [a.strip() for a in args.agents.split(",") if a.strip()]
    unknown = set(study["agents"]) - {"ad", "at", "dt", "bc"}
    if unknown:
        raise StudyError(f"--agents: unknown {sorted(unknown)}; known: ad, at, dt, bc")
    result = run_study(
        study, args.run_dir, progress=not args.no_progress, new_runs=not args.no_new_runs
    )
    print("\n".join(summary_lines(result)))
    print(f"wrote {Path(args.run_dir) / 'scaling.json'} and scaling.png")
    return 0
