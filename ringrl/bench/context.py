"""``ringrl bench context``: the longest causal context that fits a per-device memory budget.

For each attention implementation and device count, finds (by doubling, then bisection) the
longest sequence whose one-layer Transformer forward+backward fits the budget according to XLA's
compiled memory analysis (compile only: nothing is allocated). Then runs one real ring
forward+backward at ``--real-seq`` tokens on all host devices and checks it against a float64
reference on sampled rows.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ringrl.bench.cli import command_main
from ringrl.bench.common import (
    GiB,
    compiled_memory,
    fmt_bytes,
    print_table,
    run_header,
    sampled_rows_error,
    save_json,
)
from ringrl.model import Transformer, TransformerConfig
from ringrl.ops import attention
from ringrl.parallel import make_mesh


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget-gib", type=float, default=2.0, help="per-device memory budget")
    p.add_argument(
        "--devices", default="1,2,4,8", help="ring device counts; 'none': only the real run"
    )
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--precision", type=float, default=0.05, help="bisection stops within this")
    p.add_argument(
        "--scope",
        default="layer",
        choices=["layer", "attention"],
        help="measure a whole Transformer layer, or the attention op alone",
    )
    p.add_argument("--real-seq", type=int, default=131072, help="0 to skip the real run")
    p.add_argument("--json", default=None)


def attention_memory(impl: str, seq: int, devices: int, args) -> int:
    """Per-device bytes of the attention op's forward+backward at ``seq`` tokens."""
    mesh = make_mesh(1, devices)
    sharding = NamedSharding(mesh, P(None, "seq" if impl == "ring" else None))
    x = jax.ShapeDtypeStruct((1, seq, args.heads, args.head_dim), jnp.float32, sharding=sharding)

    def fwd_bwd(q, k, v, ct):
        fn = lambda q, k, v: attention(q, k, v, impl=impl, mesh=mesh, block_size=args.block)  # noqa: E731
        out, vjp = jax.vjp(fn, q, k, v)
        return vjp(ct)

    return compiled_memory(jax.jit(fwd_bwd).lower(x, x, x, x).compile())


def layer_memory(impl: str, seq: int, devices: int, args) -> int:
    """Per-device bytes of one Transformer layer's forward+backward at ``seq`` tokens."""
    if args.scope == "attention":
        return attention_memory(impl, seq, devices, args)
    cfg = TransformerConfig(
        num_layers=1,
        d_model=args.heads * args.head_dim,
        num_heads=args.heads,
        num_kv_heads=args.heads,
        dropout=0.0,
        attention=impl,
        block_size=args.block,
        remat=False,  # one layer: rematerialisation would not lower the peak
    )
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    mesh = make_mesh(1, devices)

    def loss(params, x, rest):  # x as a layer inside the model sees it (in the ring's order)
        return nnx.merge(graphdef, params, rest)(x, mesh=mesh, sequence_order="ring").sum()

    sharding = NamedSharding(mesh, P(None, "seq" if impl == "ring" else None))
    x = jax.ShapeDtypeStruct((1, seq, cfg.d_model), jnp.float32, sharding=sharding)
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return compiled_memory(fn.lower(params, x, rest).compile())


def longest_context(impl: str, devices: int, args) -> tuple[int, int]:
    """Largest multiple of the layout unit that fits the budget, and its memory."""
    unit = 2 * devices * args.block if impl == "ring" else args.block
    budget = args.budget_gib * GiB
    fits = lambda n: layer_memory(impl, n * unit, devices, args) <= budget  # noqa: E731
    lo, hi = 0, 1
    while fits(hi):
        lo, hi = hi, hi * 2
        print(f"  {impl} x{devices}: {lo * unit:,} fits", file=sys.stderr, flush=True)
    while hi - lo > max(1, int(lo * args.precision)):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    seq = lo * unit
    return seq, layer_memory(impl, seq, devices, args) if seq else 0


def real_ring_run(seq: int, args) -> dict:
    """One ring attention forward+backward at ``seq`` tokens on all devices, checked."""
    mesh = make_mesh(1, jax.device_count())
    sharding = NamedSharding(mesh, P(None, "seq"))
    shape = (1, seq, args.heads, args.head_dim)
    ks = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v, ct = (jax.device_put(jax.random.normal(key, shape), sharding) for key in ks)

    @jax.jit
    def fwd_bwd(q, k, v, ct):
        out, vjp = jax.vjp(
            lambda q, k, v: attention(q, k, v, impl="ring", mesh=mesh, block_size=args.block),
            q,
            k,
            v,
        )
        return out, vjp(ct)

    compiled = fwd_bwd.lower(q, k, v, ct).compile()
    t0 = time.perf_counter()
    out, grads = jax.block_until_ready(compiled(q, k, v, ct))
    elapsed = time.perf_counter() - t0
    finite = all(bool(jnp.isfinite(g).all()) for g in grads)
    err = sampled_rows_error(out, q, k, v, causal=True, rows=32)
    return {
        "seq": seq,
        "devices": jax.device_count(),
        "time_s": elapsed,
        "rel_error": err,
        "grads_finite": finite,
        "memory_bytes": compiled_memory(compiled),
    }


def context_table(args: argparse.Namespace) -> list[dict]:
    """Longest context within the budget for each impl and device count; prints the table."""
    devices = [int(d) for d in args.devices.split(",")]
    configs = [("vanilla", 1), ("blockwise", 1)] + [("ring", d) for d in devices]
    rows = []
    for impl, d in configs:
        seq, mem = longest_context(impl, d, args)
        rows.append({"impl": impl, "devices": d, "seq": seq, "memory_bytes": mem})
    base = {r["impl"]: r["seq"] for r in rows if r["devices"] == 1}
    table = [
        [
            r["impl"],
            r["devices"],
            f"{r['seq']:,}",
            fmt_bytes(r["memory_bytes"]),
            f"{r['seq'] / base['vanilla']:.0f}x",
            f"{r['seq'] / base['blockwise']:.2f}x",
        ]
        for r in rows
    ]
    print_table(
        f"Longest causal context whose {args.scope} forward+backward fits {args.budget_gib} GiB "
        f"per device ({args.heads} heads x {args.head_dim}, block {args.block})",
        ["impl", "devices", "context", "memory/device", "vs vanilla", "vs blockwise x1"],
        table,
    )
    return rows


def run(args: argparse.Namespace) -> int:
    result = run_header() | {"budget_gib": args.budget_gib}
    print()
    if args.devices != "none":
        result["rows"] = context_table(args)
    if args.real_seq:
        real = real_ring_run(args.real_seq, args)
        result["real_run"] = real
        print_table(
            "One real ring attention forward+backward",
            [
                "seq",
                "devices",
                "time s",
                "memory/device",
                "rel. error (sampled rows)",
                "grads finite",
            ],
            [
                [
                    f"{real['seq']:,}",
                    real["devices"],
                    f"{real['time_s']:.1f}",
                    fmt_bytes(real["memory_bytes"]),
                    f"{real['rel_error']:.1e}",
                    real["grads_finite"],
                ]
            ],
        )
        if not (real["grads_finite"] and real["rel_error"] < 1e-5):
            print("real run FAILED its check", file=sys.stderr)
            return 1
    save_json(args.json, result)
    return 0


main = command_main(__doc__, add_arguments, run)


if __name__ == "__main__":
    sys.exit(main())
