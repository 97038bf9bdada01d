"""Faithfulness checks of the in-context evaluation on one trained AT run.

    python scripts/eval_checks.py RUN_DIR --out docs/results/eval_checks.json [--trials 10]

1. KV cache against full recompute, K = 2N and 3N episodes (the largest return difference);
2. the evaluation context's order: ``sorted`` by return (as training) against ``played``, on the
   same reset seeds (paired), with bootstrap intervals of the final and mean returns over trials
   and of their paired difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from ringrl.evaluate import evaluate
from ringrl.stats import describe, interval


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--out", required=True)
    p.add_argument("--trials", type=int, default=10, help="trials for the order ablation")
    p.add_argument("--cache-trials", type=int, default=2, help="trials for cache vs recompute")
    p.add_argument("--envs", type=int, default=5)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp())
    n = json.loads((Path(args.run) / "data.json").read_text())["episodes_per_chain"]
    report: dict = {"run": str(args.run), "N": n, "cache_vs_recompute": [], "order": {}}
    for k in (2 * n, 3 * n):
        kw = dict(trials=args.cache_trials, num_envs=args.envs, episodes=k, with_baselines=False)
        c = evaluate(args.run, decode="cache", out_dir=tmp / f"c{k}", **kw)
        r = evaluate(args.run, decode="recompute", out_dir=tmp / f"r{k}", **kw)
        diff = float(np.abs(np.asarray(c["returns"]) - np.asarray(r["returns"])).max())
        report["cache_vs_recompute"].append(
            {"episodes": k, "max_abs_return_difference": diff, "cache": c["returns"],
             "recompute": r["returns"]}
        )  # fmt: skip
        print(f"K = {k}: cache vs recompute, largest return difference {diff:.2e}", flush=True)
    kw = dict(trials=args.trials, num_envs=args.envs, episodes=2 * n, with_baselines=False)
    runs = {o: evaluate(args.run, order=o, out_dir=tmp / o, **kw) for o in ("sorted", "played")}
    for key, pick in (("final", lambda x: x[:, -1]), ("mean", lambda x: x.mean(1))):
        a, b = (pick(np.asarray(runs[o]["returns"])) for o in ("sorted", "played"))
        entry = {
            "sorted": interval(a),
            "played": interval(b),
            "paired_difference": interval(a - b),
        }
        report["order"][key] = entry
        print(
            f"{key} return: sorted {describe(entry['sorted'])}, played "
            f"{describe(entry['played'])}, sorted - played {describe(entry['paired_difference'])}"
        )
    report["reset_seeds"] = runs["sorted"]["reset_seeds"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
