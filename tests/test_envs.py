"""Tests for the envs package: make, ExoRL/URLB tasks, scores, reward relabelling."""

import os

os.environ.setdefault("MUJOCO_GL", "disable")

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from dm_control import suite  # noqa: E402
from dm_control.utils import rewards as dmc_rewards  # noqa: E402

import envs  # noqa: E402

WALKER_RUN = "dm_control/walker-run-v0"


def _rollout(env: gymnasium.Env, actions: np.ndarray) -> tuple[list, list, list]:
    """Steps through ``actions``; returns observations, rewards and info['physics'] per step."""
    observations, rewards, states = [], [], []
    for action in actions:
        obs, reward, _, _, info = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        states.append(info["physics"])
    return observations, rewards, states


def _actions(env: gymnasium.Env, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, *env.action_space.shape)).astype(np.float32)


# --- make -----------------------------------------------------------------------------------


def test_make_mujoco_task_gives_flat_float32_observations():
    env = envs.make("Hopper-v5", seed=0)
    obs, _ = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (11,)
    assert env.observation_space.dtype == np.float32
    obs, *_ = env.step(env.action_space.sample())
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)


@pytest.mark.parametrize(
    ("task", "obs_dim", "act_dim"),
    [("walker_run", 24, 6), ("cheetah_run", 17, 6), ("cartpole_swingup", 5, 1)],
)
def test_exorl_tasks_have_exorl_observation_and_action_dims(task, obs_dim, act_dim):
    env = envs.make(task, seed=0)
    obs, _ = env.reset()
    assert obs.shape == (obs_dim,) and obs.dtype == np.float32
    assert env.action_space.shape == (act_dim,)


def test_dm_control_observation_matches_dm_control_flat_observation():
    env = envs.make(WALKER_RUN, seed=3)
    reference = suite.load(
        "walker", "run", task_kwargs={"random": 3}, environment_kwargs={"flat_observation": True}
    )
    obs, _ = env.reset()
    ref = reference.reset().observation["observations"].astype(np.float32)
    np.testing.assert_array_equal(obs, ref)
    action = _actions(env, 1)[0]
    obs, *_ = env.step(action)
    ref = reference.step(action.astype(np.float64)).observation["observations"]
    np.testing.assert_array_equal(obs, ref.astype(np.float32))


@pytest.mark.parametrize("task", [WALKER_RUN, "jaco_reach_top_left"])
def test_seed_makes_reset_and_action_sampling_reproducible(task):
    first, second = envs.make(task, seed=7), envs.make(task, seed=7)
    np.testing.assert_array_equal(first.reset()[0], second.reset()[0])
    np.testing.assert_array_equal(first.action_space.sample(), second.action_space.sample())
    other = envs.make(task, seed=8)
    assert not np.array_equal(first.reset(seed=7)[0], other.reset()[0])


def test_explicit_reset_seed_overrides_construction_seed():
    env = envs.make(WALKER_RUN, seed=1)
    np.testing.assert_array_equal(env.reset(seed=5)[0], envs.make(WALKER_RUN, seed=5).reset()[0])


def test_info_physics_is_the_post_step_state_and_round_trips():
    env = envs.make(WALKER_RUN, seed=0)
    _, info = env.reset()
    assert info["physics"].dtype == np.float64 and info["physics"].shape == (18,)
    _, _, _, _, info = env.step(_actions(env, 1)[0])
    np.testing.assert_array_equal(info["physics"], env.get_physics_state())
    np.testing.assert_array_equal(envs.physics_state(env), info["physics"])
    env.step(_actions(env, 1, seed=1)[0])
    env.set_physics_state(info["physics"])
    np.testing.assert_array_equal(env.get_physics_state(), info["physics"])


def test_physics_state_helper_is_none_for_mujoco_envs():
    assert envs.physics_state(envs.make("Hopper-v5")) is None


def test_mujoco_physics_state_round_trips():
    env = envs.make("Hopper-v5", seed=0)
    _, info = env.reset()
    env.step(env.action_space.sample())
    env.set_physics_state(info["physics"])
    np.testing.assert_array_equal(env.get_physics_state(), info["physics"])


def test_dm_control_actions_in_unit_box_are_rescaled_to_actuator_range():
    env = envs.make("dm_control/quadruped-walk-v0", seed=0)
    env.reset()
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    env.step(np.ones(env.action_space.shape, np.float32))
    ctrl_high = env.physics.model.actuator_ctrlrange[:, 1]
    np.testing.assert_allclose(env.physics.data.ctrl, ctrl_high)


def test_unknown_task_raises_value_error():
    with pytest.raises(ValueError, match="no-such-task"):
        envs.make("no-such-task")


# --- registry -------------------------------------------------------------------------------


def test_custom_tasks_are_registered_gymnasium_ids():
    for task_id in envs.CUSTOM_TASKS:
        assert task_id in gymnasium.registry
    assert "ringrl/jaco-reach_top_left-v0" in envs.CUSTOM_TASKS
    assert "ringrl/quadruped-stand-v0" in envs.CUSTOM_TASKS


