"""ringrl.rundir: the trainer's lock, which config changes a resume allows, atomic writes, where a
run's dataset is looked for."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import yaml

from ringrl.config import Config, ConfigError, load_config, to_dict
from ringrl.rundir import (
    ConfigMismatch,
    DatasetNotFound,
    RunDirLock,
    RunDirLocked,
    check_resumable,
    config_differences,
    resolve_dataset,
    write_config,
    write_text_atomic,
)

HOLD = """
import sys, time
from ringrl.rundir import RunDirLock
lock = RunDirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding ``tmp_path``'s lock (killed at the end)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


# ---- the lock -----------------------------------------------------------------------------------


def test_a_locked_run_dir_refuses_a_second_trainer_naming_pid_host_and_start(tmp_path, holder):
    with pytest.raises(RunDirLocked) as e:
        RunDirLock(tmp_path).acquire()
    msg = str(e.value)
    assert f"pid {holder.pid} on {socket.gethostname()}, started 20" in msg
    assert "\n" not in msg and str(tmp_path) in msg


def test_a_killed_trainer_leaves_no_stale_lock(tmp_path, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with RunDirLock(tmp_path) as lock:
        assert lock.held
        assert f'"pid": {os.getpid()}' in (tmp_path / ".lock").read_text()


def test_a_second_trainer_in_the_same_process_is_refused_too(tmp_path):
    with RunDirLock(tmp_path):
        with pytest.raises(RunDirLocked, match=f"pid {os.getpid()} "):
            RunDirLock(tmp_path).acquire()
    with RunDirLock(tmp_path):  # released at exit
        pass


# ---- resuming -----------------------------------------------------------------------------------


def config(*overrides):
    return load_config(None, ["train.steps=100", *overrides])


def test_logging_checkpointing_evaluation_name_and_more_steps_may_change_on_resume():
    old = to_dict(config())
    new = config(
        "name=renamed",
        "train.steps=200",
        "train.log_every=7",
        "train.ckpt_every=9",
        "train.keep_checkpoints=1",
        "train.prefetch=2",
        "train.eval_every=50",
        "train.eval_trials=3",
        "train.eval_episodes=4",
        "train.host_devices=4",
    )
    assert config_differences(old, to_dict(new)) == []


def test_what_is_trained_may_not_change_on_resume_and_each_change_is_listed():
    old = to_dict(config())
    new = to_dict(config("model.d_model=64", "train.seed=3", "train.steps=50"))
    assert config_differences(old, new) == [
        "model.d_model: 256 -> 64",
        "train.steps: 100 -> 50 (may only grow)",
        "train.seed: 0 -> 3",
    ]


def test_a_refused_resume_changes_nothing_in_the_run_dir(tmp_path):
    write_config(config("model.num_layers=2"), tmp_path)
    before = (tmp_path / "config.yaml").read_bytes()
    with pytest.raises(ConfigMismatch, match=r"model\.num_layers: 2 -> 4") as e:
        check_resumable(tmp_path, config())
    assert isinstance(e.value, ConfigError) and "\n" not in str(e.value)
    assert (tmp_path / "config.yaml").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_a_matching_saved_config_resumes_and_a_missing_one_starts_fresh(tmp_path):
    check_resumable(tmp_path, config())  # nothing saved
    write_config(config(), tmp_path)
    check_resumable(tmp_path, config("train.steps=300"))


def test_a_saved_config_missing_newer_keys_is_read_with_their_defaults(tmp_path):
    saved = to_dict(config())
    del saved["model"]["feedforward"]  # a key added after this run was trained
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    check_resumable(tmp_path, config())


def test_the_same_dataset_named_from_another_directory_is_the_same_config(tmp_path, monkeypatch):
    data = tmp_path / "d.hdf5"
    data.touch()
    run = tmp_path / "run"
    run.mkdir()
    write_config(config("data.path=d.hdf5"), run)  # trained from tmp_path
    (run / "data.json").write_text(json.dumps({"dataset_abs": str(data)}))
    monkeypatch.chdir(run)
    check_resumable(run, config(f"data.path={data}"))
    check_resumable(run, config("data.path=../d.hdf5"))
    with pytest.raises(ConfigMismatch, match=r"data\.path: 'd\.hdf5' -> 'other\.hdf5'"):
        check_resumable(run, config("data.path=other.hdf5"))


def test_config_yaml_is_written_atomically(tmp_path):
    write_config(Config(), tmp_path)
    write_text_atomic(tmp_path / "config.yaml", "name: x\n")
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary left
    assert (tmp_path / "config.yaml").read_text() == "name: x\n"


# ---- finding a run's dataset --------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """``run/`` inside ``tmp_path``; the working directory somewhere else."""
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path, run


def test_the_dataset_path_as_given_comes_first(layout):
    root, run = layout
    (root / "cwd" / "d.hdf5").touch()
    (run / "d.hdf5").touch()
    assert resolve_dataset(run, "d.hdf5", {}) == "d.hdf5"


def test_then_relative_to_the_run_dir(layout):
    root, run = layout
    (run / "d.hdf5").touch()
    assert resolve_dataset(run, "d.hdf5", {"dataset_abs": str(root / "x")}) == str(run / "d.hdf5")


def test_then_the_stored_absolute_path_then_the_stored_run_relative_path(layout):
    root, run = layout
    (root / "d.hdf5").touch()
    report = {"dataset_abs": str(root / "d.hdf5"), "dataset_rel_to_run": "../moved.hdf5"}
    assert resolve_dataset(run, "data/d.hdf5", report) == str(root / "d.hdf5")
    (root / "d.hdf5").rename(root / "moved.hdf5")
    assert resolve_dataset(run, "data/d.hdf5", report) == str(run / "../moved.hdf5")


def test_no_dataset_found_names_every_path_tried_and_suggests_data(layout):
    root, run = layout
    report = {"dataset_abs": "/gone/d.hdf5", "dataset_rel_to_run": "../d.hdf5"}
    with pytest.raises(DatasetNotFound) as e:
        resolve_dataset(run, "data/d.hdf5", report)
    msg = str(e.value)
    tried = ["data/d.hdf5", str(run / "data/d.hdf5"), "/gone/d.hdf5", str(run / "../d.hdf5")]
    assert f"tried {', '.join(tried)};" in msg and "--data" in msg and "\n" not in msg
