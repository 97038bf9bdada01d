"""Task families (envs.families) and their learning-history collectors (agents.collect.families).

Bandit: 10 Bernoulli arms, one pull per episode; Dark Room: 9x9 / 17x17, 20-step episodes, (x, y)
observations, 5 actions, reward 1 per step on the hidden goal. Every test is small (< 2 s).
"""

from __future__ import annotations

import sys

import gymnasium
import numpy as np
import pytest

import envs
from agents.collect import families
from envs.families import DarkRoom, bandit_arm_probs, darkroom_goal
from ringrl.cli import main
from ringrl.data import load_dataset

BANDIT, ROOM, HARD = "ringrl/bandit-v0", "ringrl/darkroom-v0", "ringrl/darkroom_hard-v0"
STAY, UP, DOWN, LEFT, RIGHT = range(5)


def walk(env: gymnasium.Env, actions: list[int]) -> list[tuple[np.ndarray, float, bool, bool]]:
    out = []
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        out.append((obs, r, term, trunc))
    return out


# --------------------------------------------------------------------------------------------
# Registration and envs.make
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "task, obs_dim, num_actions",
    [(BANDIT, 1, 10), (ROOM, 2, 5), (HARD, 2, 5)],
)
def test_make_gives_flat_float32_observations_and_discrete_actions(task, obs_dim, num_actions):
    env = envs.make(task, seed=0)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (obs_dim,)
    assert env.observation_space.shape == (obs_dim,) and env.observation_space.dtype == np.float32
    assert isinstance(env.action_space, gymnasium.spaces.Discrete)
    assert env.action_space.n == num_actions
    assert info["task_id"] == 0


@pytest.mark.parametrize("task, steps", [(BANDIT, 1), (ROOM, 20), (HARD, 20)])
def test_max_episode_steps_of_the_families(task, steps):
    assert envs.max_episode_steps(task) == steps


@pytest.mark.parametrize("task, num_tasks", [(BANDIT, 10_000), (ROOM, 81), (HARD, 289)])
def test_num_tasks_counts_the_instances(task, num_tasks):
    assert envs.make(task).unwrapped.num_tasks == num_tasks


def test_families_are_listed_and_recognised():
    assert set(envs.TASK_FAMILIES) == {BANDIT, ROOM, HARD}
    assert all(envs.is_task_family(t) for t in envs.TASK_FAMILIES)
    assert not envs.is_task_family("Pendulum-v1")
    assert not envs.is_task_family("dm_control/cartpole-swingup-v0")


USER_MODULE = """
import gymnasium

gymnasium.register(
    "RingrlUserRoom-v0",
    entry_point="envs.families:DarkRoom",
    kwargs={"size": 3},
    max_episode_steps=20,
)
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module on sys.path that registers ``RingrlUserRoom-v0`` when imported (not before)."""
    name = "ringrl_user_family_mod"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert name not in sys.modules and "RingrlUserRoom-v0" not in gymnasium.registry
    yield name
    sys.modules.pop(name, None)
    gymnasium.registry.pop("RingrlUserRoom-v0", None)


def test_module_colon_id_imports_the_module_before_making_the_env(user_module):
    task = f"{user_module}:RingrlUserRoom-v0"
    env = envs.make(task, seed=0)
    assert user_module in sys.modules
    obs, _ = env.reset(options={"task_id": 8})
    assert obs.dtype == np.float32 and env.unwrapped.num_tasks == 9
    assert env.unwrapped.goal == (2, 2)
    assert envs.resolve(task) == task  # kept whole: another process imports the module again
    assert envs.max_episode_steps(task) == 20 and envs.is_task_family(task)


def test_module_colon_id_with_an_unimportable_module_raises_value_error():
    with pytest.raises(ValueError, match="no_such_module_xyz"):
        envs.make("no_such_module_xyz:Thing-v0")


# --------------------------------------------------------------------------------------------
# Task selection
# --------------------------------------------------------------------------------------------
def test_reset_task_id_selects_the_instance_and_later_resets_keep_it():
    env = envs.make(ROOM)
    _, info = env.reset(seed=0, options={"task_id": 7})
    assert info["task_id"] == 7 and env.unwrapped.goal == darkroom_goal(7, 9)
    for _ in range(3):
        _, info = env.reset()
        assert info["task_id"] == 7 and env.unwrapped.task_id == 7
    _, info = env.reset(options={"task_id": 2})
    assert info["task_id"] == 2 and env.unwrapped.goal == (2, 0)


