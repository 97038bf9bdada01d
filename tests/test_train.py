"""``ringrl train``: run directory contents, resume after SIGKILL, non-finite loss handling, the
run directory's lock, resume only on a matching config, a relocatable run directory, dataset
sizes checked against the task's environment.

Training runs in subprocesses (like a user's) sharing a persistent compilation cache, so only
the first one pays for compiling the tiny model.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from ringrl.checkpoint import Checkpointer
from ringrl.config import ConfigError, load_config
from ringrl.data import Episode, EpisodeDataset
from ringrl.metrics import read_metrics
from ringrl.rundir import DatasetNotFound, RunDirLock
from ringrl.train import DatasetMismatch, check_task_spaces, few_episodes_warning

STEPS = 24


def tiny_dataset(path, obs_dim=3, act_dim=2, **metadata):
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(12):
        T = 16
        episodes.append(
            Episode(
                observations=rng.normal(size=(T, obs_dim)).astype(np.float32),
                actions=rng.uniform(-1, 1, (T, act_dim)).astype(np.float32),
                rewards=rng.random(T).astype(np.float32),
                terminals=np.zeros(T, bool),
                timeouts=np.arange(T) == T - 1,
            )
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    EpisodeDataset.from_episodes(episodes, metadata=metadata).save_d4rl(path)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    tiny_dataset(root / "tiny.hdf5")
    config = {
        "name": "tiny",
        "model": {"num_layers": 1, "d_model": 32, "num_heads": 4, "num_kv_heads": 2,
                  "attention": "vanilla", "block_size": 16, "remat": False},
        "agent": {"kind": "at", "num_trajectories": 2, "steps_per_trajectory": 16,
                  "max_timestep": 16},
        "data": {"path": str(root / "tiny.hdf5")},
        "optim": {"lr": 1e-3, "warmup_steps": 4},
        "train": {"steps": STEPS, "batch_size": 4, "mesh_data": 2, "mesh_seq": 1,
                  "ckpt_every": 4, "log_every": 2},
    }  # fmt: skip
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    return root


def command(root, run_dir, *overrides):
    args = [sys.executable, "-m", "ringrl.cli", "train", str(root / "tiny.yaml")]
    args += ["--run-dir", str(run_dir), "--no-progress"]
    for o in overrides:
        args += ["--set", o]
    return args


def env(root):
    return {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(root / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def train(root, run_dir, *overrides, cwd=None):
    return subprocess.run(
        command(root, run_dir, *overrides), env=env(root), capture_output=True, text=True,
        timeout=900, cwd=cwd,
    )  # fmt: skip


def snapshot(directory):
    """Every file under ``directory`` with its size and modification time."""
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in Path(directory).rglob("*")
    }


def final_params(run_dir):
    ckpt = Checkpointer(Path(run_dir) / "checkpoints")
    step = ckpt.latest_step()
    path = ckpt.directory / str(step) / "state"
    import orbax.checkpoint as ocp

    state = ocp.StandardCheckpointer().restore(path)
    ckpt.close()
    return step, state


@pytest.fixture(scope="module")
def reference(workdir):
    run_dir = workdir / "reference"
    out = train(workdir, run_dir)
    assert out.returncode == 0, out.stderr
    return run_dir


def test_a_run_writes_config_metrics_events_checkpoints_and_plots(reference):
    files = {p.name for p in reference.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "tb", "checkpoints", "loss.png"} <= files
    assert any((reference / "tb").iterdir())
    rows = read_metrics(reference / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(2, STEPS + 1, 2))
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(rows[0])
    assert rows[-1]["loss"] < rows[0]["loss"]
    steps = sorted(int(p.name) for p in (reference / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [16, 20, 24]  # every 4 steps, the last 3 kept
    resolved = yaml.safe_load((reference / "config.yaml").read_text())
    assert resolved["train"]["steps"] == STEPS and resolved["optim"]["grad_clip"] == 0.25


def test_rerunning_a_finished_run_does_nothing(workdir, reference):
    out = train(workdir, reference)
    assert out.returncode == 0 and "already trained" in out.stderr


def test_a_run_killed_at_any_moment_resumes_to_the_same_parameters(workdir, reference):
    run_dir = workdir / "killed"
    proc = subprocess.Popen(
        command(workdir, run_dir), env=env(workdir), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        rows = read_metrics(run_dir / "metrics.jsonl")
        if rows and rows[-1]["step"] >= 10:  # past a checkpoint, between two others
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = read_metrics(run_dir / "metrics.jsonl")[-1]["step"]
    assert killed_at < STEPS

    out = train(workdir, run_dir)
    assert out.returncode == 0, out.stderr
    assert "resuming from" in out.stderr
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(2, STEPS + 1, 2))  # no duplicated rows
    step, resumed = final_params(run_dir)
    ref_step, ref = final_params(reference)
    assert step == ref_step == STEPS
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(a, b)
    assert rows[-1]["loss"] == read_metrics(reference / "metrics.jsonl")[-1]["loss"]


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(workdir):
    run_dir = workdir / "poisoned"
    out = train(workdir, run_dir, "train.nan_at_step=9")
    assert out.returncode == 1
    assert "non-finite loss nan at step 9" in out.stderr
    assert "Last good checkpoint: step 8" in out.stderr
    step, state = final_params(run_dir)
    assert step == 8
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))


def test_a_bad_override_is_a_config_error_naming_the_key(workdir, tmp_path):
    out = train(workdir, tmp_path / "bad", "train.stepz=3")
    assert out.returncode == 2 and "train.stepz" in out.stderr


@pytest.mark.parametrize("key", ["train.log_every", "train.batch_size", "train.ckpt_every"])
def test_a_zero_interval_or_batch_size_is_a_config_error_naming_the_key(key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}=0"])


# ---- the lock ------------------------------------------------------------------------------


def test_a_second_trainer_on_a_locked_run_dir_stops_with_one_line_naming_the_holder(
    workdir, tmp_path
):
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    with RunDirLock(run_dir):  # this process is "the trainer"
        out = train(workdir, run_dir)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert f"pid {os.getpid()} on " in lines[0] and "started 20" in lines[0]
    assert not (run_dir / "config.yaml").exists()


# ---- resume only on a matching config ------------------------------------------------------


def test_a_run_dir_of_another_config_is_refused_before_anything_is_written(workdir, reference):
    before = snapshot(reference)
    out = train(workdir, reference, "model.d_model=64", "optim.lr=0.002", "train.log_every=3")
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert "model.d_model: 32 -> 64" in line and "optim.lr: 0.001 -> 0.002" in line
    assert "train.log_every" not in line  # may change on resume
    assert snapshot(reference) == before


def test_fewer_steps_than_saved_is_refused(workdir, reference):
    out = train(workdir, reference, f"train.steps={STEPS // 2}")
    assert out.returncode == 2
    assert f"train.steps: {STEPS} -> {STEPS // 2} (may only grow)" in out.stderr


def test_a_run_resumes_with_more_steps_and_other_logging_and_checkpointing(
    workdir, reference, tmp_path
):
    run_dir = tmp_path / "shorter"  # the reference as if it had been a 20-step run
    shutil.copytree(reference, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / str(STEPS))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["train"].update(steps=20, log_every=5, ckpt_every=10, keep_checkpoints=1)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    out = train(workdir, run_dir, "train.ckpt_every=2")  # steps 20 -> 24
    assert out.returncode == 0, out.stderr
    assert "(step 20)" in out.stderr
    assert final_params(run_dir)[0] == STEPS
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["steps"] == STEPS and saved["train"]["ckpt_every"] == 2


# ---- a self-contained, relocatable run directory -------------------------------------------


def test_data_json_stores_what_evaluation_needs(reference, workdir):
    data = json.loads((reference / "data.json").read_text())
    assert data["dataset_abs"] == str(workdir / "tiny.hdf5")
    assert (reference / data["dataset_rel_to_run"]).resolve() == workdir / "tiny.hdf5"
    assert (data["obs_dim"], data["act_dim"], data["task"]) == (3, 2, None)
    assert data["dataset_best_return"] == data["returns"]["max"]
    assert data["dataset_mean_return"] > data["returns"]["min"]


@pytest.fixture(scope="module")
def moved(workdir):
    """A run trained from ``home/`` with the relative dataset path ``data/tiny.hdf5``, then
    ``home/`` moved away: neither the config's path nor the stored absolute one exists."""
    home = workdir / "home"
    tiny_dataset(home / "data" / "tiny.hdf5")
    out = train(workdir, "runs/relative", "data.path=data/tiny.hdf5", cwd=home)
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load((home / "runs/relative/config.yaml").read_text())["data"]["path"] == (
        "data/tiny.hdf5"
    )
    (workdir / "elsewhere").mkdir()
    return Path(shutil.move(home, workdir / "elsewhere" / "moved"))


