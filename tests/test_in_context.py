"""Multi-task in-context RL: discrete actions, Algorithm Distillation, task-id chains, oracles."""

import numpy as np
import pytest
from flax import nnx

from agents import AgenticTransformer, AlgorithmDistillation
from agents.agentic import AgentConfig, _predict, one_hot
from agents.oracles import ExplorerPolicy, ThompsonPolicy
from ringrl.context import EpisodeTable, Steps, build_chain, pad_chain
from ringrl.evaluate import (
    ConstantPolicy,
    RandomPolicy,
    TaskIdsError,
    parse_task_ids,
    rollout,
    spread_task_ids,
    trial_task_ids,
)
from ringrl.model import TransformerConfig
from ringrl.policies import ActionChooser, IncrementalPolicy
from ringrl.sampler import ChainSampler, SamplerConfig

OBS, A = 2, 5


def random_episodes(n, rng, discrete=False, max_len=9):
    eps = []
    for T in rng.integers(1, max_len, n):
        act = (
            one_hot(rng.integers(0, A, T), A)
            if discrete
            else rng.normal(size=(T, A)).astype(np.float32)
        )
        obs = rng.normal(size=(T, OBS)).astype(np.float32)
        eps.append(Steps(obs, act, rng.normal(size=T).astype(np.float32)))
    return eps


# ---- chains -----------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["sorted", "played"])
@pytest.mark.parametrize("window", [None, 3])
def test_episode_table_chain_equals_build_chain(order, window):
    rng = np.random.default_rng(0)
    eps = random_episodes(30, rng)
    table = EpisodeTable(eps, success_return=0.3)
    for _ in range(50):
        idx = rng.integers(0, len(eps), rng.integers(1, 6))
        starts = [int(rng.integers(0, max(len(eps[i]) - (window or 0), 0) + 1)) for i in idx]
        got = table.chain(idx, order=order, starts=starts, window=window)
        want = build_chain(
            [eps[i] for i in idx], success_return=0.3, order=order, starts=starts, window=window
        )
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_episode_table_of_skewed_lengths_equals_build_chain():
    """One long episode among many short ones: the prefix sums take the per-episode loop."""
    rng = np.random.default_rng(8)
    eps = random_episodes(40, rng, max_len=2)
    T = 300
    eps.append(
        Steps(
            rng.normal(size=(T, OBS)).astype(np.float32),
            rng.normal(size=(T, A)).astype(np.float32),
            rng.normal(size=T).astype(np.float32),
        )
    )
    table = EpisodeTable(eps, success_return=0.0)
    idx = [40, 3, 7]
    want = build_chain([eps[i] for i in idx], success_return=0.0)
    got = table.chain(idx)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_episode_table_batch_equals_padded_chains():
    rng = np.random.default_rng(1)
    eps = random_episodes(20, rng)
    table = EpisodeTable(eps, success_return=0.0)
    rows = [rng.integers(0, 20, 4) for _ in range(5)]
    batch = table.batch(rows, length=40, order="sorted")
    for b, row in enumerate(rows):
        want = pad_chain(build_chain([eps[i] for i in row], success_return=0.0), 40)
        for k in want:
            np.testing.assert_array_equal(batch[k][b], want[k], err_msg=k)


def grouped_sampler(chain, N=4, batch=16):
    rng = np.random.default_rng(2)
    eps = random_episodes(60, rng)
    for i, ep in enumerate(eps):  # the task id is readable from every step's observation
        ep.observations[:] = i // 10
    groups = [np.arange(g * 10, g * 10 + 10) for g in range(6)]
    order = "played" if chain == "consecutive" else "sorted"
    cfg = SamplerConfig(
        num_trajectories=N, steps_per_trajectory=9, batch_size=batch, chain=chain, order=order
    )
    return ChainSampler(eps, cfg, seed=0, groups=groups), eps


@pytest.mark.parametrize("chain", ["random", "consecutive"])
def test_chains_never_mix_two_groups(chain):
    sampler, _ = grouped_sampler(chain)
    for step in range(5):
        batch = sampler.sample(step)
        for b in range(batch["mask"].shape[0]):
            real = batch["mask"][b] > 0
            assert len(np.unique(batch["observations"][b][real])) == 1


def test_consecutive_chains_are_runs_of_one_history_in_played_order():
    sampler, eps = grouped_sampler("consecutive", N=3)
    for step in range(5):
        idx, _ = sampler.draw_batch(step)
        for row in idx:
            assert len(row) == 3 and np.all(np.diff(row) == 1) and row[0] // 10 == row[-1] // 10
    idx, starts = sampler.draw_batch(0)
    want = build_chain([eps[i] for i in idx[0]], order="played", starts=starts[0], window=9)
    got = sampler.sample(0, range(1))
    n = len(want["mask"])
    np.testing.assert_array_equal(got["actions"][0, :n], want["actions"])


def test_batch_rows_are_slices_of_the_global_batch():
    sampler, _ = grouped_sampler("random")
    full, part = sampler.sample(3), sampler.sample(3, range(4, 9))
    for k in full:
        np.testing.assert_array_equal(part[k], full[k][4:9])


