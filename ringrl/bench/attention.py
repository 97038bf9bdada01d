"""``ringrl bench attention``: time, throughput, FLOP/s, memory and error of every attention path.

Prints Markdown tables (impl x sequence length x devices), the per-device block pairs computed
at each ring step (balance), per-device memory growth with the sequence, and, with ``--peer``,
the paper's own ``ringattention`` package on the same shapes in the same run (interleaved).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ringrl.bench.cli import command_main
from ringrl.bench.common import (
    attention_flops,
    compiled_memory,
    fmt_bytes,
    matmul_rate,
    print_table,
    run_header,
    sampled_rows_error,
    save_json,
    time_call,
)
from ringrl.ops import attention, get_kernel, ring_step_counts
from ringrl.parallel import make_mesh


def add_arguments(p: argparse.ArgumentParser) -> None:
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p.add_argument("--seqs", type=ints, default=[4096, 16384], help="timed sequence lengths")
    p.add_argument("--devices", type=ints, default=[1, 2, 4, 8])
    p.add_argument("--impls", default="vanilla,blockwise,ring")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--no-causal", dest="causal", action="store_false")
    p.add_argument("--kernel", default="auto", choices=["auto", "xla", "pallas"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--vanilla-max", type=int, default=8192, help="longest vanilla sequence")
    p.add_argument(
        "--memory-seqs",
        type=ints,
        default=[16384, 65536],
        help="ring on the most devices, compile-only memory analysis",
    )
    p.add_argument("--peer", action="store_true", help="also run PyPI ringattention 0.1.2")
    p.add_argument("--peer-seq", type=int, default=16384)
    p.add_argument("--peer-devices", type=int, default=8)
    p.add_argument("--peer-reps", type=int, default=5)
    p.add_argument("--json", default=None, help="write results to this JSON file")


def _inputs(args, seq: int, sharding=None):
    dtype = jnp.dtype(args.dtype)
    ks = jax.random.split(jax.random.PRNGKey(seq), 4)
    shape = (args.batch, seq, args.heads, args.head_dim)
    xs = [jax.random.normal(k, shape, dtype) for k in ks]
    return [jax.device_put(x, sharding) for x in xs] if sharding else xs


def _fwd_bwd(attn):
    def f(q, k, v, ct):
        out, vjp = jax.vjp(attn, q, k, v)
        return out, vjp(ct)

    return jax.jit(f)


def _ours(impl: str, mesh, args):
    return functools.partial(
        attention,
        impl=impl,
        mesh=mesh,
        causal=args.causal,
        block_size=args.block,
        kernel=args.kernel,
    )


def _times_and_rates(compiled, xs, reps: int) -> tuple[list[float], list[float]]:
    """Wall times of ``reps`` calls, each followed by a float32 matmul-rate sample.

    The speed of this shared machine drifts (the matmul rate by 10% within minutes), so each
    time is also compared with the rate measured right after it ("paired"). Each timed call
    follows an untimed one (``time_call``'s warm-up), so that the matmul sample before it has
    not left the caches cold: twice the calls, a steady-state time."""
    times, rates = [], []
    for _ in range(reps):
        times += time_call(compiled, *xs, reps=1)
        rates.append(matmul_rate())
    return times, rates


def _measure(name, fn, xs, args, flops, rate, timed: bool) -> dict:
    compiled = fn.lower(*xs).compile()
    row = {"impl": name, "memory_bytes": compiled_memory(compiled)}
    if timed:
        times, rates = _times_and_rates(compiled, xs, args.reps)
        t = statistics.median(times)
        out, _ = compiled(*xs)
        row |= {
            "time_s": t,
            "times": times,
            "matmul_rates": rates,
            "tokens_per_s": args.batch * xs[0].shape[1] / t,
            "flops_per_s": flops / t,
            "fraction_of_matmul": flops / t / rate,
            "fraction_of_paired_matmul": statistics.median(
                flops / ti / ri for ti, ri in zip(times, rates, strict=True)
            ),
            "rel_error": sampled_rows_error(out, *xs[:3], causal=args.causal),
        }
    return row


def _fmt(row: dict) -> list:
    timed = "time_s" in row
    return [
        row["impl"],
        row["devices"],
        f"{row['seq']:,}",
        f"{row['time_s']:.3f}" if timed else "-",
        f"{row['tokens_per_s']:,.0f}" if timed else "-",
        f"{row['flops_per_s'] / 1e9:,.1f}" if timed else "-",
        f"{100 * row['fraction_of_matmul']:.1f}%" if timed else "-",
        f"{100 * row['fraction_of_paired_matmul']:.1f}%" if timed else "-",
        fmt_bytes(row["memory_bytes"]),
        f"{row['rel_error']:.1e}" if timed else "-",
    ]


HEADER = [
    "impl",
    "devices",
    "seq",
    "fwd+bwd s",
    "tokens/s",
    "GFLOP/s",
    "of best matmul",
    "of paired matmul",
    "memory/device",
    "rel. error",
]


def main_table(args, rate: float) -> list[dict]:
    rows = []
    impls = args.impls.split(",")
    for seq in args.seqs:
        flops = attention_flops(args.batch, seq, args.heads, args.head_dim, args.causal)
        configs = [(i, 1) for i in impls if i in ("vanilla", "blockwise")]
        configs += [("ring", d) for d in args.devices if "ring" in impls]
        for impl, d in configs:
            if impl == "vanilla" and seq > args.vanilla_max:
                continue
            mesh = make_mesh(1, d)
            sharding = NamedSharding(mesh, P(None, "seq")) if impl == "ring" else None
            xs = _inputs(args, seq, sharding)
            row = _measure(impl, _fwd_bwd(_ours(impl, mesh, args)), xs, args, flops, rate, True)
            rows.append(row | {"devices": d, "seq": seq})
            rate = max(rate, matmul_rate(), *row.get("matmul_rates", []))  # the peak seen
            print(" ".join(map(str, _fmt(rows[-1]))), file=sys.stderr, flush=True)
    for row in rows:  # against the best matmul rate measured during the whole table
        row["fraction_of_matmul"] = row["flops_per_s"] / rate
        row["matmul_flops_per_s"] = rate
    return rows


def balance_tables(args) -> dict:
    d = max(args.devices)
    seq = args.seqs[-1]
    mesh = make_mesh(1, d)
    q, k, v, _ = _inputs(args, seq)
    out = {}
    for layout in ("contiguous", "zigzag"):
        counts = np.asarray(
            ring_step_counts(
                q, k, v, mesh=mesh, causal=args.causal, block_size=args.block, layout=layout
            )
        )
        out[layout] = counts.tolist()
        rows = [[f"device {i}", *c, c.sum()] for i, c in enumerate(counts)]
        print_table(
            f"Tile pairs (query tile x key tile) computed per device at each ring step "
            f"({layout}, seq {seq:,}, "
            f"{d} devices, block {args.block})",
            ["", *[f"step {s}" for s in range(counts.shape[1])], "total"],
            rows,
        )
    return out


def memory_growth(args) -> list[dict]:
    d = max(args.devices)
    mesh = make_mesh(1, d)
    sharding = NamedSharding(mesh, P(None, "seq"))
    rows = []
    for seq in args.memory_seqs:
        shape = jax.ShapeDtypeStruct(
            (args.batch, seq, args.heads, args.head_dim), jnp.dtype(args.dtype), sharding=sharding
        )
        compiled = _fwd_bwd(_ours("ring", mesh, args)).lower(*[shape] * 4).compile()
        rows.append({"seq": seq, "devices": d, "memory_bytes": compiled_memory(compiled)})
    base = rows[0]["memory_bytes"]
    print_table(
        f"Ring per-device memory against sequence length ({d} devices, XLA memory analysis)",
        ["seq", "memory/device", "x first"],
        [
            [f"{r['seq']:,}", fmt_bytes(r["memory_bytes"]), f"{r['memory_bytes'] / base:.2f}"]
            for r in rows
        ],
    )
    return rows


def load_peer():
    """The paper's JAX ring attention (PyPI ``ringattention`` 0.1.2), bypassing its __init__.

    Its ``__init__`` calls ``jax.lib.xla_bridge``, which current JAX removed; the
    ``ringattention_jax`` module itself still imports.
    """
    spec = importlib.util.find_spec("ringattention")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "--peer needs the paper's package: pip install --no-deps ringattention==0.1.2 einops"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "ringattention_jax.py"
    mod_spec = importlib.util.spec_from_file_location("_peer_ringattention_jax", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


PEER = "ringattention 0.1.2"
PEER_TILED = "ringattention 0.1.2, chunks = our tiles"


def peer_comparison(args, rate: float) -> dict:
    """Ours against the paper's package at the same block size, interleaved.

    Our kernel walks each block pair in tiles of ``query_tile(block, heads)`` query rows and
    ``key_tile(block)`` keys (see :func:`ringrl.ops.kernels.xla.query_tile`); the package has the
    same knobs (``query_chunk_size``, ``key_chunk_size``), so a third contender runs it with
    those chunks too, to show how much of the difference is the tiling.
    """
    from ringrl.ops.kernels.xla import key_tile, query_tile

    peer = load_peer()
    seq, d = args.peer_seq, args.peer_devices
    mesh = make_mesh(1, d)
    spec = P(None, "seq")

    def peer_attention(query_chunk: int, key_chunk: int):
        kwargs = dict(
            causal_block_size=1 if args.causal else None,
            query_chunk_size=query_chunk,
            key_chunk_size=key_chunk,
            deterministic=True,
            dropout_rng=None,
            attn_pdrop=0.0,
            dtype=jnp.float32,
            policy=jax.checkpoint_policies.nothing_saveable,
            precision=None,
            prevent_cse=True,
        )
        return jax.shard_map(
            lambda q, k, v: peer.ring_attention(q, k, v, None, None, None, "seq", True, kwargs),
            mesh=mesh,
            in_specs=(spec,) * 3,
            out_specs=spec,
            check_vma=False,
        )

    contenders = {"ringrl": _ours("ring", mesh, args), PEER: peer_attention(args.block, args.block)}
    tuning = get_kernel("xla").tuning
    tile = query_tile(args.block, args.heads, tuning), key_tile(args.block, tuning)
    if tile != (args.block, args.block):
        contenders[PEER_TILED] = peer_attention(*tile)
    xs = _inputs(args, seq, NamedSharding(mesh, spec))
    flops = attention_flops(args.batch, seq, args.heads, args.head_dim, args.causal)
    compiled = {name: _fwd_bwd(fn).lower(*xs).compile() for name, fn in contenders.items()}
    times = {name: [] for name in compiled}
    rates = []  # one matmul-rate sample per round (see _times_and_rates)
    for _ in range(args.peer_reps):  # interleaved
        for name, c in compiled.items():
            times[name] += time_call(c, *xs, reps=1)
        rates.append(matmul_rate())
    rate = max(rate, *rates)
    result = {"seq": seq, "devices": d, "block": args.block, "query_tile": tile[0]}
    result["key_tile"] = tile[1]
    result |= {"matmul_rates": rates, "best_matmul_rate": rate}
    rows = []
    for name, c in compiled.items():
        out, _ = c(*xs)
        t = statistics.median(times[name])
        r = {
            "time_s": t,
            "times": times[name],
            "memory_bytes": compiled_memory(c),
            "rel_error": sampled_rows_error(out, *xs[:3], causal=args.causal),
            "fraction_of_matmul": flops / t / rate,
            "fraction_of_paired_matmul": statistics.median(
                flops / ti / ri for ti, ri in zip(times[name], rates, strict=True)
            ),
        }
        result[name] = r
        rows.append(
            [
                name,
                f"{t:.3f}",
                f"{100 * r['fraction_of_matmul']:.1f}%",
                f"{100 * r['fraction_of_paired_matmul']:.1f}%",
                fmt_bytes(r["memory_bytes"]),
                f"{r['rel_error']:.1e}",
            ]
        )
    for peer_name in (PEER, PEER_TILED):
        if peer_name not in result:
            continue
        ratio_t = result["ringrl"]["time_s"] / result[peer_name]["time_s"]
        ratio_m = result["ringrl"]["memory_bytes"] / result[peer_name]["memory_bytes"]
        key = "" if peer_name == PEER else "_tiled"
        result |= {f"time_ratio{key}": ratio_t, f"memory_ratio{key}": ratio_m}
        label = "ours / peer" if peer_name == PEER else "ours / peer with our tiles"
        rows.append([label, f"{ratio_t:.2f}", "", "", f"{ratio_m:.2f}", ""])
    print_table(
        f"Ring attention vs the paper's package (seq {seq:,}, {d} devices, block {args.block}, "
        f"our tiles {tile[0]} x {tile[1]}, median of {args.peer_reps} interleaved fwd+bwd)",
        ["", "fwd+bwd s", "of best matmul", "of paired matmul", "memory/device", "rel. error"],
        rows,
    )
    return result


def run(args: argparse.Namespace) -> int:
    rate = matmul_rate()
    results = run_header()
    print(f"measured float32 matmul rate: {rate / 1e9:,.1f} GFLOP/s\n")
    results |= {
        "matmul_flops_per_s": rate,
        "args": {k: v for k, v in vars(args).items() if not callable(v)},
    }
    results["table"] = main_table(args, rate)
    rate = results["matmul_flops_per_s"] = results["table"][-1]["matmul_flops_per_s"]
    print(f"best float32 matmul rate seen during the table: {rate / 1e9:,.1f} GFLOP/s")
    print_table(
        f"Attention forward+backward ({args.heads} heads x {args.head_dim}, batch {args.batch}, "
        f"{'causal' if args.causal else 'full'}, block {args.block}, {args.dtype})",
        HEADER,
        [_fmt(r) for r in results["table"]],
    )
    results["balance"] = balance_tables(args)
    results["memory_growth"] = memory_growth(args)
    if args.peer:
        results["peer"] = peer_comparison(args, rate)
    save_json(args.json, results)
    return 0


main = command_main(__doc__, add_arguments, run)


if __name__ == "__main__":
    sys.exit(main())
