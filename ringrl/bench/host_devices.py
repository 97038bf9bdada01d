"""What emulating several host devices costs one device's program.

``python -m ringrl.bench.host_devices`` runs the same blockwise attention forward+backward on
one device in fresh processes that differ only in ``--xla_force_host_platform_device_count``,
each pinned to one core, and prints time and achieved FLOP/s against that core's matmul rate
(measured in the same process). XLA's CPU client sizes its intra-op thread pool to the device
count, so the emulated 8-device setting of the other benchmarks pays for a pool larger than
the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

CHILD = """
import json, os, statistics, sys
os.sched_setaffinity(0, {core})
import jax
from ringrl.bench.common import attention_flops, matmul_rate, time_call
from ringrl.ops import blockwise_attention
seq = {seq}
x = [jax.random.normal(jax.random.PRNGKey(i), (1, seq, 4, 32)) for i in range(3)]
loss = lambda q, k, v: (blockwise_attention(q, k, v, causal=True, block_size=512) ** 2).sum()
f = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
t = statistics.median(time_call(f, *x, reps={reps}))
rate = matmul_rate()
print(json.dumps(dict(time_s=t, fraction=attention_flops(1, seq, 4, 32, True) / t / rate)))
"""


def run_child(devices: int, seq: int, reps: int, core: int) -> dict:
    kept = re.sub(
        r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")
    )
    env = dict(os.environ, XLA_FLAGS=f"{kept} --xla_force_host_platform_device_count={devices}")
    code = CHILD.format(core={core}, seq=seq, reps=reps)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"child with {devices} host devices failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=16384)
    p.add_argument("--host-devices", default="1,8")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--core", type=int, default=0, help="the core every run is pinned to")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    for n in [int(d) for d in args.host_devices.split(",")]:
        rows.append({"host_devices": n, **run_child(n, args.seq, args.reps, args.core)})
    base = rows[0]["time_s"]
    print(f"### Blockwise fwd+bwd on one device, one core, seq {args.seq:,}\n")
    print("| host devices in the process | fwd+bwd s | of one core's matmul rate | x first |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['host_devices']} | {r['time_s']:.3f} | {100 * r['fraction']:.0f}% "
            f"| {r['time_s'] / base:.2f} |"
        )
    if args.json:
        from ringrl.bench.common import save_json

        save_json(args.json, {"seq": args.seq, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