def test_exorl_task_maps_names_to_ids():
    assert envs.exorl_task("walker_stand") == "dm_control/walker-stand-v0"
    assert envs.exorl_task("quadruped_jump") == "ringrl/quadruped-jump-v0"
    assert envs.exorl_task("jaco_reach_bottom_right") == "ringrl/jaco-reach_bottom_right-v0"
    with pytest.raises(ValueError, match="walker_fly"):
        envs.exorl_task("walker_fly")


def test_task_listing_covers_exorl_and_locomotion_tasks():
    tasks = envs.list_tasks()
    assert tasks == list(envs.TASKS)
    assert set(envs.EXORL_TASKS.values()) <= set(tasks)
    assert {"HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5"} <= set(tasks)


def test_max_episode_steps_per_task_family():
    assert envs.max_episode_steps("dm_control/walker-run-v0") == 1000
    assert envs.max_episode_steps("quadruped_stand") == 1000
    assert envs.max_episode_steps("jaco_reach_top_left") == 250
    assert envs.max_episode_steps("Hopper-v5") == 1000


def test_is_dm_control_distinguishes_task_families():
    assert envs.is_dm_control("dm_control/cheetah-run-v0")
    assert envs.is_dm_control("ringrl/jaco-reach_top_left-v0")
    assert envs.is_dm_control("cartpole_balance")
    assert not envs.is_dm_control("Hopper-v5")


# --- URLB custom tasks ----------------------------------------------------------------------


def test_jaco_reach_has_exorl_dims_and_250_step_episodes():
    env = envs.make("jaco_reach_top_left", seed=0)
    obs, _ = env.reset()
    assert obs.shape == (55,) and env.action_space.shape == (9,)
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, _ = env.step(np.zeros(9, np.float32))
        assert not terminated
        steps += 1
    assert steps == 250


@pytest.mark.parametrize(
    ("target", "xy"),
    [
        ("top_left", (-0.09, 0.09)),
        ("top_right", (0.09, 0.09)),
        ("bottom_left", (-0.09, -0.09)),
        ("bottom_right", (0.09, -0.09)),
    ],
)
def test_jaco_brick_is_placed_at_the_task_corner(target, xy):
    env = envs.make(f"ringrl/jaco-reach_{target}-v0", seed=0)
    env.reset()
    brick = env.physics.bind(env.task._target).xpos
    np.testing.assert_allclose(brick[:2], xy, atol=1e-3)


def test_jaco_reward_is_tolerance_of_hand_to_brick_distance():
    env = envs.make("jaco_reach_top_left", seed=0)
    env.reset()
    env.step(np.zeros(9, np.float32))
    physics, task = env.physics, env.task
    hand = physics.bind(task.hand.tool_center_point).xpos.copy()
    brick = physics.bind(task._target).xpos
    expected = dmc_rewards.tolerance(np.linalg.norm(hand - brick), bounds=(0, 0.05), margin=0.05)
    assert task.get_reward(physics) == pytest.approx(expected)
    state = env.get_physics_state()  # teleport the brick (free joint position) onto the hand
    adr = physics.model.jnt_qposadr[physics.bind(task._target.freejoint).element_id]
    state[adr : adr + 3] = hand
    assert envs.relabel_rewards("jaco_reach_top_left", state[None]) == pytest.approx(1.0)


def _quadruped_states(*poses: tuple[tuple, float]) -> np.ndarray:
    """Quadruped physics states with the torso at rest at each ``(quaternion, height)``."""
    env = envs.make("quadruped_walk", seed=0)
    env.reset()
    states = []
    for quaternion, height in poses:
        with env.physics.reset_context():
            env.physics.named.data.qpos["root"][:3] = (0.0, 0.0, height)
            env.physics.named.data.qpos["root"][3:] = quaternion
        states.append(env.get_physics_state())
    return np.stack(states)


def test_quadruped_stand_reward_is_the_upright_term():
    states = _quadruped_states(((1, 0, 0, 0), 0.6), ((0, 1, 0, 0), 0.6))
    np.testing.assert_allclose(envs.relabel_rewards("quadruped_stand", states), [1, 0], atol=1e-6)


def test_quadruped_jump_reward_needs_centre_of_mass_above_one_metre():
    states = _quadruped_states(((1, 0, 0, 0), 2.0), ((1, 0, 0, 0), 0.6))
    rewards = envs.relabel_rewards("quadruped_jump", states)
    assert rewards[0] == pytest.approx(1.0)
    assert 0.5 < rewards[1] < 1.0


def test_cheetah_run_backward_rewards_negative_speed():
    state = envs.make("cheetah_run", seed=0).reset()[1]["physics"]
    backward, forward = state.copy(), state.copy()
    backward[9] = -20.0  # qvel[0]: root x velocity (cheetah has 9 qpos)
    forward[9] = 20.0
    states = np.stack([backward, forward])
    np.testing.assert_allclose(envs.relabel_rewards("cheetah_run_backward", states), [1, 0])
    np.testing.assert_allclose(envs.relabel_rewards("cheetah_run", states), [0, 1])


# --- relabelling ----------------------------------------------------------------------------


