"""Chain-of-hindsight sampler: relabelling, sorting, completion, padding, determinism."""

import dataclasses

import numpy as np
import pytest

from ringrl.context import ContextRule, build_chain, visible_completion_fraction
from ringrl.ops.layouts import padded_steps
from ringrl.sampler import ChainSampler, Prefetcher, SamplerConfig


@dataclasses.dataclass
class Ep:
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray


def episode(rewards, obs_dim=3, act_dim=2, tag=0.0):
    T = len(rewards)
    obs = np.full((T, obs_dim), tag, np.float32) + np.arange(T, dtype=np.float32)[:, None]
    return Ep(obs, np.full((T, act_dim), tag / 10, np.float32), np.asarray(rewards, np.float32))


def test_chain_is_sorted_by_return_and_relabelled_to_the_best_return():
    eps = [episode([1, 2, 3], tag=1), episode([0, 1], tag=2), episode([5, 5], tag=3)]
    chain = build_chain(eps)  # returns 6, 1, 10 -> order: ep1 (1), ep0 (6), ep2 (10)
    assert chain["observations"][:, 0].tolist() == [2, 3, 1, 2, 3, 3, 4]
    # target = 10 for every trajectory; return-to-go = 10 - reward collected so far
    assert chain["returns_to_go"].tolist() == [10, 10, 10, 9, 7, 10, 5]
    assert chain["timesteps"].tolist() == [0, 1, 0, 1, 2, 0, 1]
    assert chain["rewards"].tolist() == [0, 1, 1, 2, 3, 5, 5]
    assert chain["mask"].tolist() == [1] * 7


def test_completion_flags_mark_episodes_reaching_the_fixed_level():
    eps = [episode([1, 2, 3]), episode([0, 1]), episode([5, 5])]  # returns 6, 1, 10
    chain = build_chain(eps, success_return=6.0)
    # sorted: 1 (no), 6 (yes), 10 (yes): the flag on the middle episode is seen by the last one
    assert chain["completions"].tolist() == [0, 0, 0, 0, 1, 0, 1]
    assert visible_completion_fraction([chain]) == 1.0


def test_the_papers_rule_hides_every_flag_from_later_predictions():
    """Flags only where the return reaches the chain's best: always the last, unseen episode."""
    rng = np.random.default_rng(0)
    chains = []
    for _ in range(50):
        eps = [episode(rng.random(3)) for _ in range(4)]
        best = max(float(np.sum(ep.rewards, dtype=np.float64)) for ep in eps)
        chains.append(build_chain(eps, success_return=best))
    assert all(c["completions"].sum() >= 1 for c in chains)
    assert visible_completion_fraction(chains) == 0.0


def test_windows_keep_the_episode_return_to_go_and_timesteps():
    chain = build_chain([episode([1, 2, 3, 4])], starts=[1], window=2, success_return=0.0)
    assert chain["returns_to_go"].tolist() == [9, 7]  # DT's return-to-go: 10 - 1, 10 - 3
    assert chain["timesteps"].tolist() == [1, 2]
    assert chain["completions"].tolist() == [0, 0]  # the window misses the last step


def test_acting_chain_keeps_played_order_and_given_target_and_runs_last():
    chain = build_chain(
        [episode([5]), episode([1])], target=8.0, order="played", running=episode([1, 0])
    )
    assert chain["returns_to_go"].tolist() == [8, 8, 8, 7]
    assert chain["completions"].tolist() == [0, 0, 0, 0]
    sorted_chain = build_chain(
        [episode([5], tag=1), episode([1], tag=2)], target=8.0, running=episode([1], tag=3)
    )
    assert sorted_chain["observations"][:, 0].tolist() == [2, 1, 3]


def test_first_kept_keeps_the_most_recent_whole_episodes_with_room_for_a_running_one():
    rule = ContextRule(context_steps=10, max_episode_steps=4)
    assert rule.first_kept([3, 3, 3]) == 1  # 3 + 3 + 4 <= 10
    assert rule.first_kept([5, 2]) == 1
    assert rule.first_kept([]) == 0
    assert ContextRule(3, 4).first_kept([1, 1]) == 2  # nothing fits: DT's window


@pytest.mark.parametrize("tokens", [1, 2, 4])
@pytest.mark.parametrize("ring", [False, True])
def test_padding_fits_the_attention_blocks(tokens, ring):
    for steps in [1, 7, 20, 100, 333]:
        T = padded_steps(steps, tokens, block_size=16, seq_shards=4, ring=ring)
        L = T * tokens
        assert T >= steps and T % 4 == 0
        if ring:
            chunk = L // 8
            assert L % 8 == 0 and chunk % min(16, chunk) == 0
        else:
            assert L % min(16, L) == 0


def sampler(seed=0, steps=8, **kw):
    rng = np.random.default_rng(0)
    eps = [episode(rng.random(int(rng.integers(5, 12))), tag=i) for i in range(10)]
    cfg = SamplerConfig(
        num_trajectories=3, steps_per_trajectory=steps, batch_size=4, block_size=8, **kw
    )
    return ChainSampler(eps, cfg, seed=seed)


def test_batches_are_padded_and_a_function_of_seed_and_step():
    s = sampler()
    b = s.sample(5)
    assert b["observations"].shape == (4, s.num_steps, 3)
    assert s.num_steps >= 3 * 8 and b["mask"].shape == (4, s.num_steps)
    assert (b["mask"][:, -1] == 0).all() or s.num_steps == 24
    for k, v in sampler().sample(5).items():
        np.testing.assert_array_equal(v, b[k])
    assert not np.array_equal(s.sample(6)["observations"], b["observations"])
    assert not np.array_equal(sampler(seed=1).sample(5)["observations"], b["observations"])
    # each row is independent of the batch it sits in (process slices agree)
    np.testing.assert_array_equal(s.sample(5, rows=range(2, 3))["actions"][0], b["actions"][2])


def test_each_chain_is_sorted_by_return():
    b = sampler(steps=12).sample(0)  # whole episodes
    for row in range(4):
        m = b["mask"][row] > 0
        t, rtg, rew = b["timesteps"][row][m], b["returns_to_go"][row][m], b["rewards"][row][m]
        starts = np.flatnonzero(t == 0).tolist() + [len(t)]
        rets = [rew[a:z].sum() for a, z in zip(starts[:-1], starts[1:], strict=True)]
        assert rets == sorted(rets)
        np.testing.assert_allclose(rtg[starts[:-1]], max(rets), rtol=1e-5)


def test_random_window_start_gives_short_windows_anywhere():
    b = sampler(random_window_start=True).sample(3)
    assert b["timesteps"].max() > 0


def test_prefetcher_yields_the_same_batches_and_resumes_from_its_state():
    s = sampler()
    p = Prefetcher(s, start_step=0, size=2)
    got = [next(p) for _ in range(4)]
    assert [step for step, _ in got] == [0, 1, 2, 3]
    assert p.state_dict() == {"step": 4}
    p.close()
    q = Prefetcher(s, start_step=p.state_dict()["step"], size=2)
    step, batch = next(q)
    q.close()
    assert step == 4
    np.testing.assert_array_equal(batch["observations"], s.sample(4)["observations"])
    np.testing.assert_array_equal(got[2][1]["actions"], s.sample(2)["actions"])
