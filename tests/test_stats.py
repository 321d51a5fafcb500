"""foodie.stats: the intervals and tests the evaluation reports, on the cases it meets."""
from __future__ import annotations

import pytest

from foodie.stats import binomial_test, chance_range, mcnemar_exact, paired_bootstrap, wilson_interval


def test_wilson_interval_holds_the_headline_with_quarter_credits():
    for score, n in [(0.25, 16), (3.75, 16), (15.75, 16), (70.5, 256), (0, 10), (10, 10)]:
        lo, hi = wilson_interval(score, n)
        assert 0 <= lo <= score / n <= hi <= 1
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(25, 100) == pytest.approx((0.1754, 0.3430), abs=1e-4)


def test_chance_range_and_tests():
    assert chance_range(100) == (17, 34) and chance_range(0) == (0, 0)
    assert binomial_test(25, 100) == pytest.approx(1.0) and binomial_test(60, 100) < 1e-10
    assert binomial_test(0, 0) == 1.0 == mcnemar_exact(0, 0)
    assert mcnemar_exact(10, 2) == mcnemar_exact(2, 10) == pytest.approx(0.03857, abs=1e-4)


def test_paired_bootstrap():
    same = [True, False, True, True] * 10
    assert paired_bootstrap(same, same) == (0.0, 0.0, 0.0)
    diff, lo, hi = paired_bootstrap([False] * 30 + [True] * 10, [True] * 30 + [True] * 10)
    assert diff == pytest.approx(0.75) and lo <= 0.75 <= hi and lo > 0.5
    with pytest.raises(ValueError):
        paired_bootstrap([True], [True, False])
