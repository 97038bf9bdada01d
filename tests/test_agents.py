"""Agents: token layouts without action leakage, loss across attention impls, acting."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from agents import BC, AgenticTransformer, DecisionTransformer
from agents.agentic import AgentConfig, _predict
from ringrl.model import TransformerConfig, with_attention
from ringrl.parallel import make_mesh
from ringrl.sampler import ChainSampler, SamplerConfig

OBS, ACT = 3, 2


@dataclasses.dataclass
class Ep:
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray


def episodes(n=6, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        T = int(rng.integers(6, 10))
        out.append(
            Ep(
                rng.normal(size=(T, OBS)).astype(np.float32),
                rng.uniform(-1, 1, (T, ACT)).astype(np.float32),
                rng.random(T).astype(np.float32),
            )
        )
    return out


def make_agent(cls=AgenticTransformer, tokens_per_step=4, attention="vanilla", layers=2, **kw):
    cfg = AgentConfig(OBS, ACT, tokens_per_step=tokens_per_step, max_timestep=16, **kw)
    mcfg = TransformerConfig(
        num_layers=layers,
        d_model=32,
        num_heads=4,
        num_kv_heads=2,
        attention=attention,
        block_size=8,
        dropout=0.0,
        remat=False,
    )
    return cls(cfg, mcfg, rngs=nnx.Rngs(0), success_return=4.0)


def batch(agent, n_traj=3, seed=0, block=8, shards=1, ring=False):
    scfg = SamplerConfig(
        num_trajectories=n_traj,
        steps_per_trajectory=10,
        batch_size=2,
        tokens_per_step=agent.cfg.step_tokens,
        block_size=block,
        seq_shards=shards,
        ring=ring,
    )
    return ChainSampler(episodes(), scfg, seed=seed).sample(0)


def predict(agent, b, mesh=None):
    return np.asarray(_predict(agent, {k: jnp.asarray(v) for k, v in b.items()}, mesh))


@pytest.mark.parametrize("tokens_per_step", [4, 3, 1])
@pytest.mark.parametrize("use_returns", [True, False])
def test_an_action_prediction_never_sees_its_own_or_future_actions(tokens_per_step, use_returns):
    agent = make_agent(tokens_per_step=tokens_per_step, use_returns=use_returns)
    b = batch(agent)
    t = 7
    base = predict(agent, b)
    for changed_step in (t, t + 1, t + 5):  # the current action, and future actions
        b2 = {k: v.copy() for k, v in b.items()}
        b2["actions"][:, changed_step] += 0.7
        np.testing.assert_array_equal(predict(agent, b2)[:, : t + 1], base[:, : t + 1])
    b3 = {k: v.copy() for k, v in b.items()}
    b3["actions"][:, t - 1] += 0.7  # a past action is visible
    assert not np.allclose(predict(agent, b3)[:, t], base[:, t])


@pytest.mark.parametrize("tokens_per_step", [4, 3, 1])
def test_future_returns_rewards_and_states_are_hidden_too(tokens_per_step):
    agent = make_agent(tokens_per_step=tokens_per_step)
    b = batch(agent)
    t = 5
    base = predict(agent, b)
    b2 = {k: v.copy() for k, v in b.items()}
    for key in ("rewards", "completions"):  # the current step's reward comes after its action
        b2[key][:, t:] += 1.0
    for key in ("returns_to_go", "observations"):
        b2[key][:, t + 1 :] += 1.0
    np.testing.assert_array_equal(predict(agent, b2)[:, : t + 1], base[:, : t + 1])


def test_token_counts_per_layout():
    assert make_agent(tokens_per_step=4).cfg.step_tokens == 4
    assert make_agent(BC, tokens_per_step=4).cfg.step_tokens == 2  # (state, action)
    assert make_agent(tokens_per_step=1).cfg.step_tokens == 1
    assert make_agent(DecisionTransformer, tokens_per_step=3).cfg.step_tokens == 3  # (R, s, a)
    assert not make_agent(BC).cfg.use_returns
    assert make_agent(DecisionTransformer).cfg.use_returns


def test_padding_steps_do_not_change_real_predictions():
    agent = make_agent()
    b = batch(agent)
    b2 = {k: v.copy() for k, v in b.items()}
    pad = b2["mask"] == 0
    assert pad.any()
    b2["observations"][pad] = 5.0
    b2["actions"][pad] = 0.3
    real = ~pad
    np.testing.assert_allclose(predict(agent, b2)[real], predict(agent, b)[real], atol=1e-6)


@pytest.mark.parametrize("tokens_per_step", [4, 1])
def test_loss_and_gradients_agree_across_attention_impls(tokens_per_step):
    mesh = make_mesh(data=2, seq=4)
    agent = make_agent(tokens_per_step=tokens_per_step, layers=1)
    b = {k: jnp.asarray(v) for k, v in batch(agent, block=8, shards=4, ring=True).items()}

    @nnx.jit
    def loss_and_grad(a):
        return nnx.value_and_grad(lambda m: m.loss(b, mesh=mesh, deterministic=True)[0])(a)

    ref_loss, ref_grads = loss_and_grad(agent)
    for impl in ("blockwise", "ring"):
        loss, grads = loss_and_grad(with_attention_agent(agent, impl))
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


def with_attention_agent(agent, impl):
    graphdef, state = nnx.split(agent)
    clone = nnx.merge(graphdef, state)
    clone.transformer = with_attention(clone.transformer, impl)
    return clone


def test_act_returns_the_last_steps_action_and_ignores_its_own_unknown_action():
    agent = make_agent(context_steps=30)
    past = episodes(2, seed=1)
    cur = Ep(past[0].observations[:4], past[0].actions[:3], past[0].rewards[:3])
    kw = dict(max_episode_steps=10)
    a = agent.act([*past, cur], target_return=3.0, **kw)
    assert a.shape == (ACT,) and np.all(np.abs(a) <= 1)
    # the same as predicting over the context batch by hand
    b, last = agent.context([*past, cur], 3.0, block_size=8, **kw)
    assert last == sum(len(ep.rewards) for ep in past) + 3  # both whole episodes, then 4 steps
    assert b["returns_to_go"][0, last] == pytest.approx(3.0 - cur.rewards.sum())
    np.testing.assert_allclose(predict(agent, b)[0, last], a, atol=1e-6)
    cur2 = Ep(cur.observations, cur.actions + 0.5, cur.rewards)  # the current action is unknown
    cur2.actions[:3] = cur.actions[:3]
    np.testing.assert_allclose(agent.act([*past, cur2], 3.0, **kw), a, atol=1e-6)
    # acting with ring attention over 8 devices gives the same action
    ring = with_attention_agent(agent, "ring")
    np.testing.assert_allclose(
        ring.act([*past, cur], 3.0, mesh=make_mesh(1, 8), **kw), a, atol=1e-5
    )


def test_acting_context_holds_only_whole_episodes_that_fit():
    agent = make_agent(context_steps=20)
    past = episodes(4, seed=2)
    lengths = [len(ep.rewards) for ep in past]
    cur = Ep(past[0].observations[:2], past[0].actions[:1], past[0].rewards[:1])
    b, last = agent.context([*past, cur], 3.0, max_episode_steps=10, order="played")
    # room for previous episodes: 20 - 10 (a whole running episode); the most recent that fit
    kept = 0
    while kept < len(past) and sum(lengths[len(past) - kept - 1 :]) <= 10:
        kept += 1
    assert last + 1 == sum(lengths[len(past) - kept :]) + 2
    assert b["timesteps"][0, 0] == 0  # never starts mid-episode
    first = past[len(past) - kept] if kept else cur
    np.testing.assert_array_equal(b["observations"][0, 0], first.observations[0])


def test_sorted_context_orders_previous_episodes_by_return():
    agent = make_agent(context_steps=40)
    past = episodes(3, seed=3)
    cur = Ep(past[0].observations[:1], past[0].actions[:0], past[0].rewards[:0])
    b, _ = agent.context([*past, cur], 9.0, max_episode_steps=10, order="sorted")
    order = np.argsort([ep.rewards.sum() for ep in past], kind="stable")
    expected = np.concatenate([past[i].observations for i in order])
    np.testing.assert_array_equal(b["observations"][0, : len(expected)], expected)