def test_relabel_reproduces_walker_run_rewards_from_post_step_states():
    env = envs.make(WALKER_RUN, seed=0)
    env.reset()
    _, rewards, states = _rollout(env, _actions(env, 60))
    relabelled = envs.relabel_rewards(WALKER_RUN, np.stack(states))
    assert relabelled.dtype == np.float32 and relabelled.shape == (60,)
    np.testing.assert_allclose(relabelled, rewards, atol=1e-6)


def test_relabel_for_walker_stand_from_walker_run_states():
    run, stand = envs.make(WALKER_RUN, seed=0), envs.make("walker_stand", seed=0)
    run.reset()
    stand.reset()
    actions = _actions(run, 40)
    _, _, states = _rollout(run, actions)
    _, stand_rewards, _ = _rollout(stand, actions)
    relabelled = envs.relabel_rewards("walker_stand", np.stack(states))
    np.testing.assert_allclose(relabelled, stand_rewards, atol=1e-6)


def test_relabel_reproduces_jaco_rewards():
    env = envs.make("jaco_reach_bottom_right", seed=0)
    env.reset()
    _, rewards, states = _rollout(env, _actions(env, 20))
    relabelled = envs.relabel_rewards("jaco_reach_bottom_right", np.stack(states))
    assert np.all(
        np.asarray(rewards) > 0
    )  # tiny but nonzero far from the brick: compare relatively
    np.testing.assert_allclose(relabelled, rewards, rtol=1e-5, atol=0)


def test_relabel_unknown_task_raises():
    with pytest.raises(ValueError, match="walker-fly"):
        envs.relabel_rewards("dm_control/walker-fly-v0", np.zeros((3, 18)))


def test_relabel_non_dm_control_task_raises():
    with pytest.raises(ValueError, match="dm_control"):
        envs.relabel_rewards("Hopper-v5", np.zeros((3, 12)))


def test_relabel_state_dimension_mismatch_names_expected_and_got():
    with pytest.raises(ValueError, match="expected 18, got 17"):
        envs.relabel_rewards(WALKER_RUN, np.zeros((3, 17)))


# --- normalised scores ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Hopper-v5", "hopper-medium-v2", "hopper-medium-replay-v2"])
def test_d4rl_score_maps_reference_returns_to_0_and_100(name):
    assert envs.normalized_score(name, -20.272305) == pytest.approx(0.0)
    assert envs.normalized_score(name, 3234.3) == pytest.approx(100.0)


def test_d4rl_score_uses_each_environment_reference():
    assert envs.normalized_score("halfcheetah-expert-v2", 12135.0) == pytest.approx(100.0)
    assert envs.normalized_score("Walker2d-v5", 1.629008) == pytest.approx(0.0)
    assert envs.normalized_score("Ant-v5", 3879.7) == pytest.approx(100.0)
    mid = (-280.178953 + 12135.0) / 2
    assert envs.normalized_score("HalfCheetah-v5", mid) == pytest.approx(50.0)


def test_score_accepts_arrays():
    scores = envs.normalized_score("walker2d-medium-v2", np.array([1.629008, 4592.3]))
    np.testing.assert_allclose(scores, [0.0, 100.0])


def test_dm_control_scores_are_raw_returns():
    assert envs.normalized_score("dm_control/walker-run-v0", 512.5) == 512.5
    assert envs.normalized_score("walker_stand", 800.0) == 800.0
    assert envs.normalized_score("ringrl/jaco-reach_top_left-v0", 90.0) == 90.0


def test_unknown_score_name_raises_listing_known_names():
    with pytest.raises(ValueError, match=r"'Humanoid-v5'.*Hopper-v5"):
        envs.normalized_score("Humanoid-v5", 1.0)


def test_make_accepts_a_gymnasium_env_without_mujoco_physics():
    env = envs.make("Pendulum-v1", seed=0)
    obs, info = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (3,)
    assert "physics" not in info
    obs, *_ = env.step(env.action_space.sample())
    assert obs.dtype == np.float32


def test_cartpole_swingup_ar8_decides_every_8_physics_steps_for_125_decisions():
    from envs.dmc import load_dm_env

    ar8 = load_dm_env("ringrl/cartpole-swingup_ar8-v0", seed=5)
    native = load_dm_env("dm_control/cartpole-swingup-v0", seed=5)
    ar8.reset(), native.reset()
    rng = np.random.default_rng(0)
    for _ in range(3):
        action = rng.uniform(-1, 1, 1)
        step = ar8.step(action)
        for _ in range(8):
            last = native.step(action)
        np.testing.assert_array_equal(step.observation["position"], last.observation["position"])
        assert step.reward == pytest.approx(last.reward)  # the reward at the decision's end
    assert envs.max_episode_steps("ringrl/cartpole-swingup_ar8-v0") == 125
    env = envs.make("ringrl/cartpole-swingup_ar8-v0", seed=0)
    env.reset(seed=1)
    steps, done = 0, False
    while not done:
        *_, terminated, truncated, _ = env.step(env.action_space.sample())
        steps, done = steps + 1, terminated or truncated
    assert steps == 125
