"""Learning-history datasets of every task family, with the default sizes, in one command.

``python scripts/collect_families.py [--out-dir data/families] [--seed 0] [--force]`` runs, for
each family, ``ringrl collect TASK --policy history`` (see :mod:`agents.collect.families`):

- ``bandit-thompson.hdf5``: ``ringrl/bandit-v0``, Thompson sampling, 1000 instances x 500 pulls
  (about a minute on 2 cores);
- ``darkroom-learner.hdf5``: ``ringrl/darkroom-v0``, 65 train goals x 100 episodes (seconds);
- ``darkroom_hard-learner.hdf5``: ``ringrl/darkroom_hard-v0``, 231 train goals x 100 episodes.

Extra arguments after ``--`` go to every ``ringrl collect`` call (e.g. ``-- --quiet``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agents.collect.cli import main as collect

DATASETS = {
    "ringrl/bandit-v0": "bandit-thompson.hdf5",
    "ringrl/darkroom-v0": "darkroom-learner.hdf5",
    "ringrl/darkroom_hard-v0": "darkroom_hard-learner.hdf5",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="data/families", help="directory of the datasets")
    parser.add_argument("--seed", type=int, default=0, help="collection seed")
    parser.add_argument("--force", action="store_true", help="replace existing datasets")
    args = parser.parse_args(argv)
    for task, name in DATASETS.items():
        out = Path(args.out_dir) / name
        cmd = [task, "--policy", "history", "--out", str(out), "--seed", str(args.seed)]
        rc = collect([*cmd, *(["--force"] if args.force else []), *extra])
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
