"""Shared pieces of the benchmarks: timing, FLOP counts, memory analysis, tables."""

from __future__ import annotations

import datetime
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

GiB = 1024**3


def block(x):
    return jax.tree.map(lambda a: a.block_until_ready(), x)


def time_call(fn: Callable, *args, reps: int = 3) -> list[float]:
    """Wall times (s) of ``reps`` calls after one warm-up call (which also compiles)."""
    block(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        block(fn(*args))
        times.append(time.perf_counter() - t0)
    return times


def matmul_rate(n: int = 2048, reps: int = 5, dtype=jnp.float32) -> float:
    """Measured FLOP/s of an ``n x n @ n x n`` matmul on the default device."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    return 2 * n**3 / statistics.median(time_call(f, a, b, reps=reps))


def attention_flops(batch: int, seq: int, heads: int, head_dim: int, causal: bool) -> float:
    """Useful forward+backward FLOPs: QK^T and PV forward, four matmuls backward.

    Counts only unmasked work (half of the pairs when causal) and no recomputation.
    """
    pairs = seq * (seq + 1) / 2 if causal else seq * seq
    forward = 2 * 2 * batch * heads * head_dim * pairs
    return 3 * forward


def compiled_memory(compiled) -> int:
    """Per-device bytes of a compiled program: arguments + outputs + temporaries - aliases."""
    m = compiled.memory_analysis()
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


def sampled_rows_error(out, q, k, v, *, causal: bool, rows: int = 64, seed: int = 0) -> float:
    """Relative error of ``out`` against float64 softmax attention on sampled query rows.

    Exact reference for any sequence length: each sampled row is computed in float64 with
    numpy over all of its keys.
    """
    B, L, H, D = q.shape
    K = k.shape[2]
    idx = np.random.default_rng(seed).choice(L, size=min(rows, L), replace=False)
    qn = np.asarray(jnp.asarray(q, jnp.float32), np.float64)
    kn = np.asarray(jnp.asarray(k, jnp.float32), np.float64)
    vn = np.asarray(jnp.asarray(v, jnp.float32), np.float64)
    got = np.asarray(jnp.asarray(out, jnp.float32)[:, idx], np.float64)
    worst, scale = 0.0, 0.0
    for j, i in enumerate(idx):
        keys = slice(0, i + 1) if causal else slice(0, L)
        qi = qn[:, i].reshape(B, K, H // K, D)
        s = np.einsum("bkgd,bskd->bkgs", qi, kn[:, keys]) * D**-0.5
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        ref = np.einsum("bkgs,bskd->bkgd", p, vn[:, keys]).reshape(B, H, D)
        worst = max(worst, np.abs(got[:, j] - ref).max())
        scale = max(scale, np.abs(ref).max())
    return worst / scale


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """Print (and return) a Markdown table."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


def machine() -> str:
    import platform

    dev = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{dev.platform}:{getattr(dev, 'device_kind', '')} x{jax.device_count()} ({cpu})"


def run_header() -> dict:
    """Print and return where and how a benchmark runs: machine, date and ``XLA_FLAGS``."""
    header = {
        "machine": machine(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    print(
        f"machine: {header['machine']}  date: {header['date']}  "
        f"XLA_FLAGS: {header['xla_flags'] or '-'}"
    )
    return header


def save_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.replace(path)


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < GiB else f"{n / GiB:,.2f} GiB"
