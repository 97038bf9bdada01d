"""ringrl quickstart --tiny, then ringrl eval on its runs: AT protocol over a vector env, KV
cache == recompute, eval.json, DT via the CLI.

The quickstart's tiny runs (its dataset, AT with N = 2 and DT, 3 steps each) are the runs these
tests evaluate, so the suite collects and trains them once.
"""

import contextlib
import io
import json

import numpy as np
import pytest

from ringrl.cli import main
from ringrl.evaluate import SEED_STRIDE, RandomPolicy, evaluate, rollout, seed_block
from ringrl.quickstart import TINY, at_overrides, train_run

TASK = TINY.task  # Reacher-v5: 50-step episodes


QUICKSTART_FILES = (
    "summary.json",
    "curve.png",
    "at/eval.json",
    "dt/eval.json",
    "at/eval_curve.png",
)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """``ringrl quickstart --tiny`` into a fresh directory: the directory, what it printed, and
    the size of each file it wrote (before any test evaluates its runs again)."""
    root = tmp_path_factory.mktemp("quickstart")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["quickstart", "--tiny", "--run-dir", str(root)]) == 0
    sizes = {f: (root / f).stat().st_size for f in QUICKSTART_FILES if (root / f).exists()}
    return root, out.getvalue(), sizes


@pytest.fixture(scope="module")
def runs(quickstart):
    """The quickstart's dataset, AT (N = 2, 1-token layout) and DT runs, and an AT run with the
    4-token layout that evaluates during training."""
    root = quickstart[0]
    data = root / f"{TASK}-{TINY.collect_policy}-{TINY.collect_steps}.hdf5"
    assert data.exists() and (root / "at").is_dir() and (root / "dt").is_dir()
    four = [*at_overrides(TINY, data, 50), "agent.tokens_per_step=4", "name=at4"]
    four += ["train.eval_every=3", "train.eval_trials=1", "train.eval_episodes=2"]
    train_run(four, root / "at4", "at4")
    return root


def test_quickstart_tiny(quickstart):
    """Every stage runs and writes its table, summary and plots."""
    root, out, sizes = quickstart
    assert "AT in-context curve" in out and "DT (2 trials x 2 episodes)" in out
    assert "95% bootstrap interval over trials" in out
    s = json.loads((root / "summary.json").read_text())
    assert len(s["at_curve"]) == 4 and s["task"] == "Reacher-v5"  # 2N episodes
    lo, hi = s["at"]["final_return"][1:]
    assert lo <= s["at"]["final_return"][0] <= hi
    for f in QUICKSTART_FILES:
        assert sizes.get(f, 0) > 0, f


def test_training_evaluates_into_metrics_and_a_plot(runs):
    from ringrl.metrics import read_metrics

    rows = [r for r in read_metrics(runs / "at4" / "metrics.jsonl") if "eval_final_return" in r]
    assert [r["step"] for r in rows] == [3]
    assert rows[0]["eval_final_return"] < 0  # Reacher: negative rewards, a real rollout
    assert (runs / "at4" / "eval_during_training.png").stat().st_size > 1000


def test_rollout_fixed_quota_and_seeded():
    """Trial i runs in env i % E (3 trials over 2 envs); same seed, same returns."""
    a, steps = rollout(TASK, RandomPolicy(2, 2, 0), trials=3, episodes=2, num_envs=2, seed=1)
    b, _ = rollout(TASK, RandomPolicy(2, 2, 0), trials=3, episodes=2, num_envs=2, seed=1)
    assert a.shape == (3, 2) and steps == 3 * 2 * 50
    np.testing.assert_array_equal(a, b)
    assert np.all(a < 0)  # every episode ran (Reacher rewards are negative)


def test_eval_at_in_context_writes_json_and_plot(runs):
    for name in ("eval.json", "eval_curve.png"):  # the quickstart's evaluation wrote them
        (runs / "at" / name).unlink(missing_ok=True)
    r = evaluate(runs / "at", trials=3, num_envs=2)
    assert r["decode"] == "cache" and r["episodes"] == 4  # default K = 2N for AT
    saved = json.loads((runs / "at" / "eval.json").read_text())
    for key in (
        "task",
        "method",
        "returns",
        "final_return_mean",
        "final_return_ci95",
        "mean_return_mean",
        "max_return_mean",
        "max_return_note",
        "final_normalized_mean",
        "random_return_mean",
        "constant_return_mean",
        "constant_action",
        "reset_seeds",
        "order",
    ):
        assert key in saved
    returns = np.asarray(saved["returns"])
    assert saved["task"] == TASK and saved["method"] == "at" and returns.shape == (3, 4)
    assert saved["final_return_mean"] == pytest.approx(returns[:, -1].mean(), abs=1e-2)
    assert saved["max_return_mean"] == pytest.approx(returns.max(1).mean(), abs=1e-2)
    lo, hi = saved["final_return_ci95"]
    assert lo <= saved["final_return_mean"] <= hi
    assert saved["target_return"] == pytest.approx(saved["dataset_best_return"])
    assert saved["order"] == "sorted"
    assert (runs / "at" / "eval_curve.png").stat().st_size > 1000


