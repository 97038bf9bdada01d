"""``ringrl compare``: the ExoRL comparison of the Ring Attention paper (Table 5), from presets.

For each task x method x seed:

1. make (or reuse) the task's dataset, ``<data-dir>/<task>/explore.hdf5``
   (``ringrl collect <env> --policy explore``: RND exploration, the task's rewards recorded);
2. train ``configs/<scale>/<task>/<method>.yaml`` with ``train.seed=<seed>`` into
   ``<run-dir>/<task>/<method>/seed<seed>`` (``ringrl train``; resumes an interrupted run);
3. evaluate it (``ringrl eval``: ``--trials`` trials of 2N in-context episodes for AT, so the
   curve shows whether improvement continues past the training context; DT and BC
   ``--dt-episodes`` independent episodes), on reset seeds of its own
   (:func:`ringrl.evaluate.seed_block`: no seed shared by two trials, training seeds or methods);
4. once per task and seed, the uniform-random and best-constant baselines
   (:func:`run_baselines`), on a seed block of their own: two rows of the table.

Then writes ``results.json``, ``results.md`` and ``curves_<task>.png``: per method the mean over
training seeds of the final in-context episode's return (the headline), of the mean over a
trial's episodes and of the AT paper's max over them (labelled), each with a 95% percentile
bootstrap interval over seeds (:mod:`ringrl.stats`), and the bootstrap interval of the
difference between the largest-context AT and each baseline. Every stage whose output exists is
skipped, so running the same command again resumes where it stopped (across sessions).
``--publish DIR`` also copies every run's ``eval.json`` to ``DIR/runs/<task>/<method>/seed<N>/``
and the report files to ``DIR``, so that they can be committed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
METHODS = {
    "local": ("bc10", "dt", "at_n1", "at_bpt_n2", "at_ra_n4"),
    "paper": ("bc10", "dt", "at_me_n32", "at_bpt_n32", "at_ra_n128"),
}
LABELS = {
    "bc10": "BC-10%",
    "dt": "DT",
    "at_n1": "AT N=1",
    "at_bpt_n2": "AT+BPT (N=2)",
    "at_ra_n4": "AT+RA (N=4)",
    "at_me_n32": "AT+ME (N=32)",
    "at_bpt_n32": "AT+BPT (N=32)",
    "at_ra_n128": "AT+RA (N=128)",
    "random": "uniform random",
    "constant": "best constant action",
}
BASELINE_ROWS = ("random", "constant")
# Ring Attention paper, Table 5 (ExoRL, "cumulative return, as per ExoRL": units not stated, no
# seeds). Local presets are matched to the paper's method of the same kind at the paper's N.
PAPER_TABLE5 = {
    "walker_stand": {"bc10": 52.91, "dt": 34.54, "at_bpt_n32": 95.45, "at_ra_n128": 98.23},
    "walker_run": {"bc10": 34.81, "dt": 49.82, "at_bpt_n32": 105.88, "at_ra_n128": 110.45},
    "walker_walk": {"bc10": 13.53, "dt": 34.94, "at_bpt_n32": 78.56, "at_ra_n128": 78.95},
    "cheetah_run": {"bc10": 34.66, "dt": 67.53, "at_bpt_n32": 178.75, "at_ra_n128": 181.34},
    "jaco_reach_top_left": {"bc10": 23.95, "dt": 18.64, "at_bpt_n32": 87.56, "at_ra_n128": 89.51},
    "cartpole_swingup": {"bc10": 56.82, "dt": 67.56, "at_bpt_n32": 120.56, "at_ra_n128": 123.45},
}
PAPER_METHOD = {"at_bpt_n2": "at_bpt_n32", "at_ra_n4": "at_ra_n128"}
METHOD_INDEX = {m: i for i, m in enumerate(dict.fromkeys(sum(METHODS.values(), ())))}
BASELINES = "baselines"  # uniform-random and best-constant rows: seed blocks of their own
METHOD_INDEX[BASELINES] = len(METHOD_INDEX)


def paper_value(task: str, method: str) -> str:
    if method == "at_me_n32":
        return "oom"
    value = PAPER_TABLE5.get(task, {}).get(PAPER_METHOD.get(method, method))
    return "" if value is None else f"{value:.2f}"


def dataset(task: str, data_dir: Path, steps: int, policy: str, update_every: int = 4) -> Path:
    """The task's exploration dataset (collected when missing)."""
    import envs
    from ringrl.cli import main as cli

    out = data_dir / task / "explore.hdf5"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{task}] collecting {steps} steps ({policy}) -> {out}", flush=True)
    argv = ["collect", envs.exorl_task(task), "--policy", policy, "--steps", str(steps)]
    argv += ["--out", str(out), "--quiet"]
    if policy != "random":
        argv += ["--eval-every", "100000000", "--update-every", str(update_every)]
    if cli(argv) != 0:
        raise RuntimeError(f"collecting {task} failed")
    return out


