"""The benchmarks' statistics: nearest-rank percentiles and the bootstrap interval of a ratio."""

from __future__ import annotations

import random

import pytest

from bench.stats import percentile, ratio_interval


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)


def test_a_constant_ratio_has_no_spread() -> None:
    pairs = [(2 * b, b) for b in (1.0 + i / 7 for i in range(300))]
    assert ratio_interval(pairs, 99) == pytest.approx((2.0, 2.0))
    assert ratio_interval(pairs, 50) == pytest.approx((2.0, 2.0))


def test_three_stalls_in_three_hundred_leave_the_p99_undecided_and_the_p50_untouched() -> None:
    """A p99 of 300 taps is their third slowest: three stalls on one side decide it alone."""
    rng = random.Random(7)
    pairs = [(1.0 + rng.random() / 10, 1.0 + rng.random() / 10) for _ in range(300)]
    for i in (10, 150, 290):
        pairs[i] = (40.0, pairs[i][1])
    low50, high50 = ratio_interval(pairs, 50)
    assert 0.95 < low50 <= 1.0 <= high50 < 1.05
    low99, high99 = ratio_interval(pairs, 99)
    assert low99 < 1.5 < high99  # neither met nor missed, as far as this run can tell
    assert high99 > 30


def test_more_pairs_narrow_the_interval_and_the_seed_fixes_it() -> None:
    rng = random.Random(3)
    pairs = [(b * (1.4 + rng.gauss(0, 0.2)), b) for b in (rng.lognormvariate(0, 0.4) for _ in range(1000))]
    few, many = ratio_interval(pairs[:100], 90), ratio_interval(pairs, 90)
    assert many[1] - many[0] < (few[1] - few[0]) / 2
    point = percentile([a for a, _ in pairs], 90) / percentile([b for _, b in pairs], 90)
    assert many[0] <= point <= many[1]
    assert ratio_interval(pairs, 90, seed=0) == many
    assert ratio_interval(pairs, 90, seed=1) != many


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="no samples"):
        ratio_interval([], 99)
    with pytest.raises(ValueError, match="level 1.5"):
        ratio_interval([(1.0, 1.0)], 99, level=1.5)
