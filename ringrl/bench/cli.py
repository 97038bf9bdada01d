"""``ringrl bench NAME [ARGS]``: the project's benchmarks (each prints Markdown tables).

``ringrl bench NAME --help`` shows a benchmark's own options.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import sys
from collections.abc import Callable, Iterator

BENCHES = {
    "attention": ("ringrl.bench.attention", "attention paths: time, FLOP/s, memory, error, peer"),
    "context": ("ringrl.bench.context", "longest context within a per-device memory budget"),
    "memory": ("ringrl.bench.memory_me_bpt", "ME vs BPT: compiled training-step memory"),
    "data": ("ringrl.bench.data_load", "loading a 1M-step D4RL file"),
    "train": ("ringrl.bench.train_throughput", "training throughput and memory"),
    "eval": ("ringrl.bench.eval_throughput", "rollout throughput with and without KV cache"),
    "gpu": ("ringrl.bench.gpu", "attention kernels (pallas, xla, cuDNN) and a training step"),
}

USAGE = "usage: ringrl bench NAME [ARGS]"


def command_main(
    doc: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> Callable[[list[str] | None], int]:
    """A benchmark's ``main(argv) -> exit code``: its parser (described by the first line of
    ``doc``, options from ``add_arguments``), then ``run`` on the parsed arguments."""

    def main(argv: list[str] | None = None) -> int:
        p = argparse.ArgumentParser(description=doc.splitlines()[0])
        add_arguments(p)
        return run(p.parse_args(argv))

    return main


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bench", choices=sorted(BENCHES), help="which benchmark")
    p.add_argument("bench_args", nargs="*", help="the benchmark's own options (after --)")


def run(args: argparse.Namespace) -> int:
    return _run(args.bench, args.bench_args)


def listing() -> str:
    lines = [f"  {name:10s} {help_text}" for name, (_, help_text) in BENCHES.items()]
    return (
        f"{USAGE}\n\nbenchmarks:\n" + "\n".join(lines) + "\n\n"
        "ringrl bench NAME --help shows a benchmark's options"
    )


@contextlib.contextmanager
def default_prog(prog: str) -> Iterator[None]:
    """While active, the first ``argparse.ArgumentParser`` made without a ``prog`` gets
    ``prog`` (each benchmark builds its own parser, whose usage line would otherwise start with
    the script's name, ``ringrl``, instead of ``ringrl bench NAME``)."""
    original = argparse.ArgumentParser.__init__

    @functools.wraps(original)
    def init(self, *args, **kwargs):
        if not args and kwargs.get("prog") is None:
            kwargs["prog"] = prog
            argparse.ArgumentParser.__init__ = original  # only the benchmark's own parser
        original(self, *args, **kwargs)

    argparse.ArgumentParser.__init__ = init
    try:
        yield
    finally:
        argparse.ArgumentParser.__init__ = original


def _run(name: str, argv: list[str]) -> int:
    module = importlib.import_module(BENCHES[name][0])
    with default_prog(f"ringrl bench {name}"):
        try:
            result = module.main(argv)
        except SystemExit as e:  # the benchmark's --help or argument errors
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return result if isinstance(result, int) else 0  # some return their results


def main(argv: list[str]) -> int:
    """Dispatch ``NAME ARGS...`` without parsing ARGS (each benchmark parses its own)."""
    if argv and argv[0] in ("-h", "--help"):
        print(listing())
        return 0
    if not argv:
        print(listing(), file=sys.stderr)
        return 2
    if argv[0] not in BENCHES:
        print(f"error: unknown benchmark {argv[0]!r}; known: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    return _run(argv[0], argv[1:])
