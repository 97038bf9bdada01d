"""Tests of ``ringrl.stats``: bootstrap intervals over seeds for ranking methods."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ringrl import stats


def sample(n: int, loc: float = 0.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc=loc, scale=1.0, size=n)


def width(ci: dict) -> float:
    return ci["ci95"][1] - ci["ci95"][0]


# --------------------------------------------------------------------------------------------
def test_interval_contains_the_mean():
    ci = stats.interval(sample(8))
    lo, hi = ci["ci95"]
    assert lo < ci["mean"] < hi
    assert ci["mean"] == pytest.approx(np.mean(ci["per_seed"]))


def test_interval_narrows_with_more_samples():
    assert width(stats.interval(sample(200))) < 0.5 * width(stats.interval(sample(5)))


def test_shifted_sample_is_significantly_different():
    result = stats.difference(sample(10, loc=3.0, seed=1), sample(10, seed=2))
    assert result["significant"] and result["ci95"][0] > 0


def test_sample_of_the_same_distribution_is_not_significantly_different():
    result = stats.difference(sample(30, seed=1), sample(30, seed=2))
    lo, hi = result["ci95"]
    assert not result["significant"] and lo < 0 < hi


def test_single_seed_gives_a_point_interval():
    assert stats.interval([42.0]) == {
        "per_seed": [42.0],
        "mean": 42.0,
        "ci95": [42.0, 42.0],
        "n": 1,
    }


def test_equal_values_give_a_point_interval():
    assert stats.interval([5.0, 5.0, 5.0])["ci95"] == [5.0, 5.0]


def test_interval_is_deterministic_given_the_seed():
    x = sample(6)
    assert stats.interval(x, seed=3) == stats.interval(x, seed=3)
    assert stats.interval(x, seed=3)["ci95"] != stats.interval(x, seed=4)["ci95"]


def test_difference_is_deterministic_given_the_seed():
    a, b = sample(6, seed=1), sample(6, seed=2)
    assert stats.difference(a, b, seed=3) == stats.difference(a, b, seed=3)


def test_interval_json_shape_matches_the_scaling_json_contract():
    ci = json.loads(json.dumps(stats.interval([1.0, 2.0, 4.0])))
    assert {"per_seed", "mean", "ci95"} <= set(ci)
    assert all(isinstance(v, float) for v in ci["per_seed"])
    assert isinstance(ci["mean"], float)
    assert len(ci["ci95"]) == 2 and all(isinstance(v, float) for v in ci["ci95"])
    assert ci["n"] == 3


def test_overlap_is_true_for_intersecting_and_false_for_disjoint_intervals():
    assert stats.overlap([0.0, 2.0], [1.0, 3.0])
    assert stats.overlap([0.0, 1.0], [1.0, 3.0])  # touching counts
    assert not stats.overlap([0.0, 1.0], [1.5, 3.0])
    assert stats.overlap(stats.interval([1.0, 2.0]), {"ci95": [1.5, 9.0]})


def test_describe_reads_mean_and_interval():
    assert stats.describe({"mean": 123.44, "ci95": [110.21, 140.0]}) == "123.4 [110.2, 140.0]"


def test_empty_or_non_finite_values_are_an_error():
    with pytest.raises(ValueError, match="at least one"):
        stats.interval([])
    with pytest.raises(ValueError, match="finite"):
        stats.interval([1.0, float("nan")])