def test_bandit_task_arm_probabilities_are_drawn_from_the_task_id():
    env = envs.make(BANDIT)
    env.reset(seed=0, options={"task_id": 1234})
    expected = np.random.default_rng(1234).uniform(size=10)
    np.testing.assert_array_equal(env.unwrapped.arm_probs, expected)
    np.testing.assert_array_equal(bandit_arm_probs(1234), expected)
    env.reset()
    np.testing.assert_array_equal(env.unwrapped.arm_probs, expected)


def test_darkroom_goals_are_cells_in_row_major_order():
    assert [darkroom_goal(i, 9) for i in (0, 1, 8, 9, 80)] == [
        (0, 0),
        (1, 0),
        (8, 0),
        (0, 1),
        (8, 8),
    ]
    assert darkroom_goal(288, 17) == (16, 16)


@pytest.mark.parametrize("bad", [-1, 81, 1.5, "3", True])
def test_an_invalid_task_id_raises(bad):
    env = envs.make(ROOM)
    with pytest.raises(ValueError, match="task_id"):
        env.reset(options={"task_id": bad})


# --------------------------------------------------------------------------------------------
# Dark Room dynamics and rewards
# --------------------------------------------------------------------------------------------
def test_darkroom_starts_at_the_centre_and_moves_by_action():
    env = envs.make(HARD)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [8, 8])
    positions = [o.tolist() for o, *_ in walk(env, [UP, RIGHT, DOWN, DOWN, LEFT, LEFT, STAY])]
    assert positions == [[8, 7], [9, 7], [9, 8], [9, 9], [8, 9], [7, 9], [7, 9]]


def test_darkroom_walls_keep_the_agent_inside_the_grid():
    env = envs.make(ROOM)
    env.reset(seed=0)
    obs, *_ = walk(env, [LEFT] * 6)[-1]
    np.testing.assert_array_equal(obs, [0, 4])


def test_darkroom_reward_is_one_exactly_on_steps_that_end_on_the_goal():
    env = envs.make(ROOM)
    env.reset(seed=0, options={"task_id": 4 * 9 + 6})  # goal (6, 4): two cells right of centre
    steps = walk(env, [RIGHT, RIGHT, STAY, STAY, RIGHT, LEFT, UP])
    rewards = [r for _, r, *_ in steps]
    assert rewards == [0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0]


def test_darkroom_truncates_after_twenty_steps_without_terminating():
    env = envs.make(ROOM)
    env.reset(seed=0)
    steps = walk(env, [STAY] * 20)
    assert [trunc for *_, trunc in steps] == [False] * 19 + [True]
    assert not any(term for *_, term, _ in steps)


def test_darkroom_optimal_return_is_reached_by_the_shortest_walk():
    room = DarkRoom(size=9)
    room.reset(options={"task_id": 0})  # goal (0, 0): 8 moves from the centre
    assert room.optimal_return == 13.0
    room.reset(options={"task_id": 40})  # the centre
    assert room.optimal_return == 20.0


# --------------------------------------------------------------------------------------------
# Bandit rewards
# --------------------------------------------------------------------------------------------
def test_bandit_pull_ends_the_episode():
    env = envs.make(BANDIT)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0.0])
    obs2, reward, terminated, truncated, _ = env.step(3)
    assert terminated and not truncated and reward in (0.0, 1.0)
    np.testing.assert_array_equal(obs2, [0.0])


def test_bandit_reward_frequency_matches_the_arm_probability():
    env = envs.make(BANDIT)
    env.reset(seed=0, options={"task_id": 5})
    probs = env.unwrapped.arm_probs
    for arm in (int(np.argmin(probs)), int(np.argmax(probs)), 4):
        rewards = []
        for _ in range(3000):
            env.reset()
            rewards.append(env.step(arm)[1])
        assert abs(np.mean(rewards) - probs[arm]) < 0.03, (arm, np.mean(rewards), probs[arm])


def test_bandit_rewards_repeat_under_the_same_seed():
    def pulls(seed: int) -> list[float]:
        env = envs.make(BANDIT)
        env.reset(seed=seed, options={"task_id": 3})
        out = []
        for _ in range(50):
            out.append(env.step(2)[1])
            env.reset()
        return out

    assert pulls(1) == pulls(1) and pulls(1) != pulls(2)


# --------------------------------------------------------------------------------------------
# Collectors: learning histories
# --------------------------------------------------------------------------------------------
def test_thompson_histories_improve_over_500_pulls():
    eps = families.thompson_histories(range(30), 500, seed=0)
    rewards = np.array([e["rewards"][0] for e in eps]).reshape(30, 500)
    assert rewards[:, -100:].mean() > rewards[:, :100].mean() + 0.05


