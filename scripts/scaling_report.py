"""Print a scaling study's results (``scaling.json``) as the markdown table of docs/scaling.md.

python scripts/scaling_report.py runs/scaling_bandit [--metrics mean_return,final_return]
"""

import argparse
import json
import sys
from pathlib import Path

from ringrl.cli import run_script
from ringrl.scaling import markdown_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="a study directory (or its scaling.json)")
    parser.add_argument("--metrics", default="mean_return,final_return,mean_return_first64")
    args = parser.parse_args(argv)
    path = Path(args.study)
    path = path / "scaling.json" if path.is_dir() else path
    result = json.loads(path.read_text())
    print(markdown_table(result, tuple(args.metrics.split(","))))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
