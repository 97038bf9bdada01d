"""ringrl.data: D4RL, ExoRL and Minari readers, EpisodeDataset, atomic D4RL writing.

Every dataset is made here, in the upstream layout: D4RL key names and dtypes (with ``infos/*``,
``metadata/*`` and a trailing partial episode), ExoRL ``<timestamp>_<index>_<length>.npz`` files
with the dummy reset entry, and Minari datasets written by minari's own ``DataCollector``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
from gymnasium import spaces

from ringrl.data import DatasetError, Episode, EpisodeDataset, load_dataset

OBS, ACT = 3, 2


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------
def d4rl_arrays(n: int = 10, ends: tuple[int, ...] = (3, 7), terminal_at: tuple[int, ...] = (3,)):
    """Step arrays with D4RL dtypes; episodes end after the steps in ``ends`` (indices)."""
    rng = np.random.default_rng(0)
    terminals = np.zeros(n, dtype=bool)
    timeouts = np.zeros(n, dtype=bool)
    for i in ends:
        (terminals if i in terminal_at else timeouts)[i] = True
    return {
        "observations": rng.normal(size=(n, OBS)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, ACT)).astype(np.float32),
        "rewards": np.arange(n, dtype=np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "next_observations": rng.normal(size=(n, OBS)).astype(np.float32),
        "infos/qpos": rng.normal(size=(n, 2)),
        "infos/qvel": rng.normal(size=(n, 2)),
        "infos/action_log_probs": rng.normal(size=n).astype(np.float32),
    }


def write_h5(path: Path, arrays: dict, metadata: dict | None = None) -> Path:
    with h5py.File(path, "w") as f:
        for key, arr in arrays.items():
            f.create_dataset(key, data=arr)
        for key, value in (metadata or {}).items():
            f.create_dataset(f"metadata/{key}", data=value)
    return path


@pytest.fixture
def d4rl_file(tmp_path) -> Path:
    meta = {"algorithm": "SAC", "policy/fc0/weight": np.ones((2, 2), np.float32)}
    return write_h5(tmp_path / "hopper-medium-v2.hdf5", d4rl_arrays(), meta)


def exorl_episode(length: int, seed: int = 0, discount_zero_at: int | None = None) -> dict:
    """One ExoRL episode's arrays: ``length + 1`` entries, entry 0 the reset."""
    rng = np.random.default_rng(seed)
    action = rng.uniform(-1, 1, size=(length + 1, ACT)).astype(np.float32)
    action[0] = 0.0
    reward = rng.uniform(size=(length + 1, 1)).astype(np.float32)
    reward[0] = 0.0
    discount = np.ones((length + 1, 1), dtype=np.float32)
    if discount_zero_at is not None:
        discount[discount_zero_at] = 0.0
    return {
        "observation": rng.normal(size=(length + 1, OBS)).astype(np.float32),
        "action": action,
        "reward": reward,
        "discount": discount,
        "physics": rng.normal(size=(length + 1, 4)),
    }


def write_exorl(directory: Path, episodes: dict[int, dict]) -> Path:
    """``np.savez_compressed`` files ``<timestamp>_<index>_<length>.npz``, like ExoRL."""
    directory.mkdir(parents=True, exist_ok=True)
    for index, ep in episodes.items():
        length = len(ep["observation"]) - 1
        np.savez_compressed(directory / f"20220101T{index:06d}_{index}_{length}.npz", **ep)
    return directory


def ep(T: int, reward: float = 0.0, obs_dim: int = OBS, **kw) -> Episode:
    timeouts = np.zeros(T, bool)
    timeouts[-1] = True
    fields = dict(
        observations=np.zeros((T, obs_dim)),
        actions=np.zeros((T, ACT)),
        rewards=np.full(T, reward),
        terminals=np.zeros(T, bool),
        timeouts=timeouts,
    )
    return Episode(**{**fields, **kw})


def assert_names(err: pytest.ExceptionInfo, *words: str) -> None:
    msg = str(err.value)
    for word in words:
        assert word in msg, f"{word!r} not in {msg!r}"


# --------------------------------------------------------------------------------------------
# D4RL reading
# --------------------------------------------------------------------------------------------
def test_d4rl_episodes_end_at_terminals_and_timeouts(d4rl_file):
    ds = load_dataset(d4rl_file)
    assert [len(e) for e in ds.episodes] == [4, 4, 2]
    assert ds.episodes[0].terminals[-1] and not ds.episodes[0].timeouts[-1]
    assert ds.episodes[1].timeouts[-1] and not ds.episodes[1].terminals[-1]
    assert ds.num_episodes == 3 and ds.num_steps == 10 and ds.obs_dim == OBS and ds.act_dim == ACT


