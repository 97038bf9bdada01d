"""Training throughput, memory and MFU of the Agentic Transformer at long context.

    nice python -m ringrl.bench.train_throughput [--parts mfu,throughput,memory,step128k]

Model: AT with 4 layers, width 256, 8 heads, one token per step (walker: 24-d observations,
6-d actions), remat on, float32, on ``--devices`` emulated host (CPU) devices.

* ``mfu``: this machine's matmul rate (a jitted float32 matmul on one device), the yardstick.
* ``throughput``: tokens/s of a full training step (forward, backward, AdamW) at ``--context``
  tokens with ring attention over all devices, and with vanilla attention on one device at the
  longest context that fits a device's memory share (``--device-gb``, default RAM / devices).
* ``memory``: per-device bytes (arguments + outputs + temporaries) from XLA's compiled memory
  analysis, ring vs vanilla, at 32K, 128K and 512K tokens; nothing is run.
* ``step128k``: one real training step on 128 trajectories x 1000 steps (128K tokens).

Prints a table and writes JSON (``--out``). Results: docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time


def _mem_total_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 16 << 30


def _config(attention: str, block_size: int, trajectories: int, steps: int, overrides=()):
    from ringrl.config import Config, load_config

    cfg = load_config(
        None,
        [
            "model.num_layers=4",
            "model.d_model=256",
            "model.num_heads=8",
            "model.num_kv_heads=8",
            f"model.attention={attention}",
            f"model.block_size={block_size}",
            "agent.kind=at",
            "agent.tokens_per_step=1",
            f"agent.num_trajectories={trajectories}",
            f"agent.steps_per_trajectory={steps}",
            "train.batch_size=1",
            *overrides,
        ],
    )
    assert isinstance(cfg, Config)
    return cfg


def _batch(num_steps: int, obs_dim: int = 24, act_dim: int = 6, episode: int = 1000):
    import numpy as np

    rng = np.random.default_rng(0)
    t = np.arange(num_steps) % episode
    return {
        "observations": rng.normal(size=(1, num_steps, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (1, num_steps, act_dim)).astype(np.float32),
        "rewards": rng.random((1, num_steps)).astype(np.float32),
        "returns_to_go": rng.random((1, num_steps)).astype(np.float32) * 1000,
        "completions": (t == episode - 1)[None].astype(np.float32),
        "timesteps": t[None].astype(np.int32),
        "mask": np.ones((1, num_steps), np.float32),
    }


class Setup:
    """A training step of the benchmark model at ``tokens`` context with ``attention``."""

    def __init__(
        self, attention: str, tokens: int, devices: int, block_size: int, overrides=()
    ) -> None:
        """``overrides``: more ``key=value`` config overrides (compute dtype, kernel, ...)."""
        import jax
        from flax import nnx

        from ringrl.ops.layouts import padded_steps
        from ringrl.parallel import make_mesh, shard_batch
        from ringrl.train import init_state, make_train_step

        self.tokens = tokens
        ring = attention == "ring"
        self.mesh = make_mesh(1, devices if ring else 1)
        trajectories, steps = max(tokens // 1000, 1), min(tokens, 1000)
        self.cfg = _config(attention, block_size, trajectories, steps, overrides)
        graphdef, self.rng_state, self.state = init_state(self.cfg, 24, 6, self.mesh)
        self.step_fn = make_train_step(graphdef, self.cfg, self.mesh)
        padded = padded_steps(tokens, 1, block_size, self.mesh.shape["seq"], ring)
        batch = _batch(padded)
        batch["mask"][:, tokens:] = 0.0
        self.padded_tokens = padded
        self.batch = shard_batch(self.mesh, batch)
        agent_state = nnx.to_pure_dict(self.state)[0]  # (agent, optimizer)
        self.num_params = sum(x.size for x in jax.tree.leaves(agent_state))
        self._compiled = None
        self.loss = float("nan")

    def compiled(self):
        """The compiled step (compiled once per setup)."""
        import jax.numpy as jnp

        if self._compiled is None:
            args = (self.state, self.rng_state, self.batch, jnp.int32(0))
            self._compiled = self.step_fn.lower(*args).compile()
        return self._compiled

    def memory(self) -> dict[str, int]:
        m = self.compiled().memory_analysis()
        parts = {
            "argument": m.argument_size_in_bytes,
            "output": m.output_size_in_bytes,
            "temp": m.temp_size_in_bytes,
            "alias": m.alias_size_in_bytes,
        }
        parts["total"] = parts["argument"] + parts["output"] + parts["temp"] - parts["alias"]
        return parts

    def run(self, n: int) -> float:
        """Seconds per step over ``n`` real steps, compiled ahead (no warm-up step: at 128K
        tokens one step is all this CPU can afford)."""
        import jax

        step = self.compiled()
        state = self.state
        t0 = time.perf_counter()
        for i in range(n):
            state, metrics = step(state, self.rng_state, self.batch, jax.numpy.int32(i))
        self.loss = loss = float(metrics["loss"])
        self.state = state
        assert loss == loss, "non-finite loss"
        return (time.perf_counter() - t0) / n

    def model_flops(self) -> float:
        """Training FLOPs per step: 6 N T for the matmuls + causal attention (PaLM's count)."""
        m = self.cfg.model
        T = self.padded_tokens
        return 6 * self.num_params * T + 6 * m.num_layers * m.d_model * T * T


def matmul_rate(n: int = 2048, reps: int = 5) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.device_put(jnp.ones((n, n), jnp.float32), jax.devices()[0])
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def longest_vanilla(budget: int, block_size: int, candidates: list[int]) -> int:
    fits = 0
    for L in candidates:
        if Setup("vanilla", L, 1, block_size).memory()["total"] > budget:
            break
        fits = L
    return fits


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="mfu,throughput,memory,step128k")
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--context", type=int, default=32_768)
    p.add_argument("--block-size", type=int, default=1024)
    p.add_argument("--memory-contexts", default="32768,131072,524288")
    p.add_argument("--device-gb", type=float, default=None, help="default: RAM / devices")
    p.add_argument("--steps", type=int, default=1, help="timed steps per throughput figure")
    p.add_argument("--out", default=None, help="JSON results path")
    p.add_argument(
        "--query-tile",
        type=int,
        default=None,
        help="query rows per block pair (default: ringrl.backend.Tuning.query_tile); long "
        "contexts on the CPU backend need fewer, larger tiles (docs/training.md)",
    )
    p.add_argument(
        "--key-tile",
        type=int,
        default=None,
        help="keys per block pair tile (default: ringrl.backend.Tuning.key_tile)",
    )
    args = p.parse_args(argv)

    from ringrl.train import set_host_devices

    set_host_devices(args.devices)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    with tile_overrides(args.query_tile, args.key_tile):  # kernels resolved by name get them
        return _run(args, jax)


