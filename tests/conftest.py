"""Test configuration: 8 emulated host CPU devices, and a compilation cache for this run.

Many tests compile the same small programs again (every ``evaluate`` call builds its policy's
functions anew, so the cache-vs-recompute tests compile identical programs over and over). JAX's
persistent compilation cache, in a fresh directory per test process that is removed at exit,
hands back the executable compiled earlier in the run instead: what runs is the same program.
Subprocesses that tests start do not inherit it (``ringrl train`` tests set their own).
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from ringrl.cli import emulate_host_devices, prefer_wide_vectors  # jax-free: before jax loads

emulate_host_devices(8)
prefer_wide_vectors()  # the code the CLI runs: 512-bit vectors on AVX-512 hosts
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MUJOCO_GL", "egl")

import jax  # noqa: E402  (after the XLA flags above)

_CACHE = tempfile.mkdtemp(prefix="ringrl-tests-jax-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)


@pytest.fixture
def run_notebook(monkeypatch):
    """``run_notebook(path, **env) -> (figures, text)``: execute a notebook from the repository
    root with environment variables ``env`` set; the number of figures it displayed and all
    the text it printed."""

    def run(path: Path, **env: str) -> tuple[int, str]:
        import nbformat
        from nbclient import NotebookClient

        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        nb = nbformat.read(path, as_version=4)
        NotebookClient(
            nb,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(Path(__file__).resolve().parent.parent)}},
        ).execute(env=dict(os.environ))
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        figures = sum(o.get("output_type") == "display_data" for o in outputs)
        return figures, "".join(o.get("text", "") for o in outputs)

    return run
