"""Bootstrap statistics for ranking RL methods over seeds.

Every figure a comparison reports is a mean over seeds with a percentile-bootstrap confidence
interval (:func:`scipy.stats.bootstrap`, ``method="percentile"``; BCa fails on the tiny and
often degenerate samples of a few seeds). :func:`interval` gives the ``scaling.json`` entry
``{"per_seed": [...], "mean": m, "ci95": [lo, hi], "n": k}``; :func:`difference` says whether
one method is better than another (0 outside the interval of the difference of means).
Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as _scipy_stats

# scipy >= 1.15 takes ``rng``; 1.11-1.14 only ``random_state`` (same meaning for a Generator).
_BOOTSTRAP_PARAMS = inspect.signature(_scipy_stats.bootstrap).parameters
_RNG_KEYWORD = "rng" if "rng" in _BOOTSTRAP_PARAMS else "random_state"


def _as_sample(values: Sequence[float] | np.ndarray, name: str = "values") -> np.ndarray:
    """A 1-D float64 array of finite values; ValueError if empty or not finite."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError(f"{name}: expected at least one value, got none")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: expected finite values, got {x.tolist()}")
    return x


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a value in (0, 1), got {confidence}")


def _is_constant(x: np.ndarray) -> bool:
    """True when every resample of ``x`` has the same mean (one value, or all equal)."""
    return x.size == 1 or bool(np.all(x == x[0]))


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def _percentile_ci(
    data: tuple[np.ndarray, ...],
    statistic: Any,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> list[float]:
    """``[lo, hi]`` of a percentile bootstrap (independent resampling of each sample)."""
    res = _scipy_stats.bootstrap(
        data,
        statistic,
        n_resamples=n_resamples,
        vectorized=True,
        paired=False,
        confidence_level=confidence,
        method="percentile",
        **{_RNG_KEYWORD: np.random.default_rng(seed)},
    )
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def interval(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict:
    """Mean over seeds with a percentile-bootstrap confidence interval.

    Returns ``{"per_seed": [floats], "mean": float, "ci95": [lo, hi], "n": int}`` (the key is
    ``ci95`` whatever ``confidence`` is, as in ``scaling.json``). With one value, or all values
    equal, the interval is the point ``[mean, mean]`` and scipy is not called.
    """
    _check_confidence(confidence)
    x = _as_sample(values)
    mean = float(x.mean())
    if _is_constant(x):
        ci = [mean, mean]
    else:
        ci = _percentile_ci((x,), _mean, confidence, n_resamples, seed)
    return {"per_seed": x.tolist(), "mean": mean, "ci95": ci, "n": int(x.size)}


def difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict:
    """Bootstrap interval of ``mean(a) - mean(b)`` for two independent samples.

    Returns ``{"diff": float, "ci95": [lo, hi], "significant": bool}``; ``significant`` means 0
    lies outside the interval. When both samples are constant the interval is the point
    ``[diff, diff]`` (scipy is not called).
    """
    _check_confidence(confidence)
    x, y = _as_sample(a, "a"), _as_sample(b, "b")
    diff = float(x.mean() - y.mean())
    if _is_constant(x) and _is_constant(y):
        ci = [diff, diff]
    else:
        ci = _percentile_ci((x, y), _mean_difference, confidence, n_resamples, seed)
    return {"diff": diff, "ci95": ci, "significant": bool(ci[0] > 0.0 or ci[1] < 0.0)}


def _bounds(ci: Sequence[float] | dict) -> tuple[float, float]:
    """``(lo, hi)`` from ``[lo, hi]`` or from a dict with a ``ci95`` entry."""
    lo, hi = ci["ci95"] if isinstance(ci, dict) else ci
    return float(lo), float(hi)


def overlap(ci_a: Sequence[float] | dict, ci_b: Sequence[float] | dict) -> bool:
    """True when two intervals (``[lo, hi]`` or :func:`interval` dicts) share a point."""
    lo_a, hi_a = _bounds(ci_a)
    lo_b, hi_b = _bounds(ci_b)
    return lo_a <= hi_b and lo_b <= hi_a


def describe(ci: dict, digits: int = 1) -> str:
    """``"123.4 [110.2, 140.0]"``: the mean (or ``diff``) and its interval, ``digits``
    decimals."""
    centre = ci["mean"] if "mean" in ci else ci["diff"]
    lo, hi = _bounds(ci)
    return f"{centre:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
