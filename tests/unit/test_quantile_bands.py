"""Quantile confidence sequences (`LogBuckets.band`): valid at every n at once, and narrowing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detectors.quantiles import LogBuckets

BUCKETS = LogBuckets(relative_accuracy=0.02, min_value=1e-3, max_value=1e7)


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_the_band_holds_at_every_look_in_at_least_1_minus_alpha_of_streams(q: float) -> None:
    alpha, streams, n = 0.05, 200, 3_000
    truth = math.exp(3.0 + 0.5 * {0.5: 0.0, 0.9: 1.2815515655446004, 0.99: 2.3263478740408408}[q])
    rng = np.random.default_rng(16)
    missed = 0
    for _ in range(streams):
        counts = np.zeros(BUCKETS.n_buckets, dtype=np.int64)
        values = rng.lognormal(3.0, 0.5, n)
        for lo in range(0, n, 50):  # a look every 50 values
            np.add.at(counts, BUCKETS.index(values[lo : lo + 50]), 1)
            _, lower, upper = BUCKETS.band(counts, q, alpha)
            if not lower <= truth <= upper:
                missed += 1
                break
    assert missed / streams <= alpha


def test_the_band_narrows_around_the_quantile() -> None:
    values = np.random.default_rng(1).lognormal(3.0, 0.5, 100_000)
    counts = np.bincount(BUCKETS.index(values), minlength=BUCKETS.n_buckets)
    estimate, lower, upper = BUCKETS.band(counts, 0.9, 0.05)
    truth = math.exp(3.0 + 0.5 * 1.2815515655446004)
    assert lower < truth < upper
    assert upper / lower < 1.1  # within ±5% at 100,000 values
    assert abs(estimate / truth - 1) < 0.03
    # Few values: a band the data cannot close on one side.
    few = np.bincount(BUCKETS.index(values[:20]), minlength=BUCKETS.n_buckets)
    assert BUCKETS.band(few, 0.99, 0.05)[2] == math.inf
