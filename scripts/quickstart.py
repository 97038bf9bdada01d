"""Same as ``ringrl quickstart ...``: ``python scripts/quickstart.py --help``."""

import sys

from ringrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["quickstart", *sys.argv[1:]]))
