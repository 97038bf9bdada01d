"""``ringrl compare``: seeds aggregate into the table beside the paper's Table 5."""

from ringrl.compare import PAPER_TABLE5, aggregate, markdown


def fake_eval(final: float, best: float, curve: list[float]) -> dict:
    return {
        "final_return_mean": final,
        "max_return_mean": best,
        "random_return_mean": 5.0,
        "episode_return_mean": curve,
    }


def test_seeds_aggregate_to_mean_and_std_with_the_papers_number():
    results = {
        "cartpole_swingup": {
            "at_ra_n128": [fake_eval(100.0, 120.0, [50, 100]), fake_eval(200.0, 220.0, [150, 200])],
            "dt": [fake_eval(60.0, 60.0, [60.0])],
        }
    }
    table = aggregate(results)
    at = table["cartpole_swingup"]["at_ra_n128"]
    assert at["seeds"] == 2
    assert at["final_mean"] == 150.0 and at["final_std"] == 50.0
    assert at["max_mean"] == 170.0
    assert at["curve"] == [100.0, 150.0]
    assert at["paper"] == PAPER_TABLE5["cartpole_swingup"]["at_ra_n128"] == 123.45
    text = markdown(table, "local")
    assert (
        "| cartpole_swingup | AT+RA (N=128) | 2 | 150.0 ± 50.0 | 170.0 ± 50.0 | 5.0 | 123.45 |"
        in text
    )
    assert "| cartpole_swingup | DT | 1 | 60.0 ± 0.0 |" in text


def test_report_only_tabulates_the_finished_runs_without_running_anything(tmp_path):
    import argparse
    import json

    from ringrl.compare import compare

    done = tmp_path / "cartpole_swingup" / "dt" / "seed1"
    done.mkdir(parents=True)
    (done / "eval.json").write_text(json.dumps(fake_eval(60.0, 70.0, [60.0])))
    args = argparse.Namespace(
        run_dir=str(tmp_path),
        tasks=["cartpole_swingup", "walker_stand"],
        methods=["bc10", "dt"],
        seeds=[0, 1, 2],
        scale="local",
        report_only=True,
    )
    table = compare(args)
    assert list(table) == ["cartpole_swingup"] and list(table["cartpole_swingup"]) == ["dt"]
    assert table["cartpole_swingup"]["dt"]["seeds"] == 1
    assert "| cartpole_swingup | DT | 1 | 60.0 ± 0.0 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "curves_cartpole_swingup.png").exists()
