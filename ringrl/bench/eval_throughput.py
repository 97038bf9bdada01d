"""Evaluation throughput: environment steps/s over E parallel envs with a long history in context.

    python -m ringrl.bench.eval_throughput [--envs 10] [--history 32] [--episode 1000] ...

Every env's context already holds ``--history`` previous episodes of ``--episode`` steps
(the KV cache is filled with random keys/values -- the cost of attending to them does not depend
on their values -- and the recompute policy gets random past episodes), then both policies act
in ``dm_control/cartpole-swingup-v0`` (untrained weights; speed only). Reported: env steps/s
including the environment, for the KV cache (each step embeds and attends only its new tokens)
and for full recompute (the whole context through the model at every step).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _agent(args):
    from flax import nnx

    from agents import AgenticTransformer
    from agents.agentic import AgentConfig
    from ringrl.model import TransformerConfig

    cfg = AgentConfig(
        obs_dim=5,
        act_dim=1,
        tokens_per_step=args.tokens_per_step,
        max_timestep=args.episode,
        context_steps=(args.history + 1) * args.episode,
    )
    mcfg = TransformerConfig(
        num_layers=args.layers,
        d_model=args.d_model,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        dropout=0.0,
        attention="blockwise",
        block_size=1024,
    )
    return AgenticTransformer(cfg, mcfg, rngs=nnx.Rngs(0))


def _time_policy(policy, vec, steps: int) -> float:
    """Env steps/s of ``steps`` vector steps (after one warm-up step)."""
    E = vec.num_envs
    active = np.ones(E, bool)
    obs, _ = vec.reset(seed=0)
    t0 = 0.0
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        act = policy.act(obs, active)
        obs, rew, term, trunc, _ = vec.step(act)
        policy.record(act, rew.astype(np.float32), np.zeros(E, bool), active)
    return steps * E / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", type=int, default=10)
    p.add_argument("--history", type=int, default=32, help="previous episodes in context")
    p.add_argument("--episode", type=int, default=1000, help="steps per previous episode")
    p.add_argument("--steps", type=int, default=100, help="timed vector steps (KV cache)")
    p.add_argument("--recompute-steps", type=int, default=2, help="timed steps (recompute)")
    p.add_argument("--tokens-per-step", type=int, default=1)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=1)
    p.add_argument("--seq-shards", type=int, default=1)
    p.add_argument(
        "--cache-dtype", default="float32", choices=["float32", "bfloat16"], help="KV cache dtype"
    )
    p.add_argument("--out", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)

    import gymnasium as gym
    import jax
    import jax.numpy as jnp

    import envs
    from ringrl.context import Steps
    from ringrl.parallel import make_mesh
    from ringrl.policies import IncrementalPolicy, RecomputePolicy

    task = "dm_control/cartpole-swingup-v0"
    agent = _agent(args)
    E, H = args.envs, args.history
    vec = gym.vector.SyncVectorEnv([lambda: envs.make(task) for _ in range(E)])
    mesh = make_mesh(1, args.seq_shards) if args.seq_shards > 1 else None

    cached = IncrementalPolicy(
        agent, E, 500.0, args.episode, mesh=mesh, cache_dtype=args.cache_dtype
    )
    filled = H * args.episode * agent.cfg.step_tokens
    c = cached.cache
    key = jax.random.key(0)
    cached.cache = c._replace(
        k=tuple(jax.random.normal(key, a.shape, a.dtype) * 0.5 for a in c.k),
        v=tuple(jax.random.normal(key, a.shape, a.dtype) for a in c.v),
        seg=jnp.where(jnp.arange(c.seg.shape[1])[None] < filled, 0, -1).astype(jnp.int32)
        + jnp.zeros_like(c.seg),
        pos=jnp.full_like(c.pos, filled),
    )
    cached.pos[:] = filled
    cached.prev_exists[:] = True
    kv_sps = _time_policy(cached, vec, args.steps)
    print(f"KV cache: {kv_sps:.1f} env steps/s over {E} envs", flush=True)
    del cached

    full = RecomputePolicy(agent, E, 500.0, args.episode)  # built even when skipped: cheap
    rng = np.random.default_rng(0)
    for h in full.histories:
        for _ in range(H):
            T = args.episode
            h.episodes.append(
                Steps(
                    rng.normal(size=(T, 5)).astype(np.float32),
                    rng.uniform(-1, 1, (T, 1)).astype(np.float32),
                    rng.random(T).astype(np.float32),
                )
            )
    full_sps = _time_policy(full, vec, args.recompute_steps) if args.recompute_steps else None
    vec.close()
    result = {
        "envs": E,
        "context_episodes": H,
        "episode_steps": args.episode,
        "context_tokens": filled,
        "model": {k: getattr(args, k) for k in ("layers", "d_model", "heads", "kv_heads")},
        "tokens_per_step": args.tokens_per_step,
        "seq_shards": args.seq_shards,
        "cache_dtype": args.cache_dtype,
        "kv_cache_env_steps_per_s": round(kv_sps, 1),
        "recompute_env_steps_per_s": full_sps and round(full_sps, 3),
        "speedup": full_sps and round(kv_sps / full_sps, 1),
        "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