def test_every_reset_seed_of_an_evaluation_is_distinct_and_recorded(runs, tmp_path):
    r = evaluate(runs / "at", trials=3, num_envs=2, episodes=2, seed=500, out_dir=tmp_path)
    seeds = np.asarray(r["reset_seeds"])
    assert seeds.shape == (3, 2) and len(np.unique(seeds)) == 6 and seeds.min() == 500


def test_seed_blocks_of_a_comparison_never_overlap():
    blocks = [seed_block(m, s) for m in range(5) for s in range(5)]
    ranges = sorted((b, b + SEED_STRIDE) for b in blocks)
    assert all(hi <= lo2 for (_, hi), (lo2, _) in zip(ranges, ranges[1:], strict=False))


@pytest.mark.parametrize("run", ["at", "at4"])  # 1-token and 4-token layouts
@pytest.mark.parametrize("episodes", [2, 6])  # K = N, 3N
def test_eval_cache_and_recompute_act_the_same_on_one_history(runs, run, episodes):
    """Paired: the cache acts, the recompute policy sees the same history and proposes its
    action at every step -- the exact check that both build the same context, evictions and
    prefills included (free-running trials drift apart on float rounding alone, see below)."""
    from ringrl.evaluate import paired

    result = paired(str(runs / run), episodes)
    assert result["max_abs_action_difference"] < 1e-5
    assert episodes == 2 or result["prefills"] > 0  # past N episodes the cache re-prefilled


@pytest.mark.parametrize("run", ["at", "at4"])  # 1-token and 4-token layouts
@pytest.mark.parametrize("episodes", [2, 4])  # K = N, 2N
def test_eval_cache_equals_recompute(runs, tmp_path, run, episodes):
    """The same trials with the KV cache and with full recompute give the same returns. (At
    K = 3N free-running returns of the tiny run drifted apart by 0.09 in one of 12 episodes on
    2026-12-01: per-step actions differ by ~1e-6 and Reacher amplifies them; the paired test
    above checks 3N exactly.)"""
    kw = dict(trials=2, num_envs=2, episodes=episodes, with_baselines=False)
    cached = evaluate(runs / run, decode="cache", out_dir=tmp_path / "c", **kw)
    full = evaluate(runs / run, decode="recompute", out_dir=tmp_path / "r", **kw)
    assert full["decode"] == "recompute" and cached["decode"] == "cache"
    np.testing.assert_allclose(cached["returns"], full["returns"], atol=1e-2)


def test_eval_played_order_is_recorded_and_cache_equals_recompute(runs, tmp_path):
    kw = dict(trials=1, num_envs=1, episodes=4, with_baselines=False, order="played")
    cached = evaluate(runs / "at", decode="cache", out_dir=tmp_path / "c", **kw)
    full = evaluate(runs / "at", decode="recompute", out_dir=tmp_path / "r", **kw)
    assert cached["order"] == "played"
    np.testing.assert_allclose(cached["returns"], full["returns"], atol=1e-2)


def test_eval_sharded_cache_equals_unsharded(runs, tmp_path):
    kw = dict(trials=1, num_envs=1, episodes=3, decode="cache", with_baselines=False)
    one = evaluate(runs / "at", out_dir=tmp_path / "1", **kw)
    four = evaluate(runs / "at", seq_shards=4, out_dir=tmp_path / "4", **kw)
    np.testing.assert_allclose(one["returns"], four["returns"], atol=1e-2)


def test_eval_dt_through_cli(runs, capsys):
    (runs / "dt" / "eval.json").unlink(missing_ok=True)  # the quickstart's evaluation wrote it
    ckpt = next((runs / "dt" / "checkpoints").glob("[0-9]*"))
    argv = ["eval", str(ckpt), "--trials", "2", "--envs", "2", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "max-over-episodes" in out and "95% CI" in out
    r = json.loads((runs / "dt" / "eval.json").read_text())
    assert r["method"] == "dt" and r["episodes"] == 1 and r["decode"] == "recompute"