def test_thompson_histories_carry_task_and_history_ids():
    eps = families.thompson_histories([4, 9], 20, seed=0)
    assert len(eps) == 40 and all(len(e["rewards"]) == 1 for e in eps)
    assert [e["task_id"] for e in eps] == [4] * 20 + [9] * 20
    assert [e["history_id"] for e in eps] == [0] * 20 + [1] * 20
    assert all(e["actions"].dtype == np.int64 and e["terminals"][0] for e in eps)


def test_darkroom_histories_improve_over_their_episodes():
    eps = families.darkroom_histories(range(0, 81, 8), 40, seed=0)
    returns = np.array([e["rewards"].sum() for e in eps]).reshape(-1, 40)
    assert returns[:, -10:].mean() > returns[:, :10].mean() + 5


def test_darkroom_histories_carry_task_and_history_ids():
    eps = families.darkroom_histories([3, 70], 5, seed=0, histories_per_task=2)
    assert [e["task_id"] for e in eps] == [3] * 10 + [70] * 10
    assert [e["history_id"] for e in eps] == [h for h in range(4) for _ in range(5)]
    assert all(len(e["rewards"]) == 20 and e["timeouts"][-1] for e in eps)


def test_darkroom_learner_without_noise_walks_straight_to_a_found_goal():
    cfg = families.LearnerConfig(eps_start=0.0, eps_end=0.0)
    eps = families.darkroom_histories([0], 12, seed=0, learner=cfg)
    returns = [float(e["rewards"].sum()) for e in eps]
    found = next(i for i, r in enumerate(returns) if r > 0)
    assert returns[found + 1 :] == [13.0] * (len(returns) - found - 1)  # optimal for goal (0, 0)


def test_darkroom_split_is_a_fixed_disjoint_80_20_split_of_the_goals():
    train, test = families.task_split(81)
    assert (len(train), len(test)) == (65, 16)
    assert sorted({*train.tolist(), *test.tolist()}) == list(range(81))
    again, _ = families.task_split(81)
    np.testing.assert_array_equal(train, again)


# --------------------------------------------------------------------------------------------
# ringrl collect TASK --policy history
# --------------------------------------------------------------------------------------------
def test_collect_history_darkroom_writes_ids_and_the_train_test_split(tmp_path, capsys):
    out = tmp_path / "room.hdf5"
    args = ["--policy", "history", "--tasks", "3", "--history-episodes", "4", "--quiet"]
    assert main(["collect", ROOM, *args, "--out", str(out)]) == 0
    assert "3 histories of 4 episodes" in capsys.readouterr().out
    ds = load_dataset(out)
    assert ds.discrete and ds.act_dim == 5 and ds.num_episodes == 12
    train, test = families.task_split(81)
    assert ds.metadata["train_task_ids"] == train.tolist()
    assert ds.metadata["test_task_ids"] == test.tolist()
    assert ds.task_ids.tolist() == [t for t in train[:3].tolist() for _ in range(4)]
    assert ds.history_ids.tolist() == [h for h in range(3) for _ in range(4)]


def test_collect_history_bandit_holds_out_the_last_fifth_of_the_instances(tmp_path):
    out = tmp_path / "bandit.hdf5"
    args = ["--policy", "history", "--tasks", "2", "--history-episodes", "30", "--quiet"]
    assert main(["collect", BANDIT, *args, "--out", str(out)]) == 0
    ds = load_dataset(out)
    assert ds.discrete and ds.act_dim == 10 and ds.num_episodes == 60 and ds.num_steps == 60
    assert ds.metadata["train_task_ids"] == [0, 1]
    assert ds.metadata["test_task_ids"] == list(range(8000, 10_000))
    assert [len(h) for h in ds.histories()] == [30, 30]


def test_collect_random_on_a_family_writes_a_discrete_dataset(tmp_path):
    out = tmp_path / "random.hdf5"
    assert main(["collect", ROOM, "--steps", "60", "--out", str(out), "--quiet"]) == 0
    ds = load_dataset(out)
    assert ds.discrete and ds.act_dim == 5 and ds.num_episodes == 3


@pytest.mark.parametrize(
    "task, args, word",
    [
        (ROOM, ["--policy", "sac"], "--policy sac"),
        (ROOM, ["--policy", "history", "--tasks", "66"], "--tasks"),
        (BANDIT, ["--policy", "history", "--tasks", "8001"], "--tasks"),
        ("Pendulum-v1", ["--policy", "history"], "Pendulum-v1"),
        (BANDIT, ["--policy", "history", "--histories-per-task", "2"], "--histories-per-task"),
    ],
)
def test_collect_rejects_bad_history_options(task, args, word, tmp_path, capsys):
    out = tmp_path / "x.hdf5"
    assert main(["collect", task, *args, "--out", str(out)]) == 2
    assert word in capsys.readouterr().err
    assert not out.exists()