def run_one(task: str, method: str, seed: int, data: Path, args: argparse.Namespace) -> dict:
    """Train (or resume) and evaluate one preset with one seed; returns its ``eval.json``."""
    from ringrl.config import load_config
    from ringrl.evaluate import evaluate, seed_block
    from ringrl.train import train

    run_dir = Path(args.run_dir) / task / method / f"seed{seed}"
    done = run_dir / "eval.json"
    if done.exists():
        return json.loads(done.read_text())
    preset = ROOT / "configs" / args.scale / task / f"{method}.yaml"
    overrides = [f"data.path={data}", f"train.seed={seed}", *args.overrides]
    cfg = load_config(preset, overrides)
    print(f"[{task}] {method} seed {seed}: training {cfg.train.steps} steps", flush=True)
    if train(cfg, run_dir, progress=sys.stderr.isatty()) != 0:
        raise RuntimeError(f"training {run_dir} failed")
    print(f"[{task}] {method} seed {seed}: evaluating", flush=True)
    episodes = None if cfg.agent.kind == "at" else args.dt_episodes
    return evaluate(
        run_dir,
        trials=args.trials,
        num_envs=args.envs,
        episodes=episodes,
        seed=seed_block(METHOD_INDEX[method], seed),
        with_baselines=False,  # once per task and seed: run_baselines
    )