def test_a_moved_run_dir_loads_from_another_working_directory(moved, tmp_path, monkeypatch):
    from ringrl.evaluate import load_agent

    monkeypatch.chdir(tmp_path)
    agent, cfg, ds, step = load_agent(moved / "runs" / "relative")
    assert step == STEPS and (ds.obs_dim, ds.act_dim) == (3, 2)
    assert Path(cfg.data.path).resolve() == moved / "data" / "tiny.hdf5"
    _, saved = final_params(moved / "runs" / "relative")
    trained = saved["0"]["action_head"]["kernel"]  # state: (agent, optimizer)
    np.testing.assert_array_equal(np.asarray(agent.action_head.kernel[...]), trained)


def test_a_run_whose_dataset_is_gone_names_every_path_tried(moved, tmp_path, monkeypatch):
    from ringrl.evaluate import load_agent

    alone = tmp_path / "alone"
    shutil.copytree(moved / "runs" / "relative", alone)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFound) as e:
        load_agent(alone)
    msg = str(e.value)
    assert "\n" not in msg and "--data" in msg
    for tried in ("data/tiny.hdf5", str(alone / "data/tiny.hdf5"), str(alone / "../../data")):
        assert tried in msg


# ---- dataset sizes against the task's environment ------------------------------------------


def test_a_dataset_that_does_not_fit_its_task_stops_before_training(workdir, tmp_path):
    data = tiny_dataset(tmp_path / "pendulum.hdf5", obs_dim=3, act_dim=2, task="Pendulum-v1")
    run_dir = tmp_path / "misfit"
    out = train(workdir, run_dir, f"data.path={data}")
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert str(data) in line and "'Pendulum-v1'" in line
    assert "dataset observations (3,), actions (2,)" in line
    assert "environment observations (3,), actions (1,)" in line
    assert not (run_dir / "config.yaml").exists()


