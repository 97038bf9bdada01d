"""The ``ringrl`` console script.

Each subcommand lives in its own module, which defines ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported lazily so that ``ringrl --help`` stays fast and a
subcommand's heavy imports (jax, mujoco) happen only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

HOST_DEVICES = os.environ.get("RINGRL_HOST_DEVICES", "8")


# Emulated host devices share a few cores, so one device can reach a collective (a ring
# ppermute) long before the others: XLA's CPU runtime aborts the process when a collective waits
# more than 40 s by default. Long ring steps (128K tokens on 2 cores) need far more.
COLLECTIVE_TIMEOUTS = {
    "xla_cpu_collective_call_terminate_timeout_seconds": 24 * 3600,
    "xla_cpu_collective_call_warn_stuck_timeout_seconds": 600,
}


def emulate_host_devices(n: int | str = HOST_DEVICES) -> None:
    """Give the CPU backend ``n`` devices (ring attention on one host) before jax loads.

    Only the CPU platform is affected; an existing device count in ``XLA_FLAGS`` is kept. Also
    raises the CPU collectives' stuck/terminate timeouts (see ``COLLECTIVE_TIMEOUTS``).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    extra = []
    if "xla_force_host_platform_device_count" not in flags:
        extra.append(f"--xla_force_host_platform_device_count={n}")
    extra += [f"--{k}={v}" for k, v in COLLECTIVE_TIMEOUTS.items() if k not in flags]
    os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


VECTOR_WIDTH_FLAG = "xla_cpu_prefer_vector_width"


def has_avx512(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this (Linux) host's CPU has AVX-512F; False where that cannot be read."""
    try:
        with open(cpuinfo) as f:
            return any(line.startswith("flags") and "avx512f" in line.split() for line in f)
    except OSError:
        return False


def prefer_wide_vectors() -> None:
    """Let XLA's CPU backend emit 512-bit vector code on AVX-512 hosts (before jax loads).

    XLA's own element-wise code (``exp``, the softmax's other passes, the attention kernel's
    slicing) is emitted for 256-bit vectors by default, even where the CPU has AVX-512; the
    matmuls, which run in YNNPACK, already use 512-bit vectors. On the 2-core Xeon of
    docs/benchmarks.md, 512-bit vectors make the attention kernel's ``exp`` passes 1.4-1.6x
    faster and ring attention's forward+backward 5% faster. Nothing changes on other CPUs, and
    a width already set in ``XLA_FLAGS`` is kept.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if VECTOR_WIDTH_FLAG not in flags and has_avx512():
        os.environ["XLA_FLAGS"] = f"{flags} --{VECTOR_WIDTH_FLAG}=512".strip()


def _emulate_host_devices() -> None:
    """``RINGRL_HOST_DEVICES`` (default 8) CPU devices and wide vectors on AVX-512 hosts,
    unless jax is already imported."""
    if "jax" not in sys.modules:
        emulate_host_devices(HOST_DEVICES)
        prefer_wide_vectors()


# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("agents.collect.cli", "make a D4RL-layout dataset by running a behaviour policy"),
    "train": ("ringrl.train", "train an agent from a config preset"),
    "eval": ("ringrl.evaluate", "roll out a trained agent in its environment"),
    "bench": ("ringrl.bench.cli", "attention / context benchmarks"),
    "quickstart": ("ringrl.quickstart", "collect, train, evaluate end to end on a small task"),
    "compare": ("ringrl.compare", "the ExoRL comparison (paper's Table 5) from the presets"),
}


def main(argv: list[str] | None = None) -> int:
    _emulate_host_devices()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":  # benchmarks parse their own options
        from ringrl.bench.cli import main as bench_main

        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(prog="ringrl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    available = {}
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):
                continue  # subcommand not built yet
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        available[name] = module
    args = parser.parse_args(argv)
    return int(available[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
