"""Same as ``ringrl collect ...``: ``python scripts/collect.py TASK --policy sac --out PATH``."""

import sys

from agents.collect.cli import main

if __name__ == "__main__":
    sys.exit(main())