# ---- discrete actions ---------------------------------------------------------------------------


def test_one_hot_rejects_an_action_out_of_range():
    np.testing.assert_array_equal(one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match="discrete action 3 is outside 0..2"):
        one_hot(np.array([3]), 3)


def test_greedy_choice_is_the_argmax_one_hot():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]], np.float32)
    got = ActionChooser(True, "greedy")(logits)
    np.testing.assert_array_equal(got, [[0, 1, 0], [1, 0, 0]])


def test_sampled_choice_follows_the_softmax():
    logits = np.log(np.array([[0.1, 0.6, 0.3]], np.float32))
    chooser = ActionChooser(True, "sample", seed=0)
    counts = sum(chooser(logits)[0] for _ in range(4000))
    np.testing.assert_allclose(counts / 4000, [0.1, 0.6, 0.3], atol=0.03)


def test_continuous_outputs_pass_through_the_chooser():
    out = np.array([[0.3, -0.7]], np.float32)
    np.testing.assert_array_equal(ActionChooser(False)(out), out)


def tiny_model():
    return TransformerConfig(
        num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, dropout=0.0, block_size=8
    )


def discrete_agent(cls=AlgorithmDistillation, tokens_per_step=4, context_steps=20):
    cfg = AgentConfig(
        OBS,
        A,
        tokens_per_step=tokens_per_step,
        max_timestep=16,
        context_steps=context_steps,
        discrete=True,
    )
    return cls(cfg, tiny_model(), rngs=nnx.Rngs(0), success_return=0.5)


def test_discrete_loss_is_the_cross_entropy_of_the_dataset_action():
    agent = discrete_agent(AgenticTransformer)
    rng = np.random.default_rng(3)
    chain = pad_chain(build_chain(random_episodes(3, rng, discrete=True)), 24)
    batch = {k: v[None] for k, v in chain.items()}
    loss, _ = agent.loss(batch, deterministic=True)
    logits = np.asarray(agent(batch), np.float64)[0]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = chain["mask"] > 0
    want = -(logp * chain["actions"]).sum(-1)[real].mean()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_ad_tokens_ignore_returns_but_read_rewards():
    agent = discrete_agent()
    rng = np.random.default_rng(4)
    chain = pad_chain(build_chain(random_episodes(3, rng, discrete=True), order="played"), 24)
    batch = {k: v[None] for k, v in chain.items()}
    base = np.asarray(_predict(agent, batch, None))
    other_returns = {**batch, "returns_to_go": batch["returns_to_go"] + 5.0}
    np.testing.assert_array_equal(np.asarray(_predict(agent, other_returns, None)), base)
    other_rewards = {**batch, "rewards": batch["rewards"] + 1.0}
    assert np.abs(np.asarray(_predict(agent, other_rewards, None)) - base).max() > 1e-4


def test_ad_acts_in_the_order_played_whatever_is_asked():
    agent = discrete_agent()
    assert agent.context_rule(5, "sorted").order == "played"


@pytest.mark.parametrize("tokens_per_step", [4, 1])
def test_discrete_cache_logits_equal_full_recompute(tokens_per_step):
    """AD with a KV cache: at every step the logits equal agent.act on the whole history
    (whose actions are the chosen one-hot actions), with evictions."""
    agent = discrete_agent(tokens_per_step=tokens_per_step)
    rng = np.random.default_rng(5)
    E, max_len = 2, 5
    policy = IncrementalPolicy(agent, E, 0.0, max_len, actions="sample", seed=1)
    policy.start_trial(np.ones(E, bool))
    t, worst = np.zeros(E, int), 0.0
    for _ in range(30):
        obs = rng.normal(size=(E, OBS)).astype(np.float32)
        act = policy.act(obs, np.ones(E, bool))
        assert set(np.unique(act)) <= {0.0, 1.0} and np.all(act.sum(-1) == 1)
        for e in range(E):
            h = policy.histories[e]
            ref = agent.act([*h.episodes, h.partial(obs[e], A)], 0.0, max_episode_steps=max_len)
            worst = max(worst, float(np.abs(ref - policy.last_output[e]).max()))
        t += 1
        done = t >= rng.integers(2, max_len + 1, E)
        policy.record(act, rng.random(E).astype(np.float32), done, np.ones(E, bool))
        t[done] = 0
    assert policy.kept_from.max() > 0  # old episodes were evicted
    assert worst < 1e-5


# ---- task instances in evaluation ---------------------------------------------------------------

DARKROOM = "ringrl/darkroom-v0"
CENTRE = 4 * 9 + 4  # the 9x9 room's start cell as a goal


def test_each_trial_plays_its_task_instance():
    stay = ConstantPolicy(2, np.eye(A)[0])  # never moves: rewarded only when the goal is the start
    returns, _ = rollout(
        DARKROOM, stay, trials=4, episodes=2, num_envs=2, seed=5, task_ids=[CENTRE, 0]
    )
    np.testing.assert_array_equal(returns, [[20, 20], [0, 0], [20, 20], [0, 0]])


