"""Shadow comparisons: the paired latency-ratio bootstrap, agreement, serving skew and accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from daemon.shadow import compare
from daemon.shadow.compare import accuracy, agreement, latency_ratio, same_class, skew


def lognormal(seed: int, n: int = 800) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(np.log(0.002), 0.3, n)


def test_ratio_ci_brackets_one_for_the_same_distribution() -> None:
    r = latency_ratio(lognormal(1), lognormal(2), resamples=1_000, confidence=0.95)
    assert r.lower < 1.0 < r.upper
    assert r.lower <= r.ratio <= r.upper
    assert (r.pairs, r.confidence) == (800, 0.95)
    assert json.loads(json.dumps(r.to_dict())) == r.to_dict()


def test_ratio_ci_excludes_one_for_a_twice_slower_candidate() -> None:
    production = lognormal(3)
    candidate = 2 * production * np.random.default_rng(4).lognormal(0, 0.1, production.size)
    r = latency_ratio(candidate, production, resamples=1_000, confidence=0.95)
    assert 1.0 < r.lower <= r.ratio <= r.upper
    assert r.ratio == pytest.approx(2.0, rel=0.05)


def test_ratio_resamples_pairs_together() -> None:
    # Candidate = 1.5 x production exactly: resampling pairs jointly gives a zero-width interval.
    production = lognormal(5)
    r = latency_ratio(1.5 * production, production, resamples=500, confidence=0.9)
    assert r.lower == pytest.approx(1.5) and r.upper == pytest.approx(1.5)


def test_ratio_is_deterministic_with_a_seed() -> None:
    a, b = lognormal(6), lognormal(7)
    first = latency_ratio(a, b, resamples=300, confidence=0.95, seed=11)
    assert latency_ratio(a, b, resamples=300, confidence=0.95, seed=11) == first
    assert latency_ratio(a, b, resamples=300, confidence=0.95, seed=12) != first


def test_chunked_bootstrap_matches_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = lognormal(8, 501), lognormal(9, 501)
    whole = latency_ratio(a, b, resamples=300, confidence=0.95)
    monkeypatch.setattr(compare, "BOOTSTRAP_CHUNK_ELEMENTS", 501 * 7 + 3)  # chunks of 7 resamples, 6 left over
    assert latency_ratio(a, b, resamples=300, confidence=0.95) == whole


def test_ratio_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="equal"):
        latency_ratio(np.ones(3), np.ones(4), resamples=100, confidence=0.95)
    with pytest.raises(ValueError, match="positive"):
        latency_ratio(np.array([1.0, 0.0]), np.ones(2), resamples=100, confidence=0.95)


def test_same_class() -> None:
    assert same_class("1", 1)
    assert same_class(True, 1)
    assert same_class(np.int64(2), 2.0)
    assert same_class("1", 1.0)
    assert same_class("cat", "cat")
    assert not same_class("cat", "dog")
    assert not same_class(1, 2)
    assert not same_class("1", "one")


def test_agreement_classification() -> None:
    a = ["cat", "dog", 1, "1", True, "x"]
    assert agreement(a, list(a), "classification") == {"n": 6, "agreement": 1.0}
    b = ["cat", "cat", "1", 2, 1, "y"]
    # Rows agree at 0 (same string), 2 ("1" vs 1) and 4 (True vs 1).
    assert agreement(a, b, "classification") == {"n": 6, "agreement": 3 / 6}


def test_agreement_regression() -> None:
    r = agreement([1.0, 2.0, 3.0], [1.5, 2.0, 1.0], "regression")
    assert r == {"n": 3, "mean_abs_difference": pytest.approx(2.5 / 3), "max_abs_difference": 2.0}


def test_agreement_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        agreement([1], [1, 2], "classification")
    with pytest.raises(ValueError, match="task"):
        agreement([1], [1], "ranking")


def test_skew_counts_logged_predictions_that_differ() -> None:
    replayed = ["a", "b", "a", "c", 1, "a", "b", "a"]
    logged = ["a", "a", None, "c", "1", "b", None, "a"]
    r = skew(replayed, logged, "classification", atol=0, rtol=0, tolerance=0.2)
    # 6 compared (two None skipped); rows 1 and 5 differ.
    assert r == {
        "compared": 6,
        "mismatches": 2,
        "mismatch_rate": 2 / 6,
        "mean_abs_difference": None,
        "flagged": True,
        "examples": [1, 5],
    }
    assert not skew(replayed, logged, "classification", atol=0, rtol=0, tolerance=0.4)["flagged"]


def test_skew_examples_are_capped_at_five() -> None:
    r = skew(list(range(10)), [-1] * 10, "classification", atol=0, rtol=0, tolerance=0.0)
    assert r["mismatches"] == 10 and r["examples"] == [0, 1, 2, 3, 4]


def test_skew_regression_tolerances() -> None:
    logged = [100.0, 100.0, 1.0, 1.0, "n/a", None]
    replayed = [100.005, 100.02, 1.0005, 1.002, 3.0, 9.0]
    # Allowed difference: atol 0.001 + rtol 1e-4 x |logged| = 0.011 at 100, 0.0011 at 1.
    r = skew(replayed, logged, "regression", atol=0.001, rtol=1e-4, tolerance=0.5)
    assert (r["compared"], r["mismatches"], r["examples"]) == (5, 3, [1, 3, 4])
    assert r["mismatch_rate"] == 3 / 5 and r["flagged"]
    assert r["mean_abs_difference"] == pytest.approx((0.005 + 0.02 + 0.0005 + 0.002) / 4)


def test_skew_with_nothing_logged() -> None:
    r = skew([1, 2], [None, None], "classification", atol=0, rtol=0, tolerance=0)
    assert (r["compared"], r["mismatch_rate"], r["flagged"]) == (0, None, False)


def test_accuracy_skips_unlabelled_rows() -> None:
    preds = ["a", "b", "a", 1, "b"]
    labels = ["a", None, "b", "1", None]
    assert accuracy(preds, labels, "classification") == {"labelled": 3, "accuracy": 2 / 3}
    assert accuracy([1.0, 2.0, 3.0], [1.5, None, 2.0], "regression") == {"labelled": 2, "mae": 0.75}
    assert accuracy([1, 2], [None, None], "classification") == {"labelled": 0, "accuracy": None}
    assert accuracy([1.0], [None], "regression") == {"labelled": 0, "mae": None}
