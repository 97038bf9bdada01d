"""ringrl.data for in-context RL: discrete actions, per-episode task / history ids, task splits.

D4RL layout: integer ``actions [N]`` with ``metadata/num_actions``; ``infos/task_id`` and
``infos/history_id`` integer ``[N]``, constant within an episode. Minari: the action space and
the episode metadata.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from ringrl.data import DatasetError, Episode, EpisodeDataset, load_dataset


def episode(T: int, actions=None, task_id=None, history_id=None, reward: float = 0.0) -> Episode:
    timeouts = np.zeros(T, bool)
    timeouts[-1] = True
    return Episode(
        observations=np.zeros((T, 2), np.float32),
        actions=np.arange(T) % 5 if actions is None else actions,
        rewards=np.full(T, reward, np.float32),
        terminals=np.zeros(T, bool),
        timeouts=timeouts,
        task_id=task_id,
        history_id=history_id,
    )


def steps(n: int, ends: tuple[int, ...], actions: np.ndarray | None = None) -> dict:
    """D4RL step arrays of ``n`` steps with integer actions; episodes end after ``ends``."""
    timeouts = np.zeros(n, bool)
    timeouts[list(ends)] = True
    return {
        "observations": np.zeros((n, 2), np.float32),
        "actions": np.arange(n, dtype=np.int64) % 5 if actions is None else actions,
        "rewards": np.ones(n, np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": timeouts,
    }


def write_h5(path: Path, arrays: dict, metadata: dict | None = None) -> Path:
    with h5py.File(path, "w") as f:
        for key, arr in arrays.items():
            f.create_dataset(key, data=arr)
        for key, value in (metadata or {}).items():
            f.create_dataset(f"metadata/{key}", data=value)
    return path


def assert_names(err: pytest.ExceptionInfo, *words: str) -> None:
    for word in words:
        assert word in str(err.value), f"{word!r} not in {str(err.value)!r}"


# --------------------------------------------------------------------------------------------
# Episodes and datasets in memory
# --------------------------------------------------------------------------------------------
def test_integer_actions_make_a_discrete_episode_of_int64_actions():
    e = episode(4, actions=np.array([[0], [1], [2], [3]], np.int32))
    assert e.discrete and e.actions.dtype == np.int64 and e.actions.shape == (4,)
    assert not episode(4, actions=np.zeros((4, 2))).discrete


def test_discrete_dataset_act_dim_is_the_number_of_actions():
    ds = EpisodeDataset.from_episodes([episode(5), episode(3)], metadata={"num_actions": 7})
    assert ds.discrete and ds.act_dim == 7 and ds.num_actions == 7
    assert ds.summary()["discrete"] is True


def test_continuous_dataset_is_not_discrete():
    ds = EpisodeDataset.from_episodes([episode(3, actions=np.zeros((3, 2)))])
    assert not ds.discrete and ds.act_dim == 2 and ds.num_actions is None


def test_discrete_dataset_without_the_number_of_actions_raises():
    with pytest.raises(DatasetError, match="num_actions"):
        EpisodeDataset.from_episodes([episode(3)])


def test_discrete_action_outside_the_action_range_raises():
    with pytest.raises(DatasetError, match=r"\[0, 3\)"):
        EpisodeDataset.from_episodes([episode(5)], num_actions=3)


def test_discrete_and_continuous_episodes_do_not_mix():
    with pytest.raises(DatasetError, match="discrete"):
        EpisodeDataset.from_episodes(
            [episode(3), episode(3, actions=np.zeros((3, 1)))], num_actions=5
        )


def test_filter_top_keeps_a_discrete_dataset_discrete():
    ds = EpisodeDataset.from_episodes([episode(2, reward=r) for r in range(4)], num_actions=5)
    top = ds.filter_top(0.5)
    assert top.discrete and top.act_dim == 5 and top.returns.tolist() == [4.0, 6.0]


def test_episodes_either_all_carry_a_task_id_or_none_do():
    with pytest.raises(DatasetError, match="task_id"):
        EpisodeDataset.from_episodes([episode(2, task_id=1), episode(2)], num_actions=5)


def test_histories_are_history_ids_in_dataset_order():
    eps = [episode(2, task_id=t, history_id=h) for t, h in [(5, 3), (5, 3), (1, 0), (5, 3)]]
    ds = EpisodeDataset.from_episodes(eps, num_actions=5)
    assert [h.tolist() for h in ds.histories()] == [[0, 1, 3], [2]]


def test_without_history_ids_a_history_is_the_episodes_of_one_task():
    eps = [episode(2, task_id=t) for t in (2, 0, 2)]
    ds = EpisodeDataset.from_episodes(eps, num_actions=5)
    assert ds.history_ids is None and ds.task_ids.tolist() == [2, 0, 2]
    assert [h.tolist() for h in ds.histories()] == [[0, 2], [1]]


# --------------------------------------------------------------------------------------------
# D4RL files
# --------------------------------------------------------------------------------------------
def test_discrete_dataset_round_trips_through_save_d4rl(tmp_path):
    eps = [episode(4, task_id=t, history_id=h) for t, h in [(3, 0), (3, 0), (8, 1)]]
    ds = EpisodeDataset.from_episodes(eps, num_actions=5)
    path = tmp_path / "d.hdf5"
    ds.save_d4rl(path)
    with h5py.File(path) as f:
        assert f["actions"].dtype == np.int64 and f["actions"].shape == (12,)
        assert f["metadata/num_actions"][()] == 5
        assert f["infos/task_id"][()].tolist() == [3] * 8 + [8] * 4
        assert f["infos/history_id"][()].tolist() == [0] * 8 + [1] * 4
    back = load_dataset(path)
    assert back.discrete and back.act_dim == 5 and back.num_episodes == 3
    for a, b in zip(back.episodes, eps, strict=True):
        assert a.actions.dtype == np.int64 and a.actions.shape == (4,)
        np.testing.assert_array_equal(a.actions, b.actions)
        assert (a.task_id, a.history_id) == (b.task_id, b.history_id)


def test_continuous_file_episodes_have_no_task_or_history_id(tmp_path):
    arrays = {**steps(6, (2, 5)), "actions": np.zeros((6, 3), np.float32)}
    ds = load_dataset(write_h5(tmp_path / "c.hdf5", arrays))
    assert not ds.discrete and ds.act_dim == 3
    assert all(e.task_id is None and e.history_id is None for e in ds)
    assert ds.task_ids is None and len(ds.histories()) == 1


def test_d4rl_integer_actions_without_num_actions_raise_naming_file_and_key(tmp_path):
    path = write_h5(tmp_path / "nometa.hdf5", steps(6, (2, 5)))
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert_names(err, str(path), "metadata/num_actions")


def test_d4rl_num_actions_may_be_an_attribute_of_the_metadata_group(tmp_path):
    path = write_h5(tmp_path / "attr.hdf5", steps(6, (2, 5)))
    with h5py.File(path, "a") as f:
        f.require_group("metadata").attrs["num_actions"] = 5
    assert load_dataset(path).act_dim == 5


def test_d4rl_discrete_action_outside_num_actions_raises_naming_the_step(tmp_path):
    path = write_h5(tmp_path / "range.hdf5", steps(6, (2, 5)), {"num_actions": 4})
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert_names(err, str(path), "'actions'", "at step 4")


def test_d4rl_two_dimensional_integer_actions_raise(tmp_path):
    arrays = {**steps(4, (3,)), "actions": np.zeros((4, 2), np.int64)}
    path = write_h5(tmp_path / "int2d.hdf5", arrays, {"num_actions": 5})
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert_names(err, str(path), "'actions'", "one per step")


def test_d4rl_task_id_not_constant_within_an_episode_raises(tmp_path):
    arrays = {**steps(6, (2, 5)), "infos/task_id": np.array([1, 1, 1, 2, 2, 3])}
    path = write_h5(tmp_path / "ids.hdf5", arrays, {"num_actions": 5})
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert_names(err, str(path), "infos/task_id", "episode 1", "at step 5")


def test_d4rl_history_id_not_constant_within_an_episode_raises(tmp_path):
    arrays = {**steps(4, (1, 3)), "infos/history_id": np.array([0, 1, 1, 1])}
    path = write_h5(tmp_path / "hist.hdf5", arrays, {"num_actions": 5})
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert_names(err, str(path), "infos/history_id", "episode 0")


def test_d4rl_float_task_ids_raise(tmp_path):
    arrays = {**steps(4, (3,)), "infos/task_id": np.zeros(4, np.float32)}
    path = write_h5(tmp_path / "fid.hdf5", arrays, {"num_actions": 5})
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert_names(err, str(path), "infos/task_id", "integer")


def test_d4rl_task_split_metadata_is_read_in_full(tmp_path):
    train, test = np.arange(5000), np.arange(5000, 6000)
    meta = {"num_actions": 5, "train_task_ids": train, "test_task_ids": test}
    ds = load_dataset(write_h5(tmp_path / "split.hdf5", steps(4, (3,)), meta))
    assert ds.metadata["train_task_ids"] == train.tolist()
    assert ds.metadata["test_task_ids"] == test.tolist()


# --------------------------------------------------------------------------------------------
# Minari
# --------------------------------------------------------------------------------------------
def _collect_darkroom_minari(root: Path, monkeypatch, record_infos: bool, callback=None):
    import minari
    from minari import DataCollector

    import envs

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    kw = {"episode_metadata_callback": callback} if callback else {}
    env = DataCollector(envs.make("ringrl/darkroom-v0"), record_infos=record_infos, **kw)
    env.action_space.seed(0)
    for i, task_id in enumerate([4, 4, 9]):
        env.reset(seed=i, options={"task_id": task_id})
        done = False
        while not done:
            *_, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env.create_dataset(dataset_id="darkroom/random-v0", algorithm_name="random")
    return minari


def test_minari_discrete_dataset_takes_task_ids_from_the_episode_metadata(tmp_path, monkeypatch):
    from minari.data_collector.callbacks import EpisodeMetadataCallback

    class TaskIdCallback(EpisodeMetadataCallback):
        calls = iter([4, 4, 9])

        def __call__(self, episode: dict) -> dict:
            return {**super().__call__(episode), "task_id": next(self.calls)}

    _collect_darkroom_minari(tmp_path, monkeypatch, False, TaskIdCallback)
    ds = load_dataset("darkroom/random-v0")
    assert ds.discrete and ds.act_dim == 5 and ds.num_episodes == 3
    assert ds.episodes[0].actions.dtype == np.int64 and ds.episodes[0].actions.shape == (20,)
    assert ds.task_ids.tolist() == [4, 4, 9]


def test_minari_task_ids_fall_back_to_recorded_step_infos(tmp_path, monkeypatch):
    _collect_darkroom_minari(tmp_path, monkeypatch, True)
    ds = load_dataset("darkroom/random-v0")
    assert ds.task_ids.tolist() == [4, 4, 9] and ds.history_ids is None
