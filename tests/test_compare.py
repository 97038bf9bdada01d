"""``ringrl compare``: seeds aggregate into intervals beside the paper's Table 5."""

import argparse
import json

import numpy as np

from ringrl.compare import aggregate, compare, markdown, reused_reset_seeds, significance


def fake_eval(final: float, curve: list[float], seed0: int = 0, train_seed: int = 0) -> dict:
    return {
        "final_return_mean": final,
        "mean_return_mean": float(np.mean(curve)),
        "max_return_mean": max(curve),
        "random_return_mean": 5.0,
        "constant_return_mean": 7.0,
        "episode_return_mean": curve,
        "reset_seeds": (seed0 + np.arange(4).reshape(2, 2)).tolist(),
        "train_seed": train_seed,
        "trials": 2,
    }


def results():
    at = [fake_eval(100.0 + 10 * s, [50.0, 100.0 + 10 * s], 100 * s, s) for s in range(5)]
    dt = [fake_eval(60.0 + s, [60.0 + s, 60.0 + s], 1000 + 100 * s, s) for s in range(5)]
    return {"cartpole_swingup": {"dt": dt, "at_ra_n4": at}}


def test_seeds_aggregate_to_a_bootstrap_interval_with_the_papers_number():
    table = aggregate(results())
    at = table["cartpole_swingup"]["at_ra_n4"]
    assert at["seeds"] == 5 and at["final"]["mean"] == 120.0
    lo, hi = at["final"]["ci95"]
    assert 100.0 <= lo < 120.0 < hi <= 140.0
    assert at["curve"] == [50.0, 120.0]
    assert at["paper"] == "123.45"  # the paper's AT+RA, N=128 (units not stated)
    text = markdown(table, "local")
    assert "| cartpole_swingup | AT+RA (N=4) | 5 | 120.0 [" in text


def test_the_largest_context_at_is_tested_against_every_other_method():
    table = aggregate(results())
    signif = significance(table, ["dt", "at_ra_n4"])
    d = signif["cartpole_swingup"]["dt"]
    assert d["against"] == "at_ra_n4" and d["diff"] == 58.0 and d["significant"]


def test_reused_reset_seeds_are_counted():
    assert reused_reset_seeds(results()) == 0
    clash = results()
    clash["cartpole_swingup"]["dt"][0]["reset_seeds"] = [[0, 1], [2, 3]]  # AT seed 0's seeds
    assert reused_reset_seeds(clash) == 4


def test_report_only_tabulates_the_finished_runs_without_running_anything(tmp_path):
    done = tmp_path / "runs" / "cartpole_swingup" / "dt" / "seed1"
    done.mkdir(parents=True)
    (done / "eval.json").write_text(json.dumps(fake_eval(60.0, [60.0])))
    args = argparse.Namespace(
        run_dir=str(tmp_path / "runs"),
        tasks=["cartpole_swingup", "walker_stand"],
        methods=["bc10", "dt"],
        seeds=[0, 1, 2],
        scale="local",
        report_only=True,
        publish=str(tmp_path / "docs"),
    )
    table = compare(args)
    assert list(table) == ["cartpole_swingup"] and list(table["cartpole_swingup"]) == ["dt"]
    assert table["cartpole_swingup"]["dt"]["seeds"] == 1
    assert (
        "| cartpole_swingup | DT | 1 | 60.0 [60.0, 60.0] |"
        in (tmp_path / "docs" / "results.md").read_text()
    )
    assert (tmp_path / "docs" / "runs" / "cartpole_swingup" / "dt" / "seed1" / "eval.json").exists()
    assert (tmp_path / "docs" / "curves_cartpole_swingup.png").exists()
