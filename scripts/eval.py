"""Same as ``ringrl eval ...``: ``python scripts/eval.py --help``."""

import sys

from ringrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
