"""Percentiles, summaries and ratios of the bench against answers worked out by hand."""

from __future__ import annotations

import math

import pytest

from bench.stats import Summary, fmt, median, percentile, ratio, ratio_range


def test_percentile_of_0_to_100_is_p() -> None:
    data = list(range(101))
    for p in (0, 1, 25, 50, 90, 99, 100):
        assert percentile(data, p) == pytest.approx(p)


def test_percentile_interpolates_and_ignores_order() -> None:
    assert percentile([4, 1, 3, 2], 50) == pytest.approx(2.5)
    assert percentile([10, 20], 99) == pytest.approx(19.9)
    assert percentile([7], 99) == 7
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_uniform_sample_percentiles_match_the_analytic_quantile() -> None:
    n = 10001
    data = [i / (n - 1) for i in range(n)]  # U(0, 1) on a grid
    assert percentile(data, 99) == pytest.approx(0.99)
    assert median(data) == pytest.approx(0.5)


def test_summary_and_ratios() -> None:
    s = Summary.of([3.0, 1.0, 2.0, float("nan")])
    assert (s.median, s.low, s.high, s.n) == (2.0, 1.0, 3.0, 3)
    assert math.isnan(Summary.of([]).median)
    assert ratio(1.0, 4.0) == 0.25
    assert math.isnan(ratio(1.0, 0.0))
    assert ratio_range([1.0, 2.0], [4.0, 8.0]) == (0.125, 0.5)


def test_fmt() -> None:
    assert fmt(12345.6) == "12,346"
    assert fmt(0.012345) == "0.0123"
    assert fmt(float("nan")) == "—"