def run_baselines(task: str, seed: int, args: argparse.Namespace) -> dict:
    """Uniform-random and best-constant returns for one seed of the table's baseline rows.

    Both policies ignore their history, so each of their episodes is an independent draw and
    the number of episodes per trial does not change what they measure; they are run once per
    task and seed (``--trials`` trials of ``--dt-episodes`` episodes, on a reset-seed block of
    their own) rather than beside every method, where they cost more env steps than the
    methods themselves. Written to ``<run-dir>/<task>/baselines/seed<seed>/baselines.json``.
    """
    import envs
    from ringrl.evaluate import baseline_fields, baselines, reset_seeds, seed_block
    from ringrl.rundir import write_text_atomic

    out = baselines_file(args, task, seed)
    if out.exists():
        return json.loads(out.read_text())
    env_id = envs.exorl_task(task)
    env = envs.make(env_id)
    act_dim = int(np.prod(env.action_space.shape))
    env.close()
    first = seed_block(METHOD_INDEX[BASELINES], seed)
    K = args.dt_episodes
    print(f"[{task}] baselines seed {seed}", flush=True)
    base = baselines(
        env_id, act_dim, trials=args.trials, episodes=K, num_envs=args.envs, seed=first
    )
    result = {
        "task": env_id,
        "train_seed": seed,
        "trials": args.trials,
        "episodes": K,
        **baseline_fields(base),
        "reset_seeds": reset_seeds(first, args.trials, K).tolist(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(result, indent=1))
    return result


def aggregate(results: dict[str, dict[str, list[dict]]]) -> dict:
    """``results[task][method]`` = one eval.json per seed -> intervals over seeds."""
    from ringrl.stats import interval

    table = {}
    for task, by_method in results.items():
        table[task] = {}
        for method, runs in by_method.items():

            def over_seeds(key: str, runs=runs) -> dict:
                values = [r[key] for r in runs if key in r]
                if not values:  # an older eval.json without this number
                    return {"per_seed": [], "mean": float("nan"), "ci95": [float("nan")] * 2}
                return interval(values)

            curves = [r["episode_return_mean"] for r in runs]
            K = min(map(len, curves))
            table[task][method] = {
                "seeds": len(runs),
                "train_seeds": [r.get("train_seed") for r in runs],
                "episodes": K,
                "trials": [r.get("trials") for r in runs],
                "final": over_seeds("final_return_mean"),
                "mean": over_seeds("mean_return_mean"),
                "max": over_seeds("max_return_mean"),
                "paper": paper_value(task, method),
                "curve": np.mean([c[:K] for c in curves], 0).tolist(),
                "compute": compute_summary([r.get("compute") for r in runs]),
            }
    return table


def compute_summary(computes: list[dict | None]) -> dict | None:
    """One method's training cost over its seeds: the budget (the same for every seed) and
    the median rate and time."""
    computes = [c for c in computes if c]
    if not computes:
        return None
    first = computes[0]
    evals = [c["evals_during_training"] for c in computes if c.get("evals_during_training")]
    K = min(map(len, evals), default=0)
    return {
        "updates": first["updates"],
        "action_targets": first["action_targets"],
        "tokens": first["tokens"],
        "tokens_per_s": float(np.median([c["tokens_per_s"] for c in computes])),
        "train_s": float(np.median([c["train_s"] for c in computes])),
        # per evaluation during training: its update and the mean over seeds of its return
        "evals_during_training": [
            [evals[0][k][0], float(np.mean([e[k][1] for e in evals]))] for k in range(K)
        ],
    }


def context_size(method: str) -> int:
    """N, the episodes a preset's chains hold, from its name (``at_ra_n4``: 4)."""
    match = re.search(r"_n(\d+)$", method)
    return int(match.group(1)) if match else 1


def significance(table: dict, methods: list[str]) -> dict:
    """Per task: the largest-context AT against every other method, on final returns."""
    from ringrl.stats import difference

    out = {}
    at = [m for m in methods if m.startswith("at_")]
    if not at:
        return out
    best = max(at, key=context_size)
    for task, by_method in table.items():
        if best not in by_method:
            continue
        a = by_method[best]["final"]["per_seed"]
        out[task] = {}
        for other in methods:
            if other == best or other not in by_method:
                continue
            b = by_method[other]["final"]["per_seed"]
            if len(a) > 1 and len(b) > 1:
                out[task][other] = {"against": best, **difference(a, b)}
    return out


def reused_reset_seeds(results: dict[str, dict[str, list[dict]]]) -> int:
    """Reset seeds (per task) that more than one agent episode of the comparison used."""
    reused = 0
    for by_method in results.values():
        counts = Counter(
            s
            for method, runs in by_method.items()
            if method != "constant"  # the random row's seeds, by construction (paired)
            for r in runs
            for s in np.asarray(r.get("reset_seeds", []), dtype=np.int64).ravel().tolist()
        )
        reused += sum(1 for c in counts.values() if c > 1)
    return reused


def markdown(table: dict, scale: str, signif: dict | None = None, reused: int | None = None) -> str:
    from ringrl.stats import describe

    lines = [
        f"Returns per episode, `configs/{scale}` presets: mean over training seeds with a 95%",
        "percentile-bootstrap interval over seeds. *final*: the last in-context episode (the",
        "headline); *mean*: the mean over a trial's episodes; *max*: the best episode of a trial,",
        "the AT paper's metric (optimistic). *uniform random* / *best constant action*: the",
        "baselines, on reset seeds of their own, the same for both (their episodes are",
        "independent draws: the episode index does not matter). *paper*: Table 5 of the Ring",
        'Attention paper, whose units are not stated ("cumulative return, as per ExoRL"), for a',
        "model, data and N of its own: not comparable to these numbers.",
        "",
        "| task | method | seeds | final | mean | max (AT paper) | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, by_method in table.items():
        for method, r in by_method.items():
            lines.append(
                f"| {task} | {LABELS.get(method, method)} | {r['seeds']} | "
                f"{describe(r['final'])} | {describe(r['mean'])} | {describe(r['max'])} | "
                f"{r['paper']} |"
            )
    if signif:
        lines += ["", "Differences in final return (bootstrap interval of the difference of means"]
        lines += ["over seeds; *significant*: 0 outside the 95% interval):", ""]
        for task, by_other in signif.items():
            for other, d in by_other.items():
                verdict = "significant" if d["significant"] else "not significant"
                lines.append(
                    f"- {task}: {LABELS.get(d['against'], d['against'])} − "
                    f"{LABELS.get(other, other)} = {describe(d)}: {verdict}"
                )
    costs = [(t, m, r["compute"]) for t, rows in table.items() for m, r in rows.items()]
    costs = [(t, m, c) for t, m, c in costs if c]
    if costs:
        lines += ["", "Training cost per run (the same budget for every seed; rate and time:",
                  "median over seeds, at the logged rate, without compilation and evaluations;",
                  "*during training*: the short evaluations of `train.eval_every`, mean over",
                  "seeds, as update: return -- still rising at the end means under-trained):",
                  "",
                  "| task | method | updates | action targets | tokens | tokens/s | train min "
                  "| during training |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for task, method, c in costs:
            during = ", ".join(f"{u}: {r:.1f}" for u, r in c.get("evals_during_training", []))
            lines.append(
                f"| {task} | {LABELS.get(method, method)} | {c['updates']} | "
                f"{c['action_targets']:,} | {c['tokens']:,} | {c['tokens_per_s']:,.0f} | "
                f"{c['train_s'] / 60:.1f} | {during} |"
            )
    if reused is not None:
        lines += ["", f"Reset seeds used by more than one agent episode: {reused}."]
    return "\n".join(lines) + "\n"


def plot(task: str, by_method: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, r in by_method.items():
        if method in BASELINE_ROWS:
            ls = ":" if method == "random" else "-."
            ax.axhline(r["mean"]["mean"], color="gray", ls=ls, label=LABELS[method])
            continue
        x = np.arange(1, len(r["curve"]) + 1)
        ax.plot(x, r["curve"], marker="o", label=LABELS.get(method, method))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("episode in context (trial)")
    ax.set_ylabel("return (mean over seeds)")
    ax.set_title(task)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def finished(args: argparse.Namespace) -> dict[str, dict[str, list[dict]]]:
    """The ``eval.json`` of every task x method x seed already done (nothing is run)."""
    results: dict[str, dict[str, list[dict]]] = {}
    for task in args.tasks:
        for method in args.methods:
            runs = [
                Path(args.run_dir) / task / method / f"seed{s}" / "eval.json" for s in args.seeds
            ]
            done = [
                {**json.loads(r.read_text()), "compute": compute_of(r.parent)}
                for r in runs
                if r.exists()
            ]
            if done:
                results.setdefault(task, {})[method] = done
        base = [baselines_file(args, task, s) for s in args.seeds]
        base = [json.loads(p.read_text()) for p in base if p.exists()]
        for row in BASELINE_ROWS if base else ():
            results.setdefault(task, {})[row] = [baseline_row(b, row) for b in base]
    return results


def compute_of(run_dir: Path) -> dict | None:
    """What one run's training cost: updates, action targets and tokens (from its
    ``config.yaml``, ``data.json`` and ``eval.json``), the median of the ``tokens_per_s`` it
    logged, and the training time at that rate (compilation and evaluations excluded)."""
    from ringrl.config import load_config
    from ringrl.ops.layouts import padded_steps
    from ringrl.train import agent_config

    paths = [run_dir / n for n in ("config.yaml", "data.json", "eval.json", "metrics.jsonl")]
    if not all(p.exists() for p in paths):
        return None
    cfg = load_config(paths[0])
    data, done = (json.loads(p.read_text()) for p in paths[1:3])
    rows = [json.loads(line) for line in paths[3].read_text().splitlines() if line.strip()]
    rates = [row["tokens_per_s"] for row in rows if "tokens_per_s" in row]
    evals = [[row["step"], row["eval_final_return"]] for row in rows if "eval_final_return" in row]
    acfg = agent_config(cfg, data["obs_dim"], data["act_dim"], data.get("discrete", False))
    ring = cfg.model.attention == "ring"
    shards = cfg.train.mesh_seq if ring else 1
    steps = padded_steps(acfg.context_steps, acfg.step_tokens, cfg.model.block_size, shards, ring)
    updates = int(done.get("checkpoint_step") or cfg.train.steps)
    tokens = updates * cfg.train.batch_size * steps * acfg.step_tokens
    rate = float(np.median(rates)) if rates else float("nan")
    return {
        "updates": updates,
        "action_targets": round(updates * data["action_targets_per_update"]),
        "tokens": tokens,
        "tokens_per_s": rate,
        "train_s": tokens / rate if rates else float("nan"),
        "evals_during_training": evals,  # [update, final return of its short evaluation]
    }


def baselines_file(args: argparse.Namespace, task: str, seed: int) -> Path:
    """Where :func:`run_baselines` writes one task and seed's baselines."""
    return Path(args.run_dir) / task / BASELINES / f"seed{seed}" / "baselines.json"


def baseline_row(base: dict, row: str) -> dict:
    """One seed of a baseline row, in ``eval.json``'s terms (``row``: random or constant)."""
    returns = np.asarray(base[f"{row}_returns"])  # [trials, episodes]
    return {
        "final_return_mean": float(returns[:, -1].mean()),
        "mean_return_mean": float(returns.mean()),
        "max_return_mean": float(returns.max(1).mean()),
        "episode_return_mean": returns.mean(0).tolist(),
        "train_seed": base["train_seed"],
        "trials": base["trials"],
        "reset_seeds": base["reset_seeds"],
    }


def compare(args: argparse.Namespace) -> dict:
    out = Path(args.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not getattr(args, "report_only", False):
        for task in args.tasks:
            data = dataset(
                task,
                Path(args.data_dir),
                args.collect_steps,
                args.collect_policy,
                args.collect_update_every,
            )
            for s in args.seeds:
                run_baselines(task, s, args)
            for m in args.methods:
                for s in args.seeds:
                    run_one(task, m, s, data, args)
    results = finished(args)
    if not results:
        raise SystemExit(f"no finished runs under {out}")
    table = aggregate(results)
    signif = significance(table, [*args.methods, *BASELINE_ROWS])
    reused = reused_reset_seeds(results)
    report = {"table": table, "significance": signif, "reused_reset_seeds": reused}
    text = markdown(table, args.scale, signif, reused)
    targets = [out]
    if getattr(args, "publish", None):
        targets.append(Path(args.publish))
        publish_runs(args, Path(args.publish))
    for d in targets:
        d.mkdir(parents=True, exist_ok=True)
        (d / "results.json").write_text(json.dumps(report, indent=1))
        (d / "results.md").write_text(text)
        for task, by_method in table.items():
            plot(task, by_method, d / f"curves_{task}.png")
    print(text)
    return table


def publish_runs(args: argparse.Namespace, dest: Path) -> None:
    """Copy every finished run's ``eval.json`` (with ``data.json``, ``config.yaml`` and
    ``metrics.jsonl``, what :func:`compute_of` reads), and the baselines' ``baselines.json``,
    under ``dest/runs/``: ``ringrl compare --report-only --run-dir DIR/runs`` remakes the
    report from them."""
    for task in args.tasks:
        for method in args.methods:
            for s in args.seeds:
                src = Path(args.run_dir) / task / method / f"seed{s}"
                for name in ("eval.json", "data.json", "config.yaml", "metrics.jsonl"):
                    if (src / name).exists():
                        target = dest / "runs" / task / method / f"seed{s}" / name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(src / name, target)
        for s in args.seeds:
            src = baselines_file(args, task, s)
            if src.exists():
                target = dest / "runs" / task / BASELINES / f"seed{s}" / src.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    csv = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    parser.add_argument(
        "--tasks",
        type=csv,
        default=list(PAPER_TABLE5),
        help="comma-separated ExoRL tasks (default: all six)",
    )
    parser.add_argument(
        "--methods", type=csv, default=None, help="comma-separated presets (default: the scale's)"
    )
    parser.add_argument(
        "--seeds",
        type=lambda s: [int(x) for x in csv(s)],
        default=[0, 1, 2, 3, 4],
        help="training seeds (default: 0,1,2,3,4)",
    )
    parser.add_argument(
        "--scale",
        default="local",
        choices=["local", "paper"],
        help="presets: configs/local (this machine's sizes) or configs/paper "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--run-dir", default="runs/compare", help="runs and the report (default: %(default)s)"
    )
    parser.add_argument(
        "--data-dir", default="data", help="datasets, <task>/explore.hdf5 (default: %(default)s)"
    )
    parser.add_argument(
        "--collect-steps",
        type=int,
        default=40_000,
        help="dataset size: 40 episodes of 1000 steps (160 of jaco's 250), 10 x N for N = 4 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--collect-update-every",
        type=int,
        default=4,
        help="env steps per RND/SAC update of the exploration (default: %(default)s: a quarter "
        "of ExoRL's update-to-data ratio, four times faster on a CPU)",
    )
    parser.add_argument(
        "--collect-policy",
        default="explore",
        choices=["explore", "random"],
        help="behaviour of missing datasets' collection (default: %(default)s)",
    )
    parser.add_argument("--trials", type=int, default=10, help="trials per seed (default: 10)")
    parser.add_argument(
        "--dt-episodes", type=int, default=2, help="episodes per trial of DT/BC (default: 2)"
    )
    parser.add_argument(
        "--envs", type=int, default=10, help="parallel environments (default: %(default)s)"
    )
    parser.add_argument(
        "--publish", default=None, help="copy eval.json files and the report here (default: no)"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: tabulate and plot the runs already finished (the seeds column says "
        "how many)",
    )
    from ringrl.config import add_override_argument

    add_override_argument(parser, "a key in every preset")


def run(args: argparse.Namespace) -> int:
    args.methods = args.methods or list(METHODS[args.scale])
    unknown = [m for m in args.methods if m not in METHODS[args.scale]]
    if unknown:
        print(f"unknown methods {unknown}; known: {list(METHODS[args.scale])}", file=sys.stderr)
        return 2
    unknown = [t for t in args.tasks if not (ROOT / "configs" / args.scale / t).is_dir()]
    if unknown:
        print(f"no configs/{args.scale} presets for tasks {unknown}", file=sys.stderr)
        return 2
    compare(args)
    return 0
