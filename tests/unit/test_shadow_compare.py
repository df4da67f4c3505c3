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
    r = latency_ratio([(lognormal(1), lognormal(2))], resamples=1_000, confidence=0.95)
    assert r.lower < 1.0 < r.upper
    assert r.lower <= r.ratio <= r.upper
    assert (r.pairs, r.sessions, r.confidence) == (800, 1, 0.95)
    assert json.loads(json.dumps(r.to_dict())) == r.to_dict()


def test_ratio_ci_excludes_one_for_a_twice_slower_candidate() -> None:
    production = lognormal(3)
    candidate = 2 * production * np.random.default_rng(4).lognormal(0, 0.1, production.size)
    r = latency_ratio([(candidate, production)], resamples=1_000, confidence=0.95)
    assert 1.0 < r.lower <= r.ratio <= r.upper
    assert r.ratio == pytest.approx(2.0, rel=0.05)


def test_ratio_resamples_pairs_together() -> None:
    # Candidate = 1.5 x production exactly: resampling pairs jointly gives a zero-width interval.
    production = lognormal(5)
    r = latency_ratio([(1.5 * production, production)], resamples=500, confidence=0.9)
    assert r.lower == pytest.approx(1.5) and r.upper == pytest.approx(1.5)


def test_ratio_is_deterministic_with_a_seed() -> None:
    a, b = lognormal(6), lognormal(7)
    first = latency_ratio([(a, b)], resamples=300, confidence=0.95, seed=11)
    assert latency_ratio([(a, b)], resamples=300, confidence=0.95, seed=11) == first
    assert latency_ratio([(a, b)], resamples=300, confidence=0.95, seed=12) != first


def test_chunked_bootstrap_matches_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = lognormal(8, 501), lognormal(9, 501)
    whole = latency_ratio([(a, b), (b, a)], resamples=300, confidence=0.95)
    monkeypatch.setattr(compare, "BOOTSTRAP_CHUNK_ELEMENTS", 1002 * 7 + 3)  # chunks of 7 resamples, 6 left over
    assert latency_ratio([(a, b), (b, a)], resamples=300, confidence=0.95) == whole


def test_ratio_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="equal"):
        latency_ratio([(np.ones(3), np.ones(4))], resamples=100, confidence=0.95)
    with pytest.raises(ValueError, match="positive"):
        latency_ratio([(np.array([1.0, 0.0]), np.ones(2))], resamples=100, confidence=0.95)


def sessions(ratio: float, offsets: list[float], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Session pairs whose loads differ by `offsets` (relative), as two loads of one file do."""
    out = []
    for i, offset in enumerate(offsets):
        production = lognormal(seed + i, 250)
        noise = np.random.default_rng(seed + 100 + i).lognormal(0, 0.002, 250)
        out.append((ratio * (1 + offset) * production * noise, production))
    return out


def test_session_to_session_noise_is_in_the_interval() -> None:
    # Identical models whose loads differ by a few tenths of a percent (bench/shadow.py saw 0.35%).
    loads = sessions(1.0, [0.003, -0.001, 0.002, -0.002], seed=20)
    alone = latency_ratio(loads[:1], resamples=1_000, confidence=0.95)
    assert not alone.lower <= 1.0 <= alone.upper  # one session pair: the load difference looks significant
    spread = latency_ratio(loads, resamples=1_000, confidence=0.95)
    assert spread.lower < 1.0 < spread.upper
    assert (spread.sessions, spread.pairs) == (4, 1000) and "t interval" in spread.method
    slower = latency_ratio(sessions(2.0, [0.003, -0.001, 0.002, -0.002], seed=30), resamples=1_000, confidence=0.95)
    assert 1.9 < slower.lower <= slower.ratio <= slower.upper < 2.1


def test_session_pairs_weigh_alike_whatever_their_size() -> None:
    big, small = sessions(1.0, [0.0], seed=40)[0], sessions(1.5, [0.0], seed=41)[0]
    r = latency_ratio([big, (small[0][:50], small[1][:50])], resamples=200, confidence=0.95)
    assert r.pairs == 100  # 50 of each: the bigger one is trimmed


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
