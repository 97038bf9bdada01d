"""`ringrl scaling`: a tiny Dark Room study end to end, its scaling.json contract, resuming, the
long-histories notebook on it, and the study's rules (equal tokens per N)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ringrl.cli import main
from ringrl.scaling import load_study, metric_values, run_config, run_study, train_and_evaluate

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "long_histories.ipynb"

TINY = {
    "task": "ringrl/darkroom-v0",
    "collect": {"tasks": 3, "episodes": 8, "histories_per_task": 1},
    "agents": ["ad"],
    "n": [1, 2],
    "seeds": [0],
    "episodes_per_update": 4,
    "eval": {"trials": 2, "episodes": 3, "actions": "sample"},
    "config": {
        "model": {
            "num_layers": 1,
            "d_model": 16,
            "num_heads": 2,
            "num_kv_heads": 2,
            "dropout": 0.0,
            "block_size": 64,
            "remat": False,
        },
        "agent": {"steps_per_trajectory": 20, "tokens_per_step": 1, "max_timestep": 20},
        "optim": {"lr": 0.001, "warmup_steps": 2},
        "train": {"steps": 4, "log_every": 2, "ckpt_every": 4, "mesh_seq": 1},
    },
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    preset = root / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY))
    s = load_study("ringrl/darkroom-v0", preset=preset)
    result = run_study(s, root / "run", progress=False)
    return s, root / "run", result


def test_scaling_json_follows_the_contract(study):
    _, run_dir, result = study
    on_disk = json.loads((run_dir / "scaling.json").read_text())
    assert on_disk["task"] == "ringrl/darkroom-v0"
    assert on_disk["agents"] == ["ad"] and on_disk["n"] == [1, 2] and on_disk["seeds"] == [0]
    for agent in ("ad", "oracle"):
        for metric in ("final_return", "mean_return"):
            for N in ("1", "2"):
                entry = on_disk["results"][agent][metric][N]
                assert len(entry["per_seed"]) == 1
                lo, hi = entry["ci95"]
                assert lo <= entry["mean"] <= hi
    assert (run_dir / "scaling.png").stat().st_size > 0
    assert on_disk["train_tokens_per_s"]["ad"]["2"] > 0


def test_every_run_evaluates_on_held_out_instances(study):
    _, run_dir, _ = study
    report = json.loads((run_dir / "runs" / "ad_n2" / "seed0" / "data.json").read_text())
    ev = json.loads((run_dir / "runs" / "ad_n2" / "seed0" / "scaling_eval.json").read_text())
    assert set(ev["plan"]["task_ids"]) <= set(report["test_task_ids"])
    assert not set(report["test_task_ids"]) & set(report["data_task_ids"])
    assert ev["order"] == "played"  # AD acts on its history in the order played


def test_runs_get_their_own_reset_seeds(study):
    _, run_dir, _ = study
    firsts = [
        json.loads(p.read_text())["reset_seed_first"]
        for p in (run_dir / "runs").glob("*/*/scaling_eval.json")
    ]
    assert len(firsts) == 2 and len(set(firsts)) == 2


def test_a_runs_training_cost_survives_a_failed_evaluation(study, monkeypatch):
    s, run_dir, _ = study
    rdir = run_dir / "runs" / "ad_n1" / "seed0"
    stored = json.loads((rdir / "scaling_train_cost.json").read_text())
    ev = json.loads((rdir / "scaling_eval.json").read_text())
    assert stored["cpu_s"] > 0 and ev["train_cpu_s"] == round(stored["cpu_s"], 1)
    (rdir / "scaling_eval.json").unlink()  # as if its evaluation had crashed
    again = train_and_evaluate(s, run_dir, "ad", 1, 0, method=0)  # training reused
    assert again["train_cpu_s"] >= ev["train_cpu_s"]  # the first training still counted


def test_a_finished_study_is_reused_not_redone(study):
    s, run_dir, result = study
    evals = sorted((run_dir / "runs").glob("*/*/scaling_eval.json"))
    before = [p.stat().st_mtime_ns for p in evals]
    again = run_study(s, run_dir, progress=False)
    assert [p.stat().st_mtime_ns for p in evals] == before
    assert again["results"] == result["results"]
    bigger = {**s, "seeds": [0, 7]}  # seed 7 never ran: aggregated without it, nothing trained
    partial = run_study(bigger, run_dir, progress=False, new_runs=False)
    assert partial["results"]["ad"]["mean_return"]["2"]["seeds"] == [0]
    assert not (run_dir / "runs" / "ad_n2" / "seed7").exists()
    run_study(s, run_dir, progress=False)  # scaling.json of the study itself again


def test_equal_training_tokens_for_every_n():
    s = load_study("ringrl/bandit-v0")
    sizes = {}
    for N in s["n"]:
        cfg = run_config(s, "ad", N, seed=0)
        sizes[N] = cfg.train.batch_size * N * cfg.agent.steps_per_trajectory
    assert len(set(sizes.values())) == 1


def test_long_chains_train_with_ring_attention():
    s = load_study("ringrl/darkroom-v0")
    s["config"]["agent"]["tokens_per_step"] = 4
    s["episodes_per_update"] = 1024
    assert run_config(s, "ad", 256, seed=0).model.attention == "ring"  # 256 x 20 x 4 tokens
    assert run_config(s, "ad", 4, seed=0).model.attention == "vanilla"


def test_metrics_of_one_seed():
    returns = np.arange(20, dtype=float).reshape(2, 10)
    m = metric_values(returns)
    assert m["mean_return"] == returns.mean()
    assert m["final_return"] == (9 + 19) / 2  # the last 10% (one) of each trial
    assert m["mean_return_first64"] == returns.mean()


def test_quick_study_is_smaller():
    full, quick = load_study("ringrl/bandit-v0"), load_study("ringrl/bandit-v0", quick=True)
    assert 16 in quick["n"] and 1 in quick["n"]
    assert len(quick["seeds"]) < len(full["seeds"])
    assert quick["config"]["train"]["steps"] < full["config"]["train"]["steps"]


def test_unknown_task_is_a_one_line_error(capsys, tmp_path):
    assert main(["scaling", "--task", "Hopper-v5", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no scaling preset" in err and len(err.splitlines()) == 1


def test_long_histories_notebook_executes_on_the_tiny_study(study, run_notebook):
    _, run_dir, _ = study
    figures, text = run_notebook(
        NOTEBOOK,
        RINGRL_SCALING_RUN=run_dir,
        RINGRL_NOTEBOOK_EPISODES=4,  # > N = 2: evicts
        RINGRL_NOTEBOOK_TRIALS=2,
    )
    assert figures >= 2
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["n"] == 2 and len(summary["attention_mass_on_earlier_episodes"]) == 1


def test_eval_of_a_discrete_run_plays_held_out_instances_with_baselines(study, capsys):
    _, run_dir, _ = study
    run = run_dir / "runs" / "ad_n2" / "seed0"
    assert main(["eval", str(run), "--episodes", "2", "--trials", "2", "--no-progress"]) == 0
    ev = json.loads((run / "eval.json").read_text())
    report = json.loads((run / "data.json").read_text())
    assert set(ev["task_ids"]) <= set(report["test_task_ids"]) and ev["actions"] == "sample"
    assert ev["constant_action"] in range(5) and "random_return_mean" in ev
    assert (
        main(
            [
                "eval",
                str(run),
                "--task-ids",
                "train",
                "--trials",
                "1",
                "--episodes",
                "1",
                "--no-baselines",
                "--no-progress",
            ]
        )
        == 0
    )
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev["task_ids"]) <= set(report["train_task_ids"])


def test_a_bad_task_ids_spec_is_a_one_line_error(study, capsys):
    _, run_dir, _ = study
    run = run_dir / "runs" / "ad_n1" / "seed0"
    assert main(["eval", str(run), "--task-ids", "x-y"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--task-ids 'x-y'" in err and len(err.splitlines()) == 1