def test_d4rl_trailing_steps_form_a_truncated_final_episode(d4rl_file):
    ds = load_dataset(d4rl_file)
    last = ds.episodes[-1]
    assert last.truncated and not last.complete
    assert not last.timeouts[-1] and not last.terminals[-1]
    assert [e.truncated for e in ds.episodes[:-1]] == [False, False]


def test_d4rl_fields_have_contract_dtypes_and_shapes(d4rl_file):
    e = load_dataset(d4rl_file).episodes[0]
    assert e.observations.dtype == np.float32 and e.observations.shape == (4, OBS)
    assert e.actions.dtype == np.float32 and e.actions.shape == (4, ACT)
    assert e.rewards.dtype == np.float32 and e.rewards.shape == (4,)
    assert e.terminals.dtype == np.bool_ and e.timeouts.dtype == np.bool_


def test_d4rl_episode_arrays_are_views_of_one_array(d4rl_file):
    a, b, _ = load_dataset(d4rl_file).episodes
    assert a.observations.base is not None
    assert a.observations.base is b.observations.base


def test_d4rl_values_match_the_file(d4rl_file):
    raw = d4rl_arrays()
    ds = load_dataset(d4rl_file)
    np.testing.assert_array_equal(np.concatenate([e.observations for e in ds]), raw["observations"])
    np.testing.assert_array_equal(
        np.concatenate([e.next_observations for e in ds]), raw["next_observations"]
    )
    np.testing.assert_array_equal(np.concatenate([e.actions for e in ds]), raw["actions"])


def test_d4rl_qpos_and_qvel_infos_become_physics_states(d4rl_file):
    raw = d4rl_arrays()
    ds = load_dataset(d4rl_file)
    physics = np.concatenate([e.physics for e in ds])
    assert physics.dtype == np.float64
    np.testing.assert_array_equal(
        physics, np.concatenate([raw["infos/qpos"], raw["infos/qvel"]], 1)
    )


def test_d4rl_metadata_keys_are_read_into_metadata(d4rl_file):
    meta = load_dataset(d4rl_file).metadata
    assert meta["algorithm"] == "SAC"
    assert meta["policy/fc0/weight"] == [[1.0, 1.0], [1.0, 1.0]]
    assert meta["format"] == "d4rl" and meta["source"] == str(d4rl_file)


def test_returns_are_undiscounted_episode_sums(d4rl_file):
    ds = load_dataset(d4rl_file)
    np.testing.assert_allclose(ds.returns, [0 + 1 + 2 + 3, 4 + 5 + 6 + 7, 8 + 9])
    assert ds.returns.shape == (ds.num_episodes,)


def test_d4rl_integer_terminals_are_read_as_bool(tmp_path):
    arrays = d4rl_arrays()
    arrays["terminals"] = arrays["terminals"].astype(np.float32)
    ds = load_dataset(write_h5(tmp_path / "x.hdf5", arrays))
    assert ds.episodes[0].terminals.dtype == np.bool_ and ds.num_episodes == 3


def test_d4rl_task_relabels_rewards_from_infos_physics(tmp_path, monkeypatch):
    arrays = d4rl_arrays()
    arrays["infos/physics"] = np.arange(20.0).reshape(10, 2)
    calls = []

    def fake_relabel(task, physics_states, actions=None):
        calls.append(task)
        return physics_states[:, 0].astype(np.float32)

    envs = pytest.importorskip("envs", reason="envs package not importable")
    monkeypatch.setattr(envs, "relabel_rewards", fake_relabel)
    ds = load_dataset(write_h5(tmp_path / "x.hdf5", arrays), task="some-task")
    np.testing.assert_array_equal(np.concatenate([e.rewards for e in ds]), np.arange(0, 20, 2))
    assert calls == ["some-task"] * 3


# --------------------------------------------------------------------------------------------
# D4RL errors
# --------------------------------------------------------------------------------------------
def test_d4rl_missing_file_raises_naming_the_file(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path / "absent.hdf5")
    assert_names(err, "absent.hdf5", "not found")


