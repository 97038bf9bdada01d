"""``ringrl compare``: seeds aggregate into intervals beside the paper's Table 5."""

import argparse
import json

import numpy as np

from ringrl.compare import (
    aggregate,
    compare,
    finished,
    markdown,
    reused_reset_seeds,
    significance,
)


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


def test_the_largest_context_is_found_by_the_presets_n_not_by_its_place_in_the_list():
    table = aggregate(results())
    table["cartpole_swingup"]["at_n1"] = table["cartpole_swingup"]["dt"]
    signif = significance(table, ["dt", "at_ra_n4", "at_n1"])
    assert set(signif["cartpole_swingup"]) == {"dt", "at_n1"}
    assert signif["cartpole_swingup"]["at_n1"]["against"] == "at_ra_n4"


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


def write_baselines(run_dir, task: str, seed: int, random: list, constant: list) -> None:
    path = run_dir / task / "baselines" / f"seed{seed}" / "baselines.json"
    path.parent.mkdir(parents=True)
    seeds = (10_000 * (1800 + seed) + np.arange(2 * len(random[0])).reshape(2, -1)).tolist()
    base = {"train_seed": seed, "trials": 2, "random_returns": random,
            "constant_returns": constant, "reset_seeds": seeds}  # fmt: skip
    path.write_text(json.dumps(base))


def report_args(tmp_path, methods: list[str]) -> argparse.Namespace:
    return argparse.Namespace(
        run_dir=str(tmp_path / "runs"),
        tasks=["cartpole_swingup"],
        methods=methods,
        seeds=[0, 1],
        scale="local",
        report_only=True,
        publish=None,
    )


def test_baselines_are_two_rows_of_the_table_with_the_last_episode_as_final(tmp_path):
    runs = tmp_path / "runs"
    write_baselines(runs, "cartpole_swingup", 0, [[1.0, 3.0], [5.0, 7.0]], [[9.0, 9.0]] * 2)
    write_baselines(runs, "cartpole_swingup", 1, [[2.0, 4.0], [6.0, 8.0]], [[11.0, 11.0]] * 2)
    done = runs / "cartpole_swingup" / "dt" / "seed0"
    done.mkdir(parents=True)
    (done / "eval.json").write_text(json.dumps(fake_eval(60.0, [60.0])))
    table = compare(report_args(tmp_path, ["dt"]))
    rows = table["cartpole_swingup"]
    assert list(rows) == ["dt", "random", "constant"]
    assert rows["random"]["seeds"] == 2
    assert rows["random"]["final"]["per_seed"] == [5.0, 6.0]  # mean of the trials' last episode
    assert rows["random"]["mean"]["per_seed"] == [4.0, 5.0]
    assert rows["constant"]["final"]["mean"] == 10.0
    text = (runs / "results.md").read_text()
    assert "| cartpole_swingup | uniform random | 2 | 5.5 [" in text
    assert "| cartpole_swingup | best constant action | 2 | 10.0 [" in text


def test_the_constant_rows_seeds_are_the_random_rows_and_not_counted_as_reused(tmp_path):
    runs = tmp_path / "runs"
    write_baselines(runs, "cartpole_swingup", 0, [[1.0, 3.0], [5.0, 7.0]], [[9.0, 9.0]] * 2)
    args = report_args(tmp_path, ["dt"])
    args.seeds = [0]
    results = finished(args)
    assert (
        results["cartpole_swingup"]["constant"][0]["reset_seeds"]
        == (results["cartpole_swingup"]["random"][0]["reset_seeds"])
    )
    assert reused_reset_seeds(results) == 0


def test_run_baselines_uses_a_seed_block_no_method_uses(tmp_path, monkeypatch):
    import ringrl.evaluate
    from ringrl.compare import METHOD_INDEX, run_baselines
    from ringrl.evaluate import seed_block

    seen = {}

    def fake_baselines(task, act_dim, *, trials, episodes, num_envs, seed):
        seen.update(task=task, act_dim=act_dim, seed=seed)
        r = np.full((trials, episodes), 1.0)
        return {"random": r, "constant": 2 * r, "constant_action": 0.5,
                "constant_selection": {0.5: 2.0}}  # fmt: skip

    monkeypatch.setattr(ringrl.evaluate, "baselines", fake_baselines)
    args = argparse.Namespace(run_dir=str(tmp_path), trials=3, dt_episodes=2, envs=3)
    out = run_baselines("cartpole_swingup", 4, args)
    assert seen["task"] == "dm_control/cartpole-swingup-v0" and seen["act_dim"] == 1
    method_blocks = {seed_block(i, s) for m, i in METHOD_INDEX.items() if m != "baselines"
                     for s in range(5)}  # fmt: skip
    assert seen["seed"] not in method_blocks
    assert np.asarray(out["reset_seeds"]).shape == (3, 2)
    assert (tmp_path / "cartpole_swingup" / "baselines" / "seed4" / "baselines.json").exists()


def test_a_runs_compute_is_its_budget_and_its_median_logged_rate(tmp_path):
    import shutil
    from pathlib import Path

    from ringrl.compare import compute_of

    preset = Path(__file__).parent.parent / "configs" / "local" / "cartpole_swingup" / "dt.yaml"
    shutil.copyfile(preset, tmp_path / "config.yaml")
    data = {"obs_dim": 5, "act_dim": 1, "action_targets_per_update": 1200.0}
    (tmp_path / "data.json").write_text(json.dumps(data))
    (tmp_path / "eval.json").write_text(json.dumps({"checkpoint_step": 625}))
    rows = [{"step": 25 * i, "tokens_per_s": r} for i, r in enumerate([100.0, 300.0, 200.0])]
    rows.append({"step": 313, "eval_final_return": 1.0})
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)))
    c = compute_of(tmp_path)
    assert c["updates"] == 625 and c["action_targets"] == 625 * 1200
    assert c["tokens"] == 625 * 64 * 20 * 3  # DT: (return, state, action) tokens, K = 20
    assert c["tokens_per_s"] == 200.0 and c["train_s"] == c["tokens"] / 200.0
    assert c["evals_during_training"] == [[313, 1.0]]
