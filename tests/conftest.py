"""Test configuration: 8 emulated host CPU devices, and a compilation cache for this run.

Many tests compile the same small programs again (every ``evaluate`` call builds its policy's
functions anew, so the cache-vs-recompute tests compile identical programs over and over). JAX's
persistent compilation cache, in a fresh directory per test process that is removed at exit,
hands back the executable compiled earlier in the run instead: what runs is the same program.
It keeps every program, not only those that took over a second to compile (JAX's default): a
third of the suite's 2,500 compilations were of a program compiled before in the same process,
most of them under a second at ``-O0`` (tests/test_kv_cache.py, test_evaluate.py and
test_in_context.py: 122-128 s with every program cached, 131-133 s without). Subprocesses that
tests start do not inherit it (``ringrl train`` tests set their own).

The tests compile hundreds of small programs and run each only a few times, so most of their
time is LLVM optimising the machine code XLA emits. They compile with LLVM at ``-O0``
(``--xla_backend_optimization_level=0``): the same HLO, the same fusions and the same
arithmetic, only less optimised machine code; this halves the suite's compile-bound tests.
They also emit fusions with XLA-CPU's older elemental emitters
(``--xla_cpu_use_fusion_emitters=false``) instead of its MLIR fusion emitters: the same fused
HLO, compiled faster (the ring's forward+backward on 8 devices: 2.5 s -> 1.7 s). Subprocesses
inherit both through ``XLA_FLAGS``. The CLI and the benchmarks keep XLA's defaults.
"""

import atexit
import importlib.util
import os
import shutil
import tempfile
import types
from pathlib import Path

import pytest

from ringrl.cli import emulate_host_devices, prefer_wide_vectors  # jax-free: before jax loads

emulate_host_devices(8)
prefer_wide_vectors()  # the code the CLI runs: 512-bit vectors on AVX-512 hosts
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
if "xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MUJOCO_GL", "egl")

import jax  # noqa: E402  (after the XLA flags above)

_CACHE = tempfile.mkdtemp(prefix="ringrl-tests-jax-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def _load_file(relative: str) -> types.ModuleType:
    """The repository's file ``relative`` (a script, not a package module), imported."""
    path = Path(__file__).resolve().parent.parent / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def load_file():
    """``load_file("scripts/x.py") -> module``: a script of the repository, imported."""
    return _load_file


@pytest.fixture
def run_notebook():
    """``run_notebook(path, **env) -> (figures, text)``: execute a notebook from the repository
    root (``scripts/execute_notebook.py``) with environment variables ``env`` added; the number
    of figures it displayed and all the text it printed."""
    module = _load_file("scripts/execute_notebook.py")

    def run(path: Path, **env: object) -> tuple[int, str]:
        figures, text = module.execute(path, {**os.environ, **{k: str(v) for k, v in env.items()}})
        return len(figures), text

    return run
