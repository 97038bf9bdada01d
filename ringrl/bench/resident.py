"""Resident memory of one ring attention forward+backward against XLA's memory analysis.

``python -m ringrl.bench.resident --devices 8 --per-device 8192 [--query-tile 512]``

Prints XLA's compiled memory analysis (summed over devices) and the peak growth of this
process's resident set during one call (``/proc/self/statm``, sampled every 50 ms). On the CPU
backend the two differ by an amount proportional to the block-pair iterations executed (see
docs/training.md).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from ringrl.cli import emulate_host_devices


def resident_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**30


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--per-device", type=int, default=8192, help="tokens per device")
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--query-tile", type=int, default=None, help="override Tuning.query_tile")
    p.add_argument("--key-tile", type=int, default=None, help="override Tuning.key_tile")
    args = p.parse_args(argv)
    emulate_host_devices(8)
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from ringrl.bench.train_throughput import tile_overrides
    from ringrl.ops import attention, get_kernel
    from ringrl.parallel import make_mesh

    with tile_overrides(args.query_tile, args.key_tile):
        kernel = get_kernel("xla")  # carries the tiles asked for
    n = args.devices
    mesh = make_mesh(1, n, devices=jax.devices()[:n])
    sharding = NamedSharding(mesh, P(None, "seq"))
    q = jax.device_put(
        jax.random.normal(jax.random.PRNGKey(0), (1, n * args.per_device, 4, 32)), sharding
    )

    @jax.jit
    def fwd_bwd(q):
        fn = lambda q: attention(  # noqa: E731
            q, q, q, impl="ring", mesh=mesh, block_size=args.block, kernel=kernel
        )
        out, vjp = jax.vjp(fn, q)
        return vjp(out)[0]

    compiled = fwd_bwd.lower(q).compile()
    m = compiled.memory_analysis()
    analysis = (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes) * n
    peak = [0.0]

    def watch():
        while True:
            peak[0] = max(peak[0], resident_gib())
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    time.sleep(0.2)
    base = peak[0] = resident_gib()
    jax.block_until_ready(compiled(q))
    time.sleep(0.2)
    print(
        f"devices {n} x {args.per_device} tokens: analysis {analysis / 2**30:.3f} GiB, "
        f"resident growth {peak[0] - base:.3f} GiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
