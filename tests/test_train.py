"""``ringrl train``: run directory contents, resume after SIGKILL, non-finite loss handling.

Training runs in subprocesses (like a user's) sharing a persistent compilation cache, so only
the first one pays for compiling the tiny model.
"""

import os
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
from ringrl.data import Episode, EpisodeDataset
from ringrl.metrics import read_metrics

STEPS = 24


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(12):
        T = 16
        episodes.append(
            Episode(
                observations=rng.normal(size=(T, 3)).astype(np.float32),
                actions=rng.uniform(-1, 1, (T, 2)).astype(np.float32),
                rewards=rng.random(T).astype(np.float32),
                terminals=np.zeros(T, bool),
                timeouts=np.arange(T) == T - 1,
            )
        )
    EpisodeDataset.from_episodes(episodes).save_d4rl(root / "tiny.hdf5")
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


def train(root, run_dir, *overrides):
    return subprocess.run(
        command(root, run_dir, *overrides), env=env(root), capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip


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
