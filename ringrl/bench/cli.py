"""``ringrl bench NAME [ARGS]``: the project's benchmarks (each prints Markdown tables).

``ringrl bench NAME --help`` shows a benchmark's own options.
"""

from __future__ import annotations

import argparse
import importlib

BENCHES = {
    "attention": ("ringrl.bench.attention", "attention paths: time, FLOP/s, memory, error, peer"),
    "context": ("ringrl.bench.context", "longest context within a per-device memory budget"),
    "memory": ("ringrl.bench.memory_me_bpt", "ME vs BPT: compiled training-step memory"),
    "data": ("ringrl.bench.data_load", "loading a 1M-step D4RL file"),
    "train": ("ringrl.bench.train_throughput", "training throughput and memory"),
    "eval": ("ringrl.bench.eval_throughput", "rollout throughput with and without KV cache"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bench", choices=sorted(BENCHES), help="which benchmark")
    p.add_argument("bench_args", nargs="*", help="the benchmark's own options (after --)")


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHES[args.bench][0])
    return int(module.main(args.bench_args) or 0)


def main(argv: list[str]) -> int:
    """Dispatch ``NAME ARGS...`` without parsing ARGS (each benchmark parses its own)."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHES:
        lines = [f"  {name:10s} {help_text}" for name, (_, help_text) in BENCHES.items()]
        print("usage: ringrl bench NAME [ARGS]\n\nbenchmarks:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(BENCHES[argv[0]][0])
    return int(module.main(argv[1:]) or 0)