def test_random_policy_draws_discrete_actions_one_hot():
    acts = RandomPolicy(64, A, seed=0, discrete=True).act(None, None)
    assert np.all(acts.sum(-1) == 1) and len(np.unique(acts.argmax(-1))) == A


def test_task_ids_spec():
    report = {"test_task_ids": [7, 8], "train_task_ids": [1, 2, 3]}
    assert parse_task_ids(None, report) == [7, 8]
    assert parse_task_ids("train", report) == [1, 2, 3]
    assert parse_task_ids("3-5,9", report) == [3, 4, 5, 9]
    assert parse_task_ids(None, {}) is None
    with pytest.raises(TaskIdsError, match="stores no data_task_ids"):
        parse_task_ids("data", report)
    with pytest.raises(TaskIdsError, match="expected test, train, data"):
        parse_task_ids("abc", report)


def test_trials_spread_over_the_task_ids():
    assert spread_task_ids(list(range(100)), 3) == [0, 50, 99]
    assert spread_task_ids([4, 5], 3) == [4, 5]
    assert trial_task_ids([4, 5], 3) == [4, 5, 4]


# ---- oracles -------------------------------------------------------------------------------------


def test_thompson_without_memory_pulls_uniformly():
    policy = ThompsonPolicy(1000, 10, window=0, seed=0)
    policy.start_trial(np.ones(1000, bool))
    arms = policy.act(np.zeros((1000, 1), np.float32), None).argmax(-1)
    assert np.bincount(arms, minlength=10).min() > 60


def test_thompson_remembers_only_its_window():
    policy = ThompsonPolicy(1, 3, window=2, seed=0)
    policy.start_trial(np.ones(1, bool))
    for arm in [0, 1, 2]:  # three one-pull episodes; only the last two are remembered
        policy.act(np.zeros((1, 1), np.float32), None)
        policy.record(np.eye(3)[[arm]], np.ones(1), np.ones(1, bool), np.ones(1, bool))
    assert [[a for _, a, _ in ep] for ep in policy.remembered(0)] == [[1], [2]]


def test_explorer_forgets_the_goal_outside_its_window():
    """Window 1: the goal found in an episode is remembered in the next, forgotten after an
    episode without reward."""
    policy = ExplorerPolicy(1, 9, window=1, seed=0)
    policy.start_trial(np.ones(1, bool))
    on, one = np.ones(1, bool), np.eye(5)
    policy.act(np.array([[4.0, 4.0]], np.float32), None)
    policy.record(one[[4]], np.ones(1), on, on)  # right, onto (5, 4), rewarded; episode ends
    assert policy.goals[0][0] == (5, 4) and policy.counts[0, 4, 5] == 1
    policy.act(np.array([[4.0, 4.0]], np.float32), None)
    policy.record(one[[1]], np.zeros(1), on, on)  # up, not rewarded; episode ends
    assert all(g is None for g in policy.goals[0]) and policy.counts[0, 4, 5] == 0


def test_full_memory_explorer_finds_and_keeps_the_goal():
    policy = ExplorerPolicy(2, 9, window=None, seed=0, epsilon=0.0)
    returns, _ = rollout(DARKROOM, policy, trials=2, episodes=12, num_envs=2, task_ids=[3, 77])
    assert returns[:, -1].min() >= 21 - 8  # walks straight to the goal (at most 8 moves away)
    assert returns[:, 0].max() < returns[:, -1].min()


# ---- attention maps --------------------------------------------------------------------------


def test_attention_maps_run_the_models_own_forward_pass():
    from ringrl.attention_maps import attention_weights

    agent = discrete_agent(AgenticTransformer)
    rng = np.random.default_rng(6)
    chain = pad_chain(build_chain(random_episodes(3, rng, discrete=True)), 24)
    batch = {k: v[None] for k, v in chain.items()}
    x, seg = agent.tokens(batch)
    want = np.asarray(agent.transformer(x, segment_ids=seg))[0]
    weights, hidden = attention_weights(agent, batch, np.arange(5))
    real = np.asarray(seg[0]) >= 0
    np.testing.assert_allclose(np.asarray(hidden)[real], want[real], atol=1e-5)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)  # each query's weights
    assert np.all(np.triu(weights[0, 0], 1)[:, :5] == 0)  # causal: nothing after the query


def test_episode_mass_sums_to_the_mass_off_the_running_episode():
    from ringrl.attention_maps import episode_mass

    agent = discrete_agent(context_steps=20)
    rng = np.random.default_rng(7)
    history = random_episodes(4, rng, discrete=True, max_len=5)
    history[-1].actions[-1] = 0  # the running episode's current action is unknown
    mass, kept = episode_mass(agent, history, 0.0, max_episode_steps=5)
    assert mass.shape == (2, len(kept)) and kept == sorted(kept) and kept[-1] == 2
    assert np.all(mass >= 0) and np.all(mass.sum(1) < 1)
