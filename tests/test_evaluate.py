"""ringrl eval: AT protocol over a vector env, KV cache == recompute, eval.json, DT via the CLI."""

import json

import numpy as np
import pytest

from ringrl.evaluate import RandomPolicy, evaluate, rollout
from ringrl.quickstart import TINY, at_overrides, collect, dt_overrides, train_run

TASK = TINY.task  # Reacher-v5: 50-step episodes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny dataset and tiny AT (2 episodes of context) and DT runs, trained 3 steps."""
    root = tmp_path_factory.mktemp("runs")
    data = collect(TINY, root)
    train_run(at_overrides(TINY, data, 50), root / "at", "at")
    train_run(dt_overrides(TINY, data, 50), root / "dt", "dt")
    return root


def test_rollout_fixed_quota_and_seeded():
    """Trial i runs in env i % E (3 trials over 2 envs); same seed, same returns."""
    a, steps = rollout(TASK, RandomPolicy(2, 2, 0), trials=3, episodes=2, num_envs=2, seed=1)
    b, _ = rollout(TASK, RandomPolicy(2, 2, 0), trials=3, episodes=2, num_envs=2, seed=1)
    assert a.shape == (3, 2) and steps == 3 * 2 * 50
    np.testing.assert_array_equal(a, b)
    assert np.all(a < 0)  # every episode ran (Reacher rewards are negative)


def test_eval_at_in_context_writes_json_and_plot(runs):
    r = evaluate(runs / "at", trials=3, num_envs=2)
    assert r["decode"] == "cache" and r["episodes"] == 2  # default K = N for AT
    saved = json.loads((runs / "at" / "eval.json").read_text())
    for key in (
        "task",
        "method",
        "returns",
        "final_return_mean",
        "max_return_mean",
        "max_return_note",
        "final_normalized_mean",
        "max_normalized_mean",
        "random_return_mean",
    ):
        assert key in saved
    returns = np.asarray(saved["returns"])
    assert saved["task"] == TASK and saved["method"] == "at" and returns.shape == (3, 2)
    assert saved["final_return_mean"] == pytest.approx(returns[:, -1].mean(), abs=1e-2)
    assert saved["max_return_mean"] == pytest.approx(returns.max(1).mean(), abs=1e-2)
    assert saved["target_return"] == pytest.approx(saved["dataset_best_return"])
    assert (runs / "at" / "eval_curve.png").stat().st_size > 1000


def test_eval_cache_equals_recompute(runs, tmp_path):
    """The same trials with the KV cache and with full recompute give the same returns."""
    kw = dict(trials=2, num_envs=2, episodes=2)
    cached = evaluate(runs / "at", decode="cache", out_dir=tmp_path / "c", **kw)
    full = evaluate(runs / "at", decode="recompute", out_dir=tmp_path / "r", **kw)
    assert full["decode"] == "recompute"
    np.testing.assert_allclose(cached["returns"], full["returns"], atol=1e-2)


def test_eval_sharded_cache_equals_unsharded(runs, tmp_path):
    kw = dict(trials=1, num_envs=1, episodes=2, decode="cache")
    one = evaluate(runs / "at", out_dir=tmp_path / "1", **kw)
    four = evaluate(runs / "at", seq_shards=4, out_dir=tmp_path / "4", **kw)
    np.testing.assert_allclose(one["returns"], four["returns"], atol=1e-2)


def test_eval_dt_through_cli(runs, capsys):
    from ringrl.cli import main

    ckpt = next((runs / "dt" / "checkpoints").glob("[0-9]*"))
    assert main(["eval", str(ckpt), "--trials", "2", "--envs", "2", "--no-progress"]) == 0
    assert "max-over-episodes" in capsys.readouterr().out
    r = json.loads((runs / "dt" / "eval.json").read_text())
    assert r["method"] == "dt" and r["episodes"] == 1 and r["decode"] == "recompute"
