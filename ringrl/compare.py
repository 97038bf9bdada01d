"""``ringrl compare``: the ExoRL comparison of the Ring Attention paper (Table 5), from presets.

For each task x method x seed:

1. make (or reuse) the task's dataset, ``<data-dir>/<task>/explore.hdf5``
   (``ringrl collect <env> --policy explore``: RND exploration, the task's rewards recorded);
2. train ``configs/<scale>/<task>/<method>.yaml`` with ``train.seed=<seed>`` into
   ``<run-dir>/<task>/<method>/seed<seed>`` (``ringrl train``; resumes an interrupted run);
3. evaluate it (``ringrl eval``: AT over its N in-context episodes with the KV cache, DT and
   BC one episode per trial; a uniform-random policy on the same seeds).

Then writes ``results.json``, ``results.md`` (mean +- std over seeds of the final-episode
return and of the AT paper's max-over-episodes return, beside the paper's Table 5 numbers) and
``curves_<task>.png`` (in-context curves, one line per method). Every stage whose output exists
is skipped, so running the same command again resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("bc10", "dt", "at_me_n32", "at_bpt_n32", "at_ra_n128")
LABELS = {
    "bc10": "BC-10%",
    "dt": "DT",
    "at_me_n32": "AT+ME (N=32)",
    "at_bpt_n32": "AT+BPT (N=32)",
    "at_ra_n128": "AT+RA (N=128)",
}
# Ring Attention paper, Table 5 (ExoRL, "cumulative return, as per ExoRL"; no seeds stated)
PAPER_TABLE5 = {
    "walker_stand": {"bc10": 52.91, "dt": 34.54, "at_bpt_n32": 95.45, "at_ra_n128": 98.23},
    "walker_run": {"bc10": 34.81, "dt": 49.82, "at_bpt_n32": 105.88, "at_ra_n128": 110.45},
    "walker_walk": {"bc10": 13.53, "dt": 34.94, "at_bpt_n32": 78.56, "at_ra_n128": 78.95},
    "cheetah_run": {"bc10": 34.66, "dt": 67.53, "at_bpt_n32": 178.75, "at_ra_n128": 181.34},
    "jaco_reach_top_left": {"bc10": 23.95, "dt": 18.64, "at_bpt_n32": 87.56, "at_ra_n128": 89.51},
    "cartpole_swingup": {"bc10": 56.82, "dt": 67.56, "at_bpt_n32": 120.56, "at_ra_n128": 123.45},
}


def dataset(task: str, data_dir: Path, steps: int, policy: str) -> Path:
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
        argv += ["--eval-every", "100000000"]
    if cli(argv) != 0:
        raise RuntimeError(f"collecting {task} failed")
    return out


def run_one(task: str, method: str, seed: int, data: Path, args: argparse.Namespace) -> dict:
    """Train (or resume) and evaluate one preset with one seed; returns its ``eval.json``."""
    from ringrl.config import load_config
    from ringrl.evaluate import evaluate
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
    return evaluate(
        run_dir, trials=args.trials, num_envs=args.envs, episodes=None, seed=1000 * seed
    )


def aggregate(results: dict[str, dict[str, list[dict]]]) -> dict:
    """``results[task][method]`` = one eval.json per seed -> means and stds over seeds."""
    table = {}
    for task, by_method in results.items():
        table[task] = {}
        for method, runs in by_method.items():
            final = np.array([r["final_return_mean"] for r in runs])
            best = np.array([r["max_return_mean"] for r in runs])
            table[task][method] = {
                "seeds": len(runs),
                "final_mean": float(final.mean()),
                "final_std": float(final.std()),
                "max_mean": float(best.mean()),
                "max_std": float(best.std()),
                "random_mean": float(np.mean([r["random_return_mean"] for r in runs])),
                "paper": PAPER_TABLE5.get(task, {}).get(method),
                "curve": np.mean([r["episode_return_mean"] for r in runs], 0).tolist(),
            }
    return table


def markdown(table: dict, scale: str) -> str:
    lines = [
        f"Returns per episode, `configs/{scale}` presets, mean ± std over seeds. *final*: the",
        "last in-context episode (the honest number); *max*: best episode of a trial, the AT",
        "paper's metric. *paper*: Table 5 of the Ring Attention paper (its own scale and data).",
        "",
        "| task | method | seeds | final | max | random | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, by_method in table.items():
        for method, r in by_method.items():
            paper = "oom" if method == "at_me_n32" else f"{r['paper']:.2f}"
            lines.append(
                f"| {task} | {LABELS[method]} | {r['seeds']} | {r['final_mean']:.1f} ± "
                f"{r['final_std']:.1f} | {r['max_mean']:.1f} ± {r['max_std']:.1f} | "
                f"{r['random_mean']:.1f} | {paper} |"
            )
    return "\n".join(lines) + "\n"


def plot(task: str, by_method: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, r in by_method.items():
        x = np.arange(1, len(r["curve"]) + 1)
        ax.plot(x, r["curve"], marker="o", label=LABELS[method])
    ax.axhline(next(iter(by_method.values()))["random_mean"], color="gray", ls=":", label="random")
    ax.set_xlabel("episode in context (trial)")
    ax.set_ylabel("return (mean over seeds)")
    ax.set_title(task)
    ax.legend()
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
            done = [json.loads(r.read_text()) for r in runs if r.exists()]
            if done:
                results.setdefault(task, {})[method] = done
    return results


def compare(args: argparse.Namespace) -> dict:
    out = Path(args.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        results = finished(args)
        if not results:
            raise SystemExit(f"no finished runs under {out}")
    else:
        results = {}
        for task in args.tasks:
            data = dataset(task, Path(args.data_dir), args.collect_steps, args.collect_policy)
            results[task] = {
                m: [run_one(task, m, s, data, args) for s in args.seeds] for m in args.methods
            }
    table = aggregate(results)
    (out / "results.json").write_text(json.dumps(table, indent=1))
    (out / "results.md").write_text(markdown(table, args.scale))
    for task, by_method in table.items():
        plot(task, by_method, out / f"curves_{task}.png")
    print(markdown(table, args.scale))
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    csv = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--tasks", type=csv, default=["cartpole_swingup", "walker_stand"])
    parser.add_argument("--methods", type=csv, default=list(METHODS))
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in csv(s)], default=[0, 1, 2])
    parser.add_argument("--scale", default="local", choices=["local", "paper"])
    parser.add_argument("--run-dir", default="runs/compare")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--collect-steps", type=int, default=20_000)
    parser.add_argument("--collect-policy", default="explore", choices=["explore", "random"])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--envs", type=int, default=4, help="parallel environments")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: tabulate and plot the runs already finished (the seeds column says "
        "how many)",
    )
    from ringrl.config import add_override_argument

    add_override_argument(parser, "a key in every preset")


def run(args: argparse.Namespace) -> int:
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        print(f"unknown methods {unknown}; known: {list(METHODS)}", file=sys.stderr)
        return 2
    unknown = [t for t in args.tasks if not (ROOT / "configs" / args.scale / t).is_dir()]
    if unknown:
        print(f"no configs/{args.scale} presets for tasks {unknown}", file=sys.stderr)
        return 2
    compare(args)
    return 0
