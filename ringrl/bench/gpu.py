"""``ringrl bench gpu``: the attention kernels and a training step on one GPU, in one command.

    ringrl bench gpu [--json PATH]          # one H100/H200: meant to finish within 5 minutes
    ringrl bench gpu --tiny                 # tiny sizes (the default off a GPU: Pallas interpret)

Three parts, each a Markdown table (and ``--json``):

* ``attention``: causal forward+backward, bf16, GQA (16 query heads, 4 kv heads), head dim 64
  and 128, 16K-128K tokens, batch 1: our Pallas kernel (``kernel="pallas"``), the XLA tile
  kernel (``kernel="xla"``, up to ``--xla-max`` tokens: it is slow on a GPU) and
  ``jax.nn.dot_product_attention(implementation="cudnn")`` (GPU only, else "n/a").
* ``ring``: the shapes one device of an 8-device zigzag ring computes at one step (the
  diagonal step 0, and an off-diagonal step: half of the chunk pairs), on one GPU; the ring's
  compute time on 8 GPUs is predicted as ``step0 + 7 * step`` (communication assumed hidden:
  see docs/benchmarks.md [GPU-plan]; not measured).
* ``train``: one Agentic Transformer training step (4 layers, width 256, 8 heads, bf16
  compute, blockwise attention with ``kernel="auto"``, AdamW) at 32K and 128K tokens, MFU
  (``--tiny``: one layer of width 64).

FLOPs (FlashAttention's convention, so that TFLOP/s compare with FlashAttention-2/3's
figures): causal forward ``4 B H S^2 D / 2``; backward 2.5x the forward (five matmuls, the
recomputed ``Q K^T`` included); forward+backward ``3.5 x 4 B H S^2 D / 2``. Training MFU:
``6 N T + 6 L d T^2`` model FLOPs per step (:meth:`Setup.model_flops`, PaLM's count) over the
step time and the peak. Peak: dense bf16 of an H100/H200 SXM, 989 TFLOP/s (vendor datasheet);
the table also gives the fraction of a bf16 matmul rate measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from ringrl.bench.cli import command_main

PEAK_BF16 = 989e12  # dense bf16 FLOP/s of an H100/H200 SXM (datasheet)

FULL = dict(seqs=[16384, 32768, 65536, 131072], head_dims=[64, 128], train=[32768, 131072])
TINY = dict(seqs=[256], head_dims=[64, 128], train=[512])


def add_arguments(p: argparse.ArgumentParser) -> None:
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p.add_argument("--tiny", action="store_true", help="tiny sizes (automatic off a GPU)")
    p.add_argument("--parts", default="attention,ring,train")
    p.add_argument("--seqs", type=ints, default=None, help="default: 16K-128K (tiny: 256)")
    p.add_argument("--head-dims", type=ints, default=None, help="default: 64,128")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--xla-max", type=int, default=32768, help="longest sequence for xla")
    p.add_argument("--ring-devices", type=int, default=8, help="the ring predicted")
    p.add_argument("--train-tokens", type=ints, default=None, help="default: 32K,128K")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", default=None)


def attention_flops(batch: int, seq: int, heads: int, head_dim: int, causal_fraction=0.5):
    """FlashAttention's forward+backward count: 3.5 x the forward's two matmuls."""
    return 3.5 * 4 * batch * heads * seq * seq * head_dim * causal_fraction


def _inputs(seq: int, heads: int, kv_heads: int, head_dim: int, seed: int = 0):
    import jax
    import jax.numpy as jnp

    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    shapes = [(1, seq, heads, head_dim), (1, seq, kv_heads, head_dim)] * 2
    shapes = [shapes[0], shapes[1], shapes[1], shapes[0]]  # q, k, v, output gradient
    return [jax.random.normal(k, s, jnp.bfloat16) for k, s in zip(ks, shapes, strict=True)]


def _fwd_bwd(attn):
    import jax

    def f(q, k, v, do):
        out, vjp = jax.vjp(attn, q, k, v)
        return out, vjp(do)

    return jax.jit(f)


def _contenders(on_gpu: bool):
    import jax

    from ringrl.ops import blockwise_attention

    ours = lambda kernel: lambda q, k, v: blockwise_attention(q, k, v, kernel=kernel)  # noqa: E731
    out = {"pallas": ours("pallas"), "xla": ours("xla")}
    if on_gpu:
        out["cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation="cudnn"
        )
    return out


def _seconds(fn, args, reps: int) -> float:
    from ringrl.bench.common import time_call

    return statistics.median(time_call(fn, *args, reps=reps))


def _row(name, head_dim, seq, seconds, flops, rate, on_gpu) -> dict:
    r = {"kernel": name, "head_dim": head_dim, "seq": seq, "seconds": seconds}
    if seconds is not None:
        r |= {"tflops": flops / seconds / 1e12, "of_matmul": flops / seconds / rate}
        r["of_peak"] = flops / seconds / PEAK_BF16 if on_gpu else None
    return r


def _fmt(r: dict) -> list:
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    if r["seconds"] is None:
        return [r["kernel"], r["head_dim"], f"{r['seq']:,}", r["note"], "", "", ""]
    ms = f"{1e3 * r['seconds']:.2f}"
    return [r["kernel"], r["head_dim"], f"{r['seq']:,}", ms, f"{r['tflops']:.2f}"] + [
        pct(r["of_peak"]),
        pct(r["of_matmul"]),
    ]


HEADER = ["kernel", "head dim", "seq", "fwd+bwd ms", "TFLOP/s", "of bf16 peak", "of matmul"]


def attention_part(args, sizes, rate, on_gpu) -> list[dict]:
    from ringrl.bench.common import print_table

    rows = []
    for D in sizes["head_dims"]:
        for S in sizes["seqs"]:
            xs = _inputs(S, args.heads, args.kv_heads, D)
            flops = attention_flops(1, S, args.heads, D)
            for name, attn in _contenders(on_gpu).items():
                if name == "xla" and S > args.xla_max:
                    rows.append(_row(name, D, S, None, 0, rate, on_gpu) | {"note": "> --xla-max"})
                    continue
                t = _seconds(_fwd_bwd(attn), xs, args.reps)
                rows.append(_row(name, D, S, t, flops, rate, on_gpu))
            if not on_gpu:
                rows.append(_row("cudnn", D, S, None, 0, rate, on_gpu) | {"note": "n/a (no GPU)"})
    print_table(
        f"Causal attention forward+backward, bf16, {args.heads} heads / {args.kv_heads} kv "
        "heads, batch 1 (FlashAttention FLOP count)",
        HEADER,
        [_fmt(r) for r in rows],
    )
    return rows


def _step_fn(kernel, q_side, k_side, block):
    """One ring step's chunk pair, forward then backward, with the kernel's own calls."""
    import jax

    def step(q, k, v, do):
        q_k = kernel.prepare(q, k.shape[2])
        chunk = kernel.forward(q_k, k, v, q_side, k_side, causal=True, block=block)
        out = kernel.finish(chunk)[0].astype(q.dtype)
        return kernel.backward(
            q_k, k, v, out, chunk.lse, do, q_side, k_side, causal=True, block=block
        )

    return jax.jit(step)


def ring_part(args, sizes, rate, on_gpu) -> list[dict]:
    """Per-step shapes of an R-device zigzag ring over the longest sequence, on one device."""
    import jax.numpy as jnp

    from ringrl.bench.common import print_table
    from ringrl.ops import get_kernel, layout_positions
    from ringrl.ops.kernels import Side

    R, S = args.ring_devices, sizes["seqs"][-1]
    C = S // R
    kernel = get_kernel("pallas")
    seg = jnp.zeros((1, C), jnp.int32)
    here = Side(layout_positions("zigzag", 0, R, C), seg)
    steps = {
        "step 0 (diagonal)": here,
        "step s > 0": Side(layout_positions("zigzag", 1, R, C), seg),
    }
    rows = []
    for D in sizes["head_dims"]:
        xs = _inputs(C, args.heads, args.kv_heads, D, seed=1)
        t = {}
        for name, k_side in steps.items():
            t[name] = _seconds(_step_fn(kernel, here, k_side, min(512, C // 2)), xs, args.reps)
        predicted = t["step 0 (diagonal)"] + (R - 1) * t["step s > 0"]
        flops = attention_flops(1, S, args.heads, D)
        rows.append(
            {"head_dim": D, "seq": S, "devices": R, "shard": C, "step_seconds": t}
            | {
                "predicted_seconds": predicted,
                "predicted_tflops_per_device": flops / R / predicted / 1e12,
            }
        )
    print_table(
        f"Ring per-step shapes on one device ({R}-device zigzag ring, seq {S:,}, shard {C:,}, "
        "pallas kernel, fwd+bwd; prediction = step 0 + (R-1) x step s, communication hidden)",
        [
            "head dim",
            "step 0 ms",
            "step s>0 ms",
            f"predicted ring ms ({R} devices)",
            "TFLOP/s per device",
        ],
        [
            [r["head_dim"], *(f"{1e3 * x:.2f}" for x in r["step_seconds"].values())]
            + [f"{1e3 * r['predicted_seconds']:.2f}", f"{r['predicted_tflops_per_device']:.2f}"]
            for r in rows
        ],
    )
    return rows


def train_part(args, sizes, on_gpu, tiny: bool) -> list[dict]:
    from ringrl.bench.common import print_table
    from ringrl.bench.train_throughput import Setup

    overrides = ("model.compute_dtype=bfloat16", "model.kernel=auto", "model.dropout=0.0")
    if tiny:  # the same step on a one-layer model of width 64: it checks the path, quickly
        overrides += ("model.num_layers=1", "model.d_model=64", "model.num_heads=2")
        overrides += ("model.num_kv_heads=2",)
    rows = []
    for T in sizes["train"]:
        s = Setup("blockwise", T, 1, 128 if tiny else 1024, overrides)
        s.run(1)  # compile and warm up
        sec = s.run(1)
        flops = s.model_flops()
        mfu = flops / sec / PEAK_BF16 if on_gpu else None
        rows.append({"tokens": s.padded_tokens, "seconds": sec, "model_flops": flops, "mfu": mfu})
    print_table(
        "Agentic Transformer training step (4 layers x 256, 8 heads, bf16, blockwise attention, "
        "kernel auto, AdamW), one device",
        ["tokens", "step s", "model TFLOP", "MFU (of 989 TFLOP/s)"],
        [
            [f"{r['tokens']:,}", f"{r['seconds']:.3f}", f"{r['model_flops'] / 1e12:.3f}"]
            + ["-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"]
            for r in rows
        ],
    )
    return rows


def run(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    from ringrl.bench.common import matmul_rate, run_header, save_json

    on_gpu = jax.default_backend() == "gpu"
    tiny = args.tiny or not on_gpu
    sizes = dict(TINY if tiny else FULL)
    sizes |= {k: v for k, v in (("seqs", args.seqs), ("head_dims", args.head_dims)) if v}
    sizes["train"] = args.train_tokens or sizes["train"]
    results = run_header() | {"tiny": tiny, "on_gpu": on_gpu, "sizes": sizes}
    if not on_gpu:
        print("no GPU: tiny sizes, Pallas in interpret mode, cuDNN n/a; no figure here is a GPU's")
    rate = matmul_rate(n=8192 if not tiny else 512, dtype=jnp.bfloat16)
    results["bf16_matmul_flops_per_s"] = rate
    print(f"bf16 matmul rate: {rate / 1e12:.2f} TFLOP/s; peak used: {PEAK_BF16 / 1e12:.0f}\n")
    parts = set(args.parts.split(","))
    if "attention" in parts:
        results["attention"] = attention_part(args, sizes, rate, on_gpu)
    if "ring" in parts:
        results["ring"] = ring_part(args, sizes, rate, on_gpu)
    if "train" in parts:
        results["train"] = train_part(args, sizes, on_gpu, tiny)
    save_json(args.json, results)
    return 0


main = command_main(__doc__, add_arguments, run)


if __name__ == "__main__":
    sys.exit(main())
