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


def _emulate_host_devices() -> None:
    """Give the CPU backend several devices (for ring attention on one host) before jax loads.

    Only the CPU platform is affected; set ``RINGRL_HOST_DEVICES`` to change the count.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags and "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={HOST_DEVICES}"


# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("agents.collect.cli", "make a D4RL-layout dataset by running a behaviour policy"),
    "train": ("ringrl.train", "train an agent from a config preset"),
    "eval": ("ringrl.evaluate", "roll out a trained agent in its environment"),
    "bench": ("ringrl.bench.cli", "attention / context benchmarks"),
    "quickstart": ("ringrl.quickstart", "collect, train, evaluate end to end on a small task"),
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