def in_memory(obs_dim, act_dim, **metadata):
    ep = Episode(
        observations=np.zeros((4, obs_dim), np.float32),
        actions=np.zeros((4, act_dim), np.float32),
        rewards=np.zeros(4, np.float32),
        terminals=np.zeros(4, bool),
        timeouts=np.arange(4) == 3,
    )
    return EpisodeDataset.from_episodes([ep], metadata=metadata)


def test_a_dataset_that_fits_its_task_passes_the_check():
    check_task_spaces(load_config(), in_memory(3, 1, task="Pendulum-v1"))


def test_continuous_actions_for_a_discrete_task_do_not_fit():
    with pytest.raises(DatasetMismatch, match=r"actions discrete\(2\)"):
        check_task_spaces(load_config(), in_memory(4, 1, task="CartPole-v1"))


def test_a_task_that_cannot_be_made_is_a_warning_for_training_alone(capsys):
    check_task_spaces(load_config(), in_memory(3, 1, task="NoSuchTask-v0"))
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: ") and "'NoSuchTask-v0' cannot be made" in line


def test_a_task_that_cannot_be_made_is_an_error_when_training_evaluates():
    cfg = load_config(None, ["train.eval_every=10"])
    with pytest.raises(DatasetMismatch, match="NoSuchTask-v0.*train.eval_every needs it"):
        check_task_spaces(cfg, in_memory(3, 1, task="NoSuchTask-v0"))


def test_too_few_episodes_for_chains_warns_naming_the_file_and_the_need():
    msg = few_episodes_warning("data/x.hdf5", 30, 4)
    assert msg.startswith("warning: data/x.hdf5 has 30 episodes, fewer than 10 x N = 40")
    assert few_episodes_warning("data/x.hdf5", 40, 4) is None


def test_single_episode_samples_are_not_warned_about_few_episodes():
    """N = 1 (whole episodes, or DT's and BC's windows) repeats no episode within a sample:
    BC-10% keeping 5 of 50 episodes is not a data problem."""
    assert few_episodes_warning("data/x.hdf5", 5, 1) is None
