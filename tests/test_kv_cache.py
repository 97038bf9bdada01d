"""KV-cache decoding: equal to a full recompute, unsharded and sharded over 4 host devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from agents import BC, AgenticTransformer
from agents.agentic import AgentConfig, _predict
from ringrl.kv_cache import decode_step, init_cache
from ringrl.model import Transformer, TransformerConfig
from ringrl.parallel import make_mesh
from ringrl.policies import IncrementalPolicy
from ringrl.sampler import pad_chain

OBS, ACT = 3, 2
TOL = 1e-5


def tiny_model_cfg(**kw) -> TransformerConfig:
    base = dict(num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, dropout=0.0, block_size=8)
    return TransformerConfig(**{**base, **kw})


@pytest.mark.parametrize("shards", [1, 4])
def test_decode_step_equals_full_forward(shards):
    cfg = tiny_model_cfg()
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    B, L = 2, 24
    x_BLD = jax.random.normal(jax.random.key(1), (B, L, cfg.d_model))
    seg_BL = jnp.zeros((B, L), jnp.int32).at[1, 3].set(-1)
    full_BLD = nnx.jit(lambda m, x, s: m(x, segment_ids=s))(model, x_BLD, seg_BL)
    mesh = make_mesh(1, shards) if shards > 1 else None
    cache = init_cache(cfg, B, 40, mesh=mesh)
    step = nnx.jit(lambda m, x, s, c: decode_step(m, x, s, c, mesh=mesh))
    outs = []
    for a, b in [(0, 5), (5, 6), (6, 16), (16, 24)]:  # uneven chunks, cross shard borders
        h_BND, cache = step(model, x_BLD[:, a:b], seg_BL[:, a:b], cache)
        outs.append(h_BND)
    out_BLD = jnp.concatenate(outs, 1)
    real = (seg_BL >= 0)[..., None]
    np.testing.assert_allclose(jnp.where(real, out_BLD, 0), jnp.where(real, full_BLD, 0), atol=TOL)
    assert list(cache.pos) == [L, L]


def make_agent(cls, tokens_per_step, context_steps):
    cfg = AgentConfig(
        OBS, ACT, tokens_per_step=tokens_per_step, max_timestep=16, context_steps=context_steps
    )
    return cls(cfg, tiny_model_cfg(), rngs=nnx.Rngs(0), success_return=2.5)


def full_recompute(agent, history, target, order, steps=40):
    """``agent.act``'s context (the whole history through the one context rule), recomputed."""
    batch, last = agent.context(history, target, max_episode_steps=MAX_LEN, order=order)
    batch = {
        k: jnp.asarray(v) for k, v in pad_chain({k: v[0] for k, v in batch.items()}, steps).items()
    }
    return np.asarray(_predict(agent, {k: v[None] for k, v in batch.items()}, None)[0, last])


MAX_LEN = 7


def rollout_vs_recompute(agent, mesh, order="sorted", steps=30, envs=3, seed=0):
    """Drive an IncrementalPolicy with fake envs; compare each action with a full recompute."""
    rng = np.random.default_rng(seed)
    policy = IncrementalPolicy(agent, envs, 3.0, MAX_LEN, order=order, mesh=mesh)
    policy.start_trial(np.ones(envs, bool))
    ep_len = rng.integers(3, MAX_LEN + 1, envs)
    t = np.zeros(envs, int)
    worst = 0.0
    for step in range(steps):
        obs_EO = rng.normal(size=(envs, OBS)).astype(np.float32)
        active_E = np.ones(envs, bool)
        active_E[2] = step % 3 != 0  # an env that sometimes sits out
        act_EA = policy.act(obs_EO, active_E)
        for e in np.flatnonzero(active_E):
            h = policy.histories[e]
            history = [*h.episodes, h.partial(obs_EO[e], ACT)]
            ref = full_recompute(agent, history, 3.0, order)
            worst = max(worst, float(np.abs(ref - act_EA[e]).max()))
        rew_E = (rng.random(envs) * 1.5).astype(np.float32)
        t += active_E
        done_E = active_E & (t >= ep_len)
        policy.record(act_EA, rew_E, done_E, active_E)
        t[done_E] = 0
        ep_len[done_E] = rng.integers(3, MAX_LEN + 1, done_E.sum())
    return worst, policy


@pytest.mark.parametrize("order", ["sorted", "played"])
@pytest.mark.parametrize(
    "cls,tokens_per_step",
    [(AgenticTransformer, 4), (AgenticTransformer, 3), (AgenticTransformer, 1), (BC, 4)],
)
def test_incremental_policy_equals_full_recompute(cls, tokens_per_step, order):
    agent = make_agent(cls, tokens_per_step, context_steps=20)
    worst, policy = rollout_vs_recompute(agent, mesh=None, order=order)
    assert policy.prefills > 0  # the context was rebuilt (evicted or reordered) and prefilled
    assert policy.kept_from.max() > 0  # old episodes were evicted
    assert worst < TOL


def test_incremental_policy_sharded_cache_equals_full_recompute():
    agent = make_agent(AgenticTransformer, 4, context_steps=20)
    mesh = make_mesh(1, 4)
    worst, policy = rollout_vs_recompute(agent, mesh=mesh, steps=24)
    assert policy.prefills > 0
    assert worst < TOL
    policy = IncrementalPolicy(agent, 2, 3.0, 7, mesh=mesh)
    assert policy.cache.k[0].sharding.spec[2] == "seq"  # k: [B, K, C, E]
    assert policy.cache.v[0].sharding.spec[3] == "seq"  # v: [B, K, E, C]