@pytest.mark.parametrize("key", ["observations", "actions", "rewards", "terminals", "timeouts"])
def test_d4rl_missing_required_key_raises_naming_file_and_key(tmp_path, key):
    arrays = d4rl_arrays()
    del arrays[key]
    path = write_h5(tmp_path / "x.hdf5", arrays)
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert_names(err, str(path), repr(key), "missing")


def test_d4rl_arrays_of_different_lengths_raise(tmp_path):
    arrays = d4rl_arrays()
    arrays["actions"] = arrays["actions"][:-1]
    path = write_h5(tmp_path / "x.hdf5", arrays)
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert_names(err, str(path), "'actions'", "expected 10 entries", "got 9")


def test_d4rl_nan_observation_raises_naming_key_and_index(tmp_path):
    arrays = d4rl_arrays()
    arrays["observations"][5, 1] = np.nan
    path = write_h5(tmp_path / "x.hdf5", arrays)
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert_names(err, str(path), "'observations'", "finite", "(5, 1)")


def test_d4rl_inf_reward_raises(tmp_path):
    arrays = d4rl_arrays()
    arrays["rewards"][2] = np.inf
    path = write_h5(tmp_path / "x.hdf5", arrays)
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert_names(err, str(path), "'rewards'", "finite")


def test_d4rl_truncated_file_raises(tmp_path, d4rl_file):
    data = d4rl_file.read_bytes()
    path = tmp_path / "cut.hdf5"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert_names(err, str(path))


def test_d4rl_non_hdf5_file_raises(tmp_path):
    path = tmp_path / "notes.hdf5"
    path.write_text("this is not HDF5\n")
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert_names(err, str(path), "HDF5")


def test_d4rl_one_dimensional_observations_raise(tmp_path):
    arrays = d4rl_arrays()
    arrays["observations"] = arrays["observations"][:, 0]
    path = write_h5(tmp_path / "x.hdf5", arrays)
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert_names(err, str(path), "'observations'", "2-D")


def test_d4rl_string_dtype_raises(tmp_path):
    arrays = d4rl_arrays()
    arrays["timeouts"] = np.array([b"no"] * 10)
    path = write_h5(tmp_path / "x.hdf5", arrays)
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert_names(err, str(path), "'timeouts'", "numeric")


def test_d4rl_empty_dataset_raises(tmp_path):
    arrays = {k: v[:0] for k, v in d4rl_arrays().items()}
    path = write_h5(tmp_path / "x.hdf5", arrays)
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert_names(err, str(path), "empty")


def test_d4rl_task_without_physics_raises(tmp_path):
    arrays = {k: v for k, v in d4rl_arrays().items() if not k.startswith("infos/q")}
    path = write_h5(tmp_path / "x.hdf5", arrays)
    with pytest.raises(DatasetError) as err:
        load_dataset(path, task="dm_control/cartpole-swingup-v0")
    assert_names(err, str(path), "infos/physics", "cartpole-swingup")


def test_unknown_format_name_raises_value_error(d4rl_file):
    with pytest.raises(ValueError, match="format"):
        load_dataset(d4rl_file, format="rlds")


