"""Same as ``ringrl bench ...``: ``python scripts/bench.py --help``."""

import sys

from ringrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
