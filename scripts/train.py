"""Same as ``ringrl train ...``: ``python scripts/train.py --help``."""

import sys

from ringrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