def tile_overrides(query_tile: int | None, key_tile: int | None):
    """:func:`ringrl.backend.overrides` for the tiles asked for (whatever their size: the
    score-tile bound is lifted when either is given); a no-op when neither is."""
    from ringrl import backend

    if not (query_tile or key_tile):
        return backend.overrides()
    base = backend.tuning()
    return backend.overrides(
        tile_scores=1 << 62,
        query_tile=query_tile or base.query_tile,
        key_tile=key_tile or base.key_tile,
    )


def _run(args, jax) -> int:
    parts = set(args.parts.split(","))
    budget = int((args.device_gb or _mem_total_bytes() / 2**30 / args.devices) * 2**30)
    res: dict = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{_mem_total_bytes() / 2**30:.0f} GiB RAM",
        "jax": jax.__version__,
        "devices": jax.device_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device_budget_gib": budget / 2**30,
        "block_size": args.block_size,
        "query_tile": args.query_tile,
        "key_tile": args.key_tile,
    }
    out = lambda: print(json.dumps(res, indent=1), flush=True)

    if "mfu" in parts or "throughput" in parts or "step128k" in parts:
        res["matmul_flops_per_s"] = matmul_rate()
        print(f"matmul rate: {res['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s", file=sys.stderr)

    def timed(attention: str, tokens: int, devices: int) -> dict:
        s = Setup(attention, tokens, devices, args.block_size)
        analysis = s.memory()["total"]
        sec = s.run(args.steps)
        r = {
            "attention": attention,
            "tokens": tokens,
            "devices": devices,
            "seconds_per_step": sec,
            "padded_tokens": s.padded_tokens,
            "tokens_per_s": s.padded_tokens / sec,
            "model_flops": s.model_flops(),
            "params": int(s.num_params),
            "loss": s.loss,
            "analysis_bytes_per_device": analysis,
            "peak_resident_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
        if "matmul_flops_per_s" in res:
            r["mfu"] = s.model_flops() / sec / res["matmul_flops_per_s"]
        print(json.dumps(r), file=sys.stderr, flush=True)
        return r

    if "throughput" in parts:
        res["ring"] = timed("ring", args.context, args.devices)
        cands = [2**k for k in range(10, 20) if 2**k <= args.context]
        L = longest_vanilla(budget, args.block_size, cands)
        res["vanilla_longest_fit"] = L
        if L:
            res["vanilla"] = timed("vanilla", L, 1)
        out()

    if "memory" in parts:
        mem = {}
        for L in [int(x) for x in args.memory_contexts.split(",")]:
            for attention, devices in (("ring", args.devices), ("vanilla", 1)):
                m = Setup(attention, L, devices, args.block_size).memory()
                mem[f"{attention}@{L}"] = m
                print(f"{attention} {L}: {m['total'] / 2**30:.3f} GiB/device", file=sys.stderr)
        res["memory"] = mem
        out()

    if "step128k" in parts:
        res["step128k"] = timed("ring", 128_000, args.devices)
        out()

    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    out()
    return 0


if __name__ == "__main__":
    sys.exit(main())
