"""Tests of the data-collection agents and ``ringrl collect`` (tiny settings, CPU, < 60 s)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest

from ringrl.cli import main

CARTPOLE = "dm_control/cartpole-swingup-v0"
WALKER = "dm_control/walker-walk-v0"
REACHER = "Reacher-v5"  # 50-step episodes, no termination: cheap SAC evaluations
TINY_SAC = [
    "--learning-starts", "100", "--eval-every", "200", "--eval-episodes", "1",
    "--hidden", "32", "32", "--batch-size", "32", "--quiet",
]  # fmt: skip


def collect(*args: str) -> int:
    return main(["collect", *args])


def read_h5(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}

    def visit(name: str, node: h5py.HLObject) -> None:
        if isinstance(node, h5py.Dataset):
            out[name] = node[()]

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory) -> Path:
    """One tiny SAC training run on Reacher (replay split); its snapshots are reused."""
    out = tmp_path_factory.mktemp("sac") / "reacher-replay.hdf5"
    assert collect(REACHER, "--policy", "sac", "--steps", "400", "--out", str(out), *TINY_SAC) == 0
    return out


# --------------------------------------------------------------------------------------------
def test_random_collection_writes_loadable_d4rl_file_with_physics(tmp_path):
    from ringrl.data import load_dataset

    out = tmp_path / "cartpole-random.hdf5"
    assert collect(CARTPOLE, "--policy", "random", "--steps", "300", "--out", str(out)) == 0
    ds = load_dataset(out)
    assert ds.num_steps == 300 and ds.obs_dim == 5 and ds.act_dim == 1
    raw = read_h5(out)
    for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
        assert len(raw[key]) == 300, key
    assert raw["infos/physics"].shape == (300, 4)  # cartpole: qpos 2 + qvel 2
    summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
    assert summary["steps"] == 300 and summary["episodes"] == 1
    assert out.with_name(out.name + ".returns.png").stat().st_size > 0


def test_physics_states_relabel_to_the_recorded_rewards(tmp_path):
    import envs

    out = tmp_path / "walker-random.hdf5"
    assert collect(WALKER, "--policy", "random", "--steps", "200", "--out", str(out)) == 0
    raw = read_h5(out)
    relabelled = envs.relabel_rewards(WALKER, raw["infos/physics"])
    np.testing.assert_allclose(relabelled, raw["rewards"], rtol=1e-5, atol=1e-6)


def test_random_collection_is_deterministic_given_seed(tmp_path):
    paths = [tmp_path / f"{name}.hdf5" for name in ("a", "b", "c")]
    for path, seed in zip(paths, ("3", "3", "4"), strict=True):
        collect(CARTPOLE, "--steps", "200", "--seed", seed, "--out", str(path), "--quiet")
    a, b, c = (read_h5(p) for p in paths)
    for key in ("observations", "actions", "rewards", "infos/physics"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["actions"], c["actions"])


def test_summary_and_dataset_store_a_ten_bin_return_histogram(tmp_path):
    from ringrl.data import load_dataset

    out = tmp_path / "reacher-random.hdf5"
    assert collect(REACHER, "--steps", "300", "--out", str(out), "--quiet") == 0
    summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
    hist = summary["return_histogram"]
    returns = summary["returns_all"]
    assert len(hist["edges"]) == 11 and len(hist["counts"]) == 10
    assert sum(hist["counts"]) == summary["complete_episodes"] == 6  # Reacher: 50-step episodes
    assert hist["edges"][0] == min(returns) and hist["edges"][-1] == pytest.approx(max(returns))
    stored = load_dataset(out).metadata
    assert json.loads(stored["return_histogram"]) == hist
    assert summary["warmup_episodes"] == stored["warmup_episodes"] == 0  # random: no warm-up


def test_collection_prints_a_text_histogram_unless_quiet(tmp_path, capsys):
    out = tmp_path / "reacher-random.hdf5"
    assert collect(REACHER, "--steps", "100", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    bins = [line for line in printed.splitlines() if line.lstrip().startswith("[")]
    assert len(bins) == 10 and sum("#" in line for line in bins) >= 1
    assert collect(REACHER, "--steps", "100", "--out", str(out), "--quiet", "--force") == 0
    assert "histogram" not in capsys.readouterr().out


def test_warmup_episodes_count_only_episodes_wholly_before_learning_starts():
    from agents.collect.output import warmup_episodes

    episodes = [{"rewards": np.zeros(n)} for n in (50, 50, 50)]
    assert [warmup_episodes(episodes, s) for s in (0, 49, 50, 99, 100, 1000)] == [0, 0, 1, 1, 2, 3]


def test_sac_update_reduces_critic_loss_on_a_fixed_batch():
    from agents.collect.sac import SAC, Batch, SACConfig

    agent, state = SAC.create(SACConfig(hidden_dims=(64, 64), seed=0), obs_dim=3, act_dim=2)
    rng = np.random.default_rng(0)
    batch = Batch(
        obs=rng.normal(size=(64, 3)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(64, 2)).astype(np.float32),
        rewards=rng.normal(size=64).astype(np.float32),
        next_obs=rng.normal(size=(64, 3)).astype(np.float32),
        terminals=np.zeros(64, np.float32),
    )
    losses = []
    for _ in range(100):
        state, info = agent.update(state, batch)
        losses.append(float(info["critic_loss"]))
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert all(np.isfinite(losses))


def test_sac_cli_writes_replay_dataset_curve_and_snapshots(sac_run):
    from ringrl.data import load_dataset

    ds = load_dataset(sac_run)
    assert ds.num_steps == 400 and ds.num_episodes == 8  # Reacher: 50-step episodes
    curve = json.loads(sac_run.with_name(sac_run.name + ".curve.json").read_text())
    assert [row["step"] for row in curve["curve"]] == [200, 400]
    assert sac_run.with_name(sac_run.name + ".curve.png").exists()
    snaps = json.loads((sac_run.with_name(sac_run.name + ".sac") / "snapshots.json").read_text())
    assert [s["step"] for s in snaps] == [200, 400]
    summary = json.loads(sac_run.with_name(sac_run.name + ".summary.json").read_text())
    assert summary["warmup_steps"] == 100  # --learning-starts 100: episodes of 50 random steps
    assert summary["warmup_episodes"] == ds.metadata["warmup_episodes"] == 2


def test_sac_expert_split_rolls_out_the_best_saved_snapshot(sac_run, tmp_path):
    from ringrl.data import load_dataset

    out = tmp_path / "reacher-expert.hdf5"
    snaps = str(sac_run.with_name(sac_run.name + ".sac"))
    args = ["--policy", "sac", "--split", "expert", "--sac-snapshots", snaps, "--steps", "400"]
    assert collect(REACHER, *args, "--rollout-steps", "100", "--out", str(out), "--quiet") == 0
    assert load_dataset(out).num_steps == 100
    summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
    saved = json.loads((Path(snaps) / "snapshots.json").read_text())
    best = max(saved, key=lambda s: s["eval_return"])
    assert summary["snapshot"]["step"] == best["step"]


def test_sac_collection_is_deterministic_given_seed(sac_run, tmp_path):
    again = tmp_path / "again.hdf5"
    args = ["--policy", "sac", "--steps", "400", "--out", str(again), *TINY_SAC]
    assert collect(REACHER, *args) == 0
    a, b = read_h5(sac_run), read_h5(again)
    for key in ("observations", "actions", "rewards"):
        np.testing.assert_array_equal(a[key], b[key])


def test_rnd_reward_is_higher_for_novel_than_for_repeated_states():
    from agents.collect.explore import RND, RNDConfig

    cfg = RNDConfig(hidden_dims=(64, 64), rep_dim=32, lr=1e-3)
    rnd, state = RND.create(cfg, 8, jax.random.key(0))
    rng = np.random.default_rng(0)
    seen = rng.normal(size=(128, 8)).astype(np.float32)
    update = jax.jit(rnd.update)
    for _ in range(300):
        state, _ = update(state, seen)
    novel = rng.normal(loc=3.0, size=(128, 8)).astype(np.float32)
    assert float(rnd.reward(state, novel).mean()) > 3 * float(rnd.reward(state, seen).mean())


def test_explore_with_update_every_4_makes_a_quarter_of_the_updates(monkeypatch):
    from agents.collect import explore
    from envs import make

    made = explore.make_update
    calls = []

    def counting(sac, rnd):
        update = made(sac, rnd)
        return lambda state, batch: (calls.append(1), update(state, batch))[1]

    monkeypatch.setattr(explore, "make_update", counting)
    sac = explore.SACConfig(total_steps=60, learning_starts=20, batch_size=8,
                            hidden_dims=(16,), update_every=4)  # fmt: skip
    rnd = explore.RNDConfig(hidden_dims=(16,), rep_dim=8)
    result = explore.train(make(CARTPOLE), explore.ExploreConfig(sac=sac, rnd=rnd))
    assert len(calls) == 10  # steps 24, 28, ..., 60: after the warm-up, one in four
    assert sum(len(e["rewards"]) for e in result.episodes) == 60


def test_explore_relabels_one_dataset_per_task(tmp_path):
    out = tmp_path / "walker-rnd.hdf5"
    args = ["--policy", "explore", "--steps", "200", "--out", str(out), *TINY_SAC]
    assert collect(WALKER, *args, "--relabel", "walker-stand,walker-run") == 0
    stand, run = (read_h5(tmp_path / f"walker-rnd-walker-{t}.hdf5") for t in ("stand", "run"))
    np.testing.assert_array_equal(stand["observations"], run["observations"])
    np.testing.assert_array_equal(stand["infos/physics"], run["infos/physics"])
    assert stand["rewards"].mean() > run["rewards"].mean()  # a falling walker still "stands" a bit
    assert not out.exists()  # with --relabel only the per-task files are written


def test_crash_during_collection_leaves_no_file(tmp_path, monkeypatch):
    import agents.collect.cli as cli

    real_rollout = cli.rollout

    def crashing_rollout(env, policy, num_steps, **kw):
        def pi(obs, n=[0]):  # noqa: B006  (call counter)
            n[0] += 1
            if n[0] > 50:
                raise RuntimeError("simulated crash")
            return policy(obs)

        return real_rollout(env, pi, num_steps, **kw)

    monkeypatch.setattr(cli, "rollout", crashing_rollout)
    with pytest.raises(RuntimeError, match="simulated crash"):
        collect(CARTPOLE, "--steps", "200", "--out", str(tmp_path / "x.hdf5"), "--quiet")
    assert list(tmp_path.iterdir()) == []


def test_crash_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = h5py.Group.create_dataset

    def failing_create_dataset(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError("disk full (simulated)")
        return real(self, *a, **kw)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing_create_dataset)
    with pytest.raises(OSError, match="simulated"):
        collect(CARTPOLE, "--steps", "100", "--out", str(tmp_path / "x.hdf5"), "--quiet")
    assert list(tmp_path.iterdir()) == []


# ---- collection that never loses data ------------------------------------------------------
def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """Collection work (making an environment) fails the test: arguments are checked first."""
    import agents.collect.cli as cli

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(cli, "make_env", forbidden)
    monkeypatch.setattr(cli, "rollout", forbidden)


def test_collect_refuses_to_overwrite_an_existing_output(tmp_path, capsys):
    out = tmp_path / "x.hdf5"
    assert collect(REACHER, "--steps", "50", "--out", str(out), "--quiet") == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert collect(REACHER, "--steps", "50", "--seed", "1", "--out", str(out), "--quiet") == 2
    line = one_error_line(capsys)
    assert str(out) in line and "--force" in line
    assert out.read_bytes() == before


def test_collect_force_replaces_an_existing_output(tmp_path):
    out = tmp_path / "x.hdf5"
    assert collect(REACHER, "--steps", "50", "--out", str(out), "--quiet") == 0
    first = read_h5(out)["actions"]
    assert (
        collect(REACHER, "--steps", "50", "--seed", "1", "--out", str(out), "--quiet", "--force")
        == 0
    )
    assert not np.array_equal(read_h5(out)["actions"], first)


@pytest.mark.parametrize(
    "args, option",
    [
        (["--steps", "0"], "--steps"),
        (["--steps", "-5"], "--steps"),
        (["--learning-starts", "-1"], "--learning-starts"),
        (["--update-every", "0"], "--update-every"),
        (["--rollout-steps", "0"], "--rollout-steps"),
        (["--hidden", "32", "0"], "--hidden"),
        (["--relabel", "walker-stand,nosuch-task"], "nosuch-task"),
        (["--relabel", "cheetah-run"], "cheetah-run"),
    ],
)
def test_collect_rejects_a_bad_option_before_any_work(args, option, tmp_path, no_work, capsys):
    out = tmp_path / "x.hdf5"
    assert collect(WALKER, "--steps", "100", *args, "--out", str(out)) == 2
    assert option in one_error_line(capsys)
    assert not out.exists()


def test_collect_rejects_an_unknown_task_before_any_work(tmp_path, no_work, capsys):
    assert collect("Nosuch-v9", "--steps", "10", "--out", str(tmp_path / "x.hdf5")) == 2
    assert "unknown task 'Nosuch-v9'" in one_error_line(capsys)


def test_collect_rejects_an_output_directory_that_cannot_be_made(tmp_path, no_work, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "sub" / "x.hdf5"
    assert collect(REACHER, "--steps", "10", "--out", str(out)) == 2
    assert f"--out {out}: cannot create its directory" in one_error_line(capsys)


def test_learning_starts_beyond_the_steps_passes_the_checks(tmp_path):
    import argparse

    from agents.collect.cli import add_arguments, validate

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "x.hdf5"
    args = parser.parse_args(
        [REACHER, "--policy", "sac", "--steps", "50", "--learning-starts", "100", "--out", str(out)]
    )
    assert validate(args) == (REACHER, [], [out])


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_of_a_killed_run_are_removed_by_the_next(tmp_path, capsys):
    out = tmp_path / "x.hdf5"
    pid = dead_pid()
    stale_dataset = tmp_path / f".x.hdf5.{pid}.tmp"  # the HDF5 file's temporary directory
    stale_dataset.mkdir()
    (stale_dataset / ".x.hdf5.k3j2_1ab.tmp").write_bytes(b"half an HDF5 file")
    stale_summary = tmp_path / f".x.hdf5.summary.json.{pid}.tmp"
    stale_plot = tmp_path / f".x.hdf5.returns.png.{pid}.tmp.png"
    live = tmp_path / f".x.hdf5.{os.getppid()}.tmp"  # a live process's: kept
    other = tmp_path / f".y.hdf5.{pid}.tmp"  # another output's: kept
    for path in (stale_summary, stale_plot, live, other):
        path.write_text("partial")
    assert collect(REACHER, "--steps", "50", "--out", str(out), "--quiet") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name, f"{out.name}.summary.json", f"{out.name}.returns.png", live.name, other.name]
    )
    assert str(stale_dataset) in capsys.readouterr().err


def test_dataset_and_its_siblings_share_one_file_mode(tmp_path):
    out = tmp_path / "x.hdf5"
    assert collect(REACHER, "--steps", "50", "--out", str(out), "--quiet") == 0
    umask = os.umask(0)
    os.umask(umask)
    for path in (out, Path(f"{out}.summary.json"), Path(f"{out}.returns.png")):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
