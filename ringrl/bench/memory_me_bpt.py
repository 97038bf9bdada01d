"""``ringrl bench memory``: why ME runs out of memory at N=32 where BPT does not.

One training step (forward and backward of ``sum(outputs**2)`` of the Transformer on token
embeddings, gradient with respect to the parameters) is compiled, never run, and XLA's compiled
memory analysis is read: temporaries + arguments + outputs per device (nothing is allocated).

* ME (memory-efficient attention): blockwise attention, an ordinary feed-forward over the whole
  sequence, no rematerialisation;
* BPT (blockwise parallel Transformer): blockwise attention, blockwise feed-forward, every layer
  rematerialised;
* vanilla (reference): softmax attention over the whole sequence, ordinary feed-forward.

Default sizes are the paper's: 24 layers, d_model 1024, 16 heads, bf16 compute, block 2048, N
trajectories x 1000 steps x 4 tokens padded to whole blocks, batch 1 per device. Every depth in
``--layers`` is compiled; the first two give the memory per layer, and a ``--target-layers``
depth that is not compiled is extrapolated from them (and labelled so). Beside XLA's figures:
the activations JAX saves for the backward pass (before XLA fuses anything), and how much of
that is feed-forward-wide (width ``mlp_ratio * d_model``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from ringrl.bench.common import GiB, print_table, run_header, save_json
from ringrl.model import Transformer, TransformerConfig

CONFIGS = {  # name: (attention, feedforward, remat)
    "vanilla": ("vanilla", "full", False),
    "ME": ("blockwise", "full", False),
    "BPT": ("blockwise", "blockwise", True),
}
A100_GIB = 80.0  # the paper's device: A100 80 GB (81,920 MiB)
KEYS = ("temp", "args", "output", "alias", "saved", "saved_wide")
TINY = [
    "--n", "4", "--steps", "64", "--d-model", "64", "--heads", "4", "--mlp-ratio", "8",
    "--block", "32", "--layers", "1,2", "--target-layers", "4", "--configs", "ME,BPT",
]  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", default="4,8,16,32", help="trajectories per chain (comma-separated)")
    p.add_argument("--steps", type=int, default=1000, help="steps per trajectory")
    p.add_argument("--tokens-per-step", type=int, default=4)
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--mlp-ratio", type=int, default=4)
    p.add_argument("--block", type=int, default=2048)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--layers", default="1,2,24", help="depths to compile (first two: the slope)")
    p.add_argument("--target-layers", type=int, default=24, help="the model's depth")
    p.add_argument("--configs", default="vanilla,ME,BPT")
    p.add_argument("--vanilla-max-n", type=int, default=32, help="skip vanilla above this N")
    p.add_argument("--device-gib", type=float, default=A100_GIB, help="the out-of-memory line")
    p.add_argument("--json", default=None, help="default docs/bench/memory_me_bpt_<commit>.json")
    p.add_argument("--png", default=None, help="default: the JSON path with .png; '' for none")
    p.add_argument("--tiny", action="store_true", help="small sizes, ME and BPT (seconds)")


def step_memory(config: str, seq: int, layers: int, args: argparse.Namespace) -> dict:
    """Bytes of one training step of ``config`` at ``seq`` tokens: XLA's compiled memory and
    the residuals JAX saves for the backward pass."""
    attention, feedforward, remat = CONFIGS[config]
    cfg = TransformerConfig(
        num_layers=layers,
        d_model=args.d_model,
        num_heads=args.heads,
        num_kv_heads=args.heads,
        mlp_ratio=args.mlp_ratio,
        dropout=0.0,
        attention=attention,
        block_size=args.block,
        compute_dtype=args.dtype,
        remat=remat,
        feedforward=feedforward,
    )
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, rest, x_BLD, segment_ids_BL):
        h_BLD = nnx.merge(graphdef, params, rest)(x_BLD, segment_ids=segment_ids_BL)
        return jnp.sum(h_BLD**2)

    x_BLD = jax.ShapeDtypeStruct((1, seq, args.d_model), jnp.float32)
    segment_ids_BL = jax.ShapeDtypeStruct((1, seq), jnp.int32)  # padding: -1
    t0 = time.perf_counter()
    compiled = jax.jit(jax.grad(loss)).lower(params, rest, x_BLD, segment_ids_BL).compile()
    m = compiled.memory_analysis()
    saved = saved_bytes(loss, params, rest, x_BLD, segment_ids_BL)
    wide = [b for shape, b in saved if shape[-1:] == (args.mlp_ratio * args.d_model,)]
    return {
        "temp": int(m.temp_size_in_bytes),
        "args": int(m.argument_size_in_bytes),
        "output": int(m.output_size_in_bytes),
        "alias": int(m.alias_size_in_bytes),
        "saved": sum(b for _, b in saved),
        "saved_wide": sum(wide),
        "compile_s": time.perf_counter() - t0,
    }


def saved_bytes(fn, *args) -> list[tuple[tuple, int]]:
    """(shape, bytes) of each array that ``jax.grad(fn)`` keeps from forward for backward
    (excluding the arguments), as ``jax.ad_checkpoint.print_saved_residuals`` lists them."""
    from jax._src.ad_checkpoint import saved_residuals

    out = []
    for aval, source in saved_residuals(fn, *args):
        if not source.startswith("from the argument"):
            out.append((tuple(aval.shape), aval.size * aval.dtype.itemsize))
    return out


def total(mem: dict) -> float:
    return mem["temp"] + mem["args"] + mem["output"] - mem["alias"]


def extrapolate(a: dict, b: dict, la: int, lb: int, target: int) -> dict:
    """Each figure linearly from the compiled ``la``- and ``lb``-layer figures."""
    return {k: a[k] + (b[k] - a[k]) * (target - la) / (lb - la) for k in KEYS}


def padded_tokens(n: int, args: argparse.Namespace) -> int:
    tokens = n * args.steps * args.tokens_per_step
    return -(-tokens // args.block) * args.block


def measure(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """One row per (N, config, depth): each compiled depth, then the target depth when it was
    not compiled (extrapolated). Also, for compiled depths past the first two, the compiled
    figure against the extrapolation (is the memory linear in the depth?)."""
    depths = [int(v) for v in args.layers.split(",")]
    la, lb = depths[:2]
    rows, checks = [], []
    for n in (int(v) for v in args.n.split(",")):
        seq = padded_tokens(n, args)
        for config in args.configs.split(","):
            if config == "vanilla" and n > args.vanilla_max_n:
                continue
            mems = {}
            for layers in depths:
                mems[layers] = mem = step_memory(config, seq, layers, args)
                print(
                    f"  {config} N={n} seq={seq:,} layers={layers}: "
                    f"{total(mem) / GiB:.2f} GiB, compiled in {mem['compile_s']:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
                rows.append(row(config, n, seq, layers, "compiled", mem, args))
            if args.target_layers not in mems:
                mem = extrapolate(mems[la], mems[lb], la, lb, args.target_layers)
                how = f"extrapolated from compiled {la}, {lb}"
                rows.append(row(config, n, seq, args.target_layers, how, mem, args))
            for layers in depths[2:]:
                want = total(extrapolate(mems[la], mems[lb], la, lb, layers))
                checks.append(
                    {"config": config, "n": n, "layers": layers}
                    | {"compiled_bytes": total(mems[layers]), "extrapolated_bytes": want}
                )
    return rows, checks


def row(config, n, seq, layers, how, mem, args) -> dict:
    return {"config": config, "n": n, "tokens": seq, "layers": layers, "how": how} | {
        **{f"{k}_bytes": mem[k] for k in KEYS},
        "total_bytes": total(mem),
        "fits": total(mem) <= args.device_gib * GiB,
    }


def print_rows(rows: list[dict], args: argparse.Namespace) -> str:
    unit, name = (2**20, "MiB") if args.tiny else (GiB, "GiB")
    size = lambda r, k: f"{r[f'{k}_bytes'] / unit:,.2f}"  # noqa: E731
    table = [
        [
            r["config"],
            r["n"],
            f"{r['tokens']:,}",
            r["layers"] if r["how"] == "compiled" else f"{r['layers']} ({r['how']})",
            *(size(r, k) for k in ("temp", "args", "output", "total")),
            ("yes" if r["fits"] else "**no**") if r["layers"] == args.target_layers else "",
            size(r, "saved"),
            size(r, "saved_wide"),
        ]
        for r in rows
    ]
    F = args.mlp_ratio * args.d_model
    return print_table(
        f"Compiled memory of one training step (d_model {args.d_model}, {args.heads} heads, MLP "
        f"{F}, {args.dtype}, block {args.block}, batch 1; XLA:{jax.default_backend().upper()} "
        f"memory analysis, {name})",
        ["config", "N", "tokens", "layers", "temp", "args", "output", "total",
         f"fits {args.device_gib:g} GiB?", "saved for bwd (JAX)", f"of which width {F}"],
        table,
    )  # fmt: skip


def plot(rows: list[dict], args: argparse.Namespace, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for config in args.configs.split(","):
        pts = [
            (r["n"], r["total_bytes"] / GiB)
            for r in rows
            if r["config"] == config and r["layers"] == args.target_layers
        ]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=config)
    ax.axhline(args.device_gib, color="red", linestyle="--", label=f"{args.device_gib:g} GiB")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("N (trajectories in the context)")
    ax.set_ylabel(f"GiB per device, {args.target_layers} layers")
    ax.set_title(
        f"Compiled memory of one training step (XLA:{jax.default_backend().upper()})", fontsize=10
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def short_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True)
        return out.stdout.decode().strip() or "nogit"
    except OSError:
        return "nogit"


def run(args: argparse.Namespace) -> tuple[int, list[dict]]:
    result = run_header() | {"commit": short_commit(), "args": vars(args)}
    print()
    rows, checks = measure(args)
    result |= {"rows": rows, "linearity_checks": checks, "table": print_rows(rows, args)}
    for c in checks:
        print(
            f"linearity: {c['config']} N={c['n']}, {c['layers']} layers: compiled "
            f"{c['compiled_bytes'] / GiB:.3f} GiB, extrapolated from {args.layers.split(',')[:2]} "
            f"layers {c['extrapolated_bytes'] / GiB:.3f} GiB"
        )
    path = args.json
    if path is None:
        path = "" if args.tiny else f"docs/bench/memory_me_bpt_{result['commit']}.json"
    save_json(path, result)
    png = args.png
    if png is None:
        png = path.removesuffix(".json") + ".png" if path else ""
    if png:
        plot(rows, args, png)
    return 0, rows


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if args.tiny:  # the tiny sizes, then whatever the command line gives on top
        args = p.parse_args(TINY + argv)
    return args


def main(argv: list[str] | None = None) -> int:
    return run(parse(argv))[0]


if __name__ == "__main__":
    sys.exit(main())
