"""How many training chains show a later prediction a positive completion flag?

    python scripts/completion_flags.py DATASET.hdf5 [--n 2,4] [--chains 1000] [--out F.json]

*before*: the AT paper's rule (a flag where the trajectory's return reaches the chain's target,
its best return), which sorting puts on the chain's last trajectory; *after*: this project's rule
(:mod:`ringrl.context`: a flag where the return reaches the data's median return). A flag is
*visible* when some later step of the chain -- hence some later action prediction -- follows it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ringrl.context import build_chain, completion_level, visible_completion_fraction
from ringrl.data import load_dataset


def chains(episodes, n: int, count: int, level: float | None, seed: int = 0) -> list[dict]:
    """``count`` chains of ``n`` episodes; ``level`` None: the paper's rule (the chain's best)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        idx = rng.choice(len(episodes), n, replace=len(episodes) < n)
        eps = [episodes[i] for i in idx]
        best = max(float(np.sum(ep.rewards, dtype=np.float64)) for ep in eps)
        out.append(build_chain(eps, success_return=best if level is None else level))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset")
    p.add_argument("--n", default="2,4", help="episodes per chain, comma-separated")
    p.add_argument("--chains", type=int, default=1000)
    p.add_argument("--quantile", type=float, default=0.5, help="completion level quantile")
    p.add_argument("--out", default=None, help="JSON output")
    args = p.parse_args(argv)
    ds = load_dataset(args.dataset)
    level = completion_level(ds.returns, args.quantile)
    rows = []
    for n in (int(x) for x in args.n.split(",")):
        before = chains(ds.episodes, n, args.chains, None)
        after = chains(ds.episodes, n, args.chains, level)
        rows.append(
            {
                "n": n,
                "chains": args.chains,
                "flags_before": int(sum(c["completions"].sum() for c in before)),
                "visible_before": visible_completion_fraction(before),
                "flags_after": int(sum(c["completions"].sum() for c in after)),
                "visible_after": visible_completion_fraction(after),
            }
        )
    print(f"{args.dataset}: {ds.num_episodes} episodes; completion level {level:.1f}")
    print("| N | chains | flags, paper rule | visible | flags, median level | visible |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']} | {r['chains']} | {r['flags_before']} | {r['visible_before']:.3f} | "
            f"{r['flags_after']} | {r['visible_after']:.3f} |"
        )
    if args.out:
        result = {"dataset": str(args.dataset), "episodes": ds.num_episodes, "level": level}
        Path(args.out).write_text(json.dumps({**result, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    from ringrl.cli import run_script

    sys.exit(run_script(main))