def test_auto_format_rejects_directory_without_datasets(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    assert_names(err, str(tmp_path), "npz", "metadata.json")


# --------------------------------------------------------------------------------------------
# D4RL writing
# --------------------------------------------------------------------------------------------
def test_save_d4rl_round_trips_episodes(tmp_path, d4rl_file):
    ds = load_dataset(d4rl_file)
    out = tmp_path / "copy.hdf5"
    ds.save_d4rl(out)
    back = load_dataset(out)
    assert [len(e) for e in back] == [len(e) for e in ds]
    assert back.episodes[-1].truncated
    for a, b in zip(ds, back, strict=True):
        for name in ("observations", "actions", "rewards", "terminals", "timeouts"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        np.testing.assert_array_equal(a.next_observations, b.next_observations)
        np.testing.assert_array_equal(a.physics, b.physics)


def test_save_d4rl_writes_exact_d4rl_dtypes_and_physics_key(tmp_path, d4rl_file):
    out = tmp_path / "copy.hdf5"
    load_dataset(d4rl_file).save_d4rl(out)
    with h5py.File(out) as f:
        for key in ("observations", "actions", "rewards", "next_observations"):
            assert f[key].dtype == np.float32, key
        assert f["terminals"].dtype == np.bool_ and f["timeouts"].dtype == np.bool_
        assert f["infos/physics"].dtype == np.float64 and f["infos/physics"].shape == (10, 4)


def test_save_d4rl_writes_metadata(tmp_path):
    ds = EpisodeDataset.from_episodes([ep(3)], metadata={"task": "walker-run", "policy": "rnd"})
    out = tmp_path / "x.hdf5"
    ds.save_d4rl(out)
    with h5py.File(out) as f:
        assert f["metadata/task"][()].decode() == "walker-run"
    assert load_dataset(out).metadata["policy"] == "rnd"


def test_save_d4rl_keeps_a_cut_short_middle_episode_separate(tmp_path):
    middle = ep(2)
    middle.timeouts[:] = False  # neither terminal nor timeout: the episode was cut short
    ds = EpisodeDataset.from_episodes([ep(3), middle, ep(4)])
    ds.save_d4rl(tmp_path / "x.hdf5")
    assert [len(e) for e in load_dataset(tmp_path / "x.hdf5")] == [3, 2, 4]


def _crash_on_rewards(monkeypatch):
    original = h5py.Group.create_dataset

    def create_dataset(self, name, *args, **kwargs):
        if name == "rewards":
            raise RuntimeError("simulated crash mid-write")
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)


def test_save_d4rl_crash_leaves_no_file_and_no_temp_file(tmp_path, monkeypatch):
    ds = EpisodeDataset.from_episodes([ep(3), ep(2)])
    _crash_on_rewards(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated"):
        ds.save_d4rl(tmp_path / "out.hdf5")
    assert os.listdir(tmp_path) == []


def test_save_d4rl_crash_keeps_the_previous_file_intact(tmp_path, monkeypatch):
    out = tmp_path / "out.hdf5"
    EpisodeDataset.from_episodes([ep(5, reward=1.0)]).save_d4rl(out)
    before = out.read_bytes()
    _crash_on_rewards(monkeypatch)
    with pytest.raises(RuntimeError):
        EpisodeDataset.from_episodes([ep(3, reward=2.0)]).save_d4rl(out)
    assert out.read_bytes() == before and os.listdir(tmp_path) == ["out.hdf5"]


# --------------------------------------------------------------------------------------------
# ExoRL
# --------------------------------------------------------------------------------------------
def test_exorl_transitions_align_like_exorl_replay_sampler(tmp_path):
    raw = exorl_episode(5)
    ds = load_dataset(write_exorl(tmp_path / "buffer", {0: raw}))
    e = ds.episodes[0]
    assert len(e) == 5
    np.testing.assert_array_equal(e.observations, raw["observation"][:-1])
    np.testing.assert_array_equal(e.next_observations, raw["observation"][1:])
    np.testing.assert_array_equal(e.actions, raw["action"][1:])
    np.testing.assert_array_equal(e.rewards, raw["reward"][1:, 0])
    np.testing.assert_array_equal(e.physics, raw["physics"][1:])


def test_exorl_episode_ends_by_timeout_not_terminal(tmp_path):
    ds = load_dataset(write_exorl(tmp_path, {0: exorl_episode(4)}))
    e = ds.episodes[0]
    assert e.timeouts.tolist() == [False, False, False, True]
    assert not e.terminals.any() and e.complete


def test_exorl_zero_discount_marks_a_terminal(tmp_path):
    ds = load_dataset(write_exorl(tmp_path, {0: exorl_episode(4, discount_zero_at=4)}))
    e = ds.episodes[0]
    assert e.terminals.tolist() == [False, False, False, True] and not e.timeouts.any()


def test_exorl_episodes_sorted_by_numeric_index_from_file_name(tmp_path):
    episodes = {i: exorl_episode(3 + i, seed=i) for i in (10, 2, 1)}
    ds = load_dataset(write_exorl(tmp_path, episodes))
    assert [len(e) for e in ds] == [4, 5, 13]


def test_exorl_nested_buffer_directory_is_detected_as_exorl(tmp_path):
    write_exorl(tmp_path / "walker" / "rnd" / "buffer", {0: exorl_episode(3), 1: exorl_episode(2)})
    ds = load_dataset(tmp_path / "walker")
    assert ds.metadata["format"] == "exorl" and ds.num_steps == 5 and ds.obs_dim == OBS


def test_exorl_missing_key_raises_naming_file_and_key(tmp_path):
    raw = exorl_episode(3)
    del raw["discount"]
    write_exorl(tmp_path, {7: raw})
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    assert_names(err, "_7_3.npz", "'discount'", "missing")


def test_exorl_length_not_matching_file_name_raises(tmp_path):
    raw = exorl_episode(3)
    np.savez_compressed(tmp_path / "20220101T000000_0_4.npz", **raw)
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    assert_names(err, "_0_4.npz", "'observation'", "expected 5 entries", "got 4")


def test_exorl_nan_reward_raises(tmp_path):
    raw = exorl_episode(3)
    raw["reward"][2] = np.nan
    write_exorl(tmp_path, {0: raw})
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    assert_names(err, "_0_3.npz", "'reward'", "finite")


def test_exorl_bad_file_name_raises(tmp_path):
    np.savez_compressed(tmp_path / "episode.npz", **exorl_episode(3))
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    assert_names(err, "episode.npz", "<prefix>_<index>_<length>")


def test_exorl_corrupt_npz_raises(tmp_path):
    (tmp_path / "20220101T000000_0_3.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path, format="exorl")
    assert_names(err, "_0_3.npz", "npz")


def test_exorl_empty_directory_raises(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path, format="exorl")
    assert_names(err, str(tmp_path), "npz", "empty")


def _walker_exorl_episode(length: int) -> dict:
    """A real walker-stand episode recorded the ExoRL way (obs, action, reward, physics).

    Walker rewards depend on the state only; cartpole's include a control cost that a physics
    state does not carry, so a relabelled cartpole reward differs from the recorded one.
    """
    from dm_control import suite

    env = suite.load("walker", "stand", task_kwargs={"random": 0})
    rng = np.random.default_rng(0)
    ts = env.reset()
    rows = {k: [] for k in ("observation", "action", "reward", "discount", "physics")}

    def record(ts, action):
        rows["observation"].append(np.concatenate([np.ravel(v) for v in ts.observation.values()]))
        rows["action"].append(action)
        rows["reward"].append([ts.reward or 0.0])
        rows["discount"].append([1.0 if ts.discount is None else ts.discount])
        rows["physics"].append(env.physics.get_state().copy())

    record(ts, np.zeros(6))
    for _ in range(length):
        action = rng.uniform(-1, 1, size=6)
        record(env.step(action), action)
    dtypes = {"physics": np.float64}
    return {k: np.asarray(v, dtypes.get(k, np.float32)) for k, v in rows.items()}


def test_exorl_task_relabels_rewards_from_physics_states(tmp_path):
    envs = pytest.importorskip("envs", reason="envs.relabel_rewards not importable yet")
    if not hasattr(envs, "relabel_rewards"):
        pytest.skip("envs.relabel_rewards not written yet")
    raw = _walker_exorl_episode(20)
    write_exorl(tmp_path, {0: raw})
    same = load_dataset(tmp_path, task="dm_control/walker-stand-v0").episodes[0]
    np.testing.assert_allclose(same.rewards, raw["reward"][1:, 0], rtol=1e-5, atol=1e-6)
    other = load_dataset(tmp_path, task="dm_control/walker-run-v0").episodes[0]
    expected = envs.relabel_rewards("dm_control/walker-run-v0", raw["physics"][1:])
    np.testing.assert_array_equal(other.rewards, expected)
    assert not np.array_equal(other.rewards, same.rewards)


def test_exorl_unknown_task_raises_naming_file_and_task(tmp_path):
    pytest.importorskip("envs", reason="envs.relabel_rewards not importable yet")
    write_exorl(tmp_path, {3: exorl_episode(2)})
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path, task="no-such-task")
    assert_names(err, "_3_2.npz", "no-such-task")


# --------------------------------------------------------------------------------------------
# Minari
# --------------------------------------------------------------------------------------------
def _collect_minari(env, dataset_id: str, episodes: int):
    from minari import DataCollector

    env = DataCollector(env)
    env.reset(seed=0)
    env.action_space.seed(0)
    for i in range(episodes):
        if i:
            env.reset()
        done = False
        while not done:
            *_, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return env.create_dataset(dataset_id=dataset_id, algorithm_name="random")


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory) -> Path:
    """A Minari datasets root with ``pendulum/random-v0`` (3 episodes of 10 steps)."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        _collect_minari(gym.make("Pendulum-v1", max_episode_steps=10), "pendulum/random-v0", 3)
    return root


def test_minari_dataset_directory_loads_with_auto_format(minari_root):
    ds = load_dataset(minari_root / "pendulum" / "random-v0")
    assert ds.metadata["format"] == "minari"
    assert ds.num_episodes == 3 and ds.num_steps == 30 and ds.obs_dim == 3 and ds.act_dim == 1
    assert all(e.timeouts[-1] and not e.terminals.any() for e in ds)


def test_minari_id_resolves_under_minari_datasets_path(minari_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    ds = load_dataset("pendulum/random-v0")
    assert ds.num_steps == 30 and ds.metadata["dataset_id"] == "pendulum/random-v0"


def test_minari_observations_align_with_minari_episode_data(minari_root):
    import minari

    path = minari_root / "pendulum" / "random-v0"
    first = next(minari.MinariDataset(path / "data").iterate_episodes())
    e = load_dataset(path, format="minari").episodes[0]
    np.testing.assert_array_equal(e.observations, first.observations[:-1])
    np.testing.assert_array_equal(e.next_observations, first.observations[1:])
    np.testing.assert_array_equal(e.actions, first.actions)
    np.testing.assert_allclose(e.rewards, first.rewards, rtol=1e-6)
    assert e.rewards.dtype == np.float32 and e.actions.dtype == np.float32


class DictObsEnv(gym.Env):
    """Dict observations {"b": [10t, 20t], "a": [t]} at step t; 4-step episodes."""

    observation_space = spaces.Dict(
        {"b": spaces.Box(-1e3, 1e3, (2,)), "a": spaces.Box(-1e3, 1e3, (1,))}
    )
    action_space = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)

    def _obs(self):
        t = np.float32(self.t)
        return {"a": np.array([t], np.float32), "b": np.array([10 * t, 20 * t], np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, False, self.t >= 4, {}


def test_minari_dict_observations_are_flattened_in_key_order(tmp_path, monkeypatch):
    if "RingrlDictObs-v0" not in gym.registry:
        gym.register("RingrlDictObs-v0", entry_point=f"{__name__}:DictObsEnv")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    _collect_minari(gym.make("RingrlDictObs-v0"), "dictobs/test-v0", 1)
    e = load_dataset("dictobs/test-v0").episodes[0]
    keys = list(DictObsEnv.observation_space.spaces)  # gymnasium's key order
    assert keys == ["a", "b"]
    t = np.arange(4, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(e.observations, np.concatenate([t, 10 * t, 20 * t], 1))


def test_minari_unknown_id_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(DatasetError) as err:
        load_dataset("nothing/here-v0", format="minari")
    assert_names(err, "nothing/here-v0", "Minari")


# --------------------------------------------------------------------------------------------
# Episode / EpisodeDataset
# --------------------------------------------------------------------------------------------
def test_episode_converts_fields_to_contract_dtypes():
    e = ep(3, physics=np.zeros((3, 2), np.float32))
    assert e.observations.dtype == np.float32 and e.rewards.dtype == np.float32
    assert e.terminals.dtype == np.bool_ and e.physics.dtype == np.float64


def test_episode_with_mismatched_lengths_raises():
    with pytest.raises(DatasetError, match="actions"):
        ep(3, actions=np.zeros((2, ACT)))


def test_from_episodes_rejects_an_empty_list():
    with pytest.raises(DatasetError, match="empty"):
        EpisodeDataset.from_episodes([])


def test_from_episodes_rejects_different_observation_sizes():
    with pytest.raises(DatasetError, match="observations"):
        EpisodeDataset.from_episodes([ep(2), ep(2, obs_dim=OBS + 1)])


def test_filter_top_keeps_the_best_fraction_in_dataset_order():
    ds = EpisodeDataset.from_episodes([ep(2, reward=r) for r in range(10)][::-1])
    top = ds.filter_top(0.3)
    assert top.returns.tolist() == [18.0, 16.0, 14.0]
    assert ds.filter_top(0.01).num_episodes == 1


def test_summary_reports_counts_and_return_statistics():
    s = EpisodeDataset.from_episodes([ep(2, reward=1.0), ep(4, reward=2.0)]).summary()
    assert s["episodes"] == 2 and s["steps"] == 6
    assert (s["return_min"], s["return_mean"], s["return_max"]) == (2.0, 5.0, 8.0)
    assert s["return_std"] == 3.0


def test_data_load_benchmark_prints_its_table_for_a_small_file(capsys):
    from ringrl.bench.data_load import main

    assert main(["--steps", "5000", "--episode-len", "1000"]) == 0
    out = capsys.readouterr().out
    assert "5000 steps, 5 episodes" in out and "load time" in out and "peak RSS increase" in out
