"""Statistics of a FoodieQA evaluation (scipy): intervals, the range guessing reaches, paired tests."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats

from foodie.tasks import NUM_CHOICES

CHANCE = 1 / NUM_CHOICES  # a model guessing uniformly


def wilson_interval(k: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of k/n; a k with 1/4 credits is rounded to whole answers (at most half off)."""
    if n == 0:
        return (0.0, 1.0)
    ci = stats.binomtest(round(k), n).proportion_ci(method="wilson")
    return (float(ci.low), float(ci.high))


def binomial_test(k: int, n: int, p: float = CHANCE) -> float:
    """Exact two-sided binomial test of k right out of n against guessing."""
    return float(stats.binomtest(k, n, p).pvalue) if n else 1.0


def chance_range(n: int, p: float = CHANCE) -> tuple[int, int]:
    """Central range of right answers (of n) that a model guessing uniformly reaches with probability 95%."""
    return tuple(int(x) for x in stats.binom.interval(0.95, n, p))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact McNemar test (two-sided) on the discordant pairs: a right & b wrong vs. a wrong & b right."""
    return binomial_test(only_a, only_a + only_b, 0.5)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """Mean difference b - a of per-item scores on the same items, with a paired-bootstrap 95% interval."""
    if len(a) != len(b):
        raise ValueError("paired bootstrap needs results on the same items")
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if len(d) < 2 or not d.any():  # no spread to resample
        return (float(d.mean()) if len(d) else 0.0,) * 3
    ci = stats.bootstrap((d,), np.mean, method="percentile", n_resamples=10000, random_state=seed).confidence_interval
    return (float(d.mean()), float(ci.low), float(ci.high))
