"""Execute a notebook and keep what it showed: its figures as PNGs and its last printed line.

    python scripts/execute_notebook.py notebooks/long_histories.ipynb --out docs/scaling/darkroom \
        --env RINGRL_SCALING_RUN=runs/scaling_darkroom --env RINGRL_NOTEBOOK_EPISODES=128

writes ``OUT/<notebook>_figure<i>.png`` (every figure, in order) and, when the last printed line
is JSON, ``OUT/<notebook>.json``. The notebook runs from the repository root, as in the tests.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def execute(notebook: Path, env: dict[str, str], timeout: int = 1800) -> tuple[list[str], str]:
    """Run ``notebook`` from the repository root with environment ``env``: the figures it
    displayed (base64 PNG, in order) and all the text it printed."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute(env=env)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    figures = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    return figures, "".join(o.get("text", "") for o in outputs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebook", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs and the JSON")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = p.parse_args(argv)
    if not args.notebook.exists():
        print(f"error: {args.notebook}: no such notebook", file=sys.stderr)
        return 2
    env = dict(os.environ)
    for item in args.env:
        key, eq, value = item.partition("=")
        if not key or not eq:
            print(f"error: --env {item!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        env[key] = value
    from nbclient.exceptions import CellExecutionError

    try:
        figures, printed = execute(args.notebook, env, args.timeout)
    except CellExecutionError as failed:  # the notebook's own error, in one line
        print(
            f"error: {args.notebook}: a cell failed: {failed.ename}: {failed.evalue}",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.notebook.stem
    for i, png in enumerate(figures):
        (args.out / f"{stem}_figure{i}.png").write_bytes(base64.b64decode(png))
    text = printed.strip().splitlines()
    try:
        summary = json.loads(text[-1]) if text else None
    except ValueError:
        summary = None
    if summary is not None:
        summary["command"] = " ".join(
            ["python", "scripts/execute_notebook.py", *(argv or sys.argv[1:])]
        )
        (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(text))
    print(f"wrote {len(figures)} figures{' and a summary' if summary else ''} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
