"""The house's layout: the benchmarks stay outside the library's import graph."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "ringrl" / "bench"


def library_modules() -> list[str]:
    """Every module of ``ringrl`` (but ``ringrl.bench``), ``agents`` and ``envs``, from the files
    (``pkgutil.walk_packages`` would import ``ringrl.bench`` itself to walk it)."""
    names = []
    for top in ("ringrl", "agents", "envs"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if BENCH in path.parents:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return names


def test_library_modules_do_not_import_the_benchmarks():
    names = library_modules()
    assert {"ringrl", "ringrl.cli", "ringrl.train", "ringrl.evaluate", "agents"} <= set(names)
    code = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "bench = [m for m in sys.modules if m.split('.')[:2] == ['ringrl', 'bench']]\n"
        "print(json.dumps(sorted(bench)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == []


def private_imports(source: str) -> list[str]:
    """Private names (``_name``) of ``ringrl``, ``agents`` or ``envs`` that ``source`` imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] not in ("ringrl", "agents", "envs"):
                continue
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            found += [node.module] if any(p.startswith("_") for p in node.module.split(".")) else []
        elif isinstance(node, ast.Import):
            found += [
                a.name
                for a in node.names
                if a.name.split(".")[0] in ("ringrl", "agents", "envs")
                and any(p.startswith("_") for p in a.name.split("."))
            ]
    return found


def test_private_imports_are_seen():
    source = (
        "import numpy as np\n"
        "from ringrl.ops import attention\n"
        "from numpy import _core\n"
        "def f():\n"
        "    from ringrl.train import _load_episodes, init_state\n"
        "    from ringrl.data._validate import fail\n"
        "    import agents._private\n"
    )
    assert private_imports(source) == [
        "ringrl.train._load_episodes",
        "ringrl.data._validate",
        "agents._private",
    ]


def test_benchmarks_use_only_public_library_names():
    found = {p.name: private_imports(p.read_text()) for p in sorted(BENCH.glob("*.py"))}
    assert len(found) > 5
    assert {name: names for name, names in found.items() if names} == {}
