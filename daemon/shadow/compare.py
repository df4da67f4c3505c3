"""Candidate against production (latency ratio, agreement), replayed against logged outputs (skew), accuracy.

Latency comparison is paired: both models ran the same inputs interleaved (measure.interleaved), so the
bootstrap resamples pairs, not each model's latencies on their own; and it spans several session pairs, so
that the interval also holds the differences between two loads of one model.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from detectors import metrics
from detectors.metrics import Label

TASKS = ("classification", "regression")
# Elements of one bootstrap index matrix (resamples x pairs); larger runs are drawn in chunks.
BOOTSTRAP_CHUNK_ELEMENTS = 5_000_000
SKEW_EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class RatioResult:
    """median(candidate) / median(production) over every pair, with a bootstrap confidence interval."""

    ratio: float
    lower: float
    upper: float
    pairs: int
    sessions: int
    confidence: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def latency_ratio(
    sessions: Sequence[tuple[np.ndarray, np.ndarray]], *, resamples: int, confidence: float, seed: int = 0
) -> RatioResult:
    """Ratio of median latencies over (candidate, production) pairs measured in one or more session pairs.

    Pairs are resampled jointly (both models ran the same input). Two sessions of one model file can differ
    by a few tenths of a percent, reproducibly (memory layout; docs/benchmarks.md, Shadow), so with a single
    session pair the percentile interval describes those two sessions, not the models. With k >= 2 session
    pairs the bootstrap is two-stage (session pairs with replacement, then pairs within each), and the interval
    is exp(ln ratio +/- t(k-1) * se), se the bootstrap standard error of ln ratio: a handful of clusters needs
    Student's quantile, as the percentiles of k clusters are too narrow.
    """
    pairs = [_pair_arrays(c, p) for c, p in sessions]
    if not pairs:
        raise ValueError("need at least one session pair of latencies")
    if resamples < 2 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 2 and 0 < confidence < 1, got {resamples} and {confidence}")
    k = len(pairs)
    m = min(c.size for c, _ in pairs)  # equal clusters: a session pair's weight does not depend on its size
    c = np.concatenate([c[:m] for c, _ in pairs])
    p = np.concatenate([p[:m] for _, p in pairs])
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, k, size=(resamples, k, 1)) * m if k > 1 else np.zeros((resamples, 1, 1), np.int64)
    stats = np.empty(resamples)
    rows = max(1, BOOTSTRAP_CHUNK_ELEMENTS // c.size)
    for lo in range(0, resamples, rows):
        hi = min(lo + rows, resamples)
        idx = (chosen[lo:hi] + rng.integers(0, m, size=(hi - lo, k, m))).reshape(hi - lo, k * m)
        stats[lo:hi] = np.median(c[idx], axis=1) / np.median(p[idx], axis=1)
    ratio = float(np.median(c) / np.median(p))
    alpha = (1 - confidence) / 2
    if k == 1:
        lower, upper = np.quantile(stats, [alpha, 1 - alpha]).tolist()
        method = "paired percentile bootstrap, one session pair"
    else:
        from scipy.special import stdtrit  # the runner process only; the daemon never imports this module

        half = float(stdtrit(k - 1, 1 - alpha)) * float(np.std(np.log(stats), ddof=1))
        lower, upper = ratio * np.exp(-half), ratio * np.exp(half)
        method = f"two-stage bootstrap over {k} session pairs, t interval"
    return RatioResult(ratio, float(lower), float(upper), int(c.size), k, confidence, method)


def _pair_arrays(candidate: np.ndarray, production: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(candidate, dtype=np.float64)
    p = np.asarray(production, dtype=np.float64)
    if c.ndim != 1 or c.shape != p.shape or c.size == 0:
        raise ValueError(f"need two 1-d arrays of equal, non-zero length, got {c.shape} and {p.shape}")
    both = np.concatenate([c, p])
    if not np.all(np.isfinite(both) & (both > 0)):
        raise ValueError("latencies must be positive, finite numbers")
    return c, p


def same_class(x: Any, y: Any) -> bool:
    """Class equality by the daemon's one definition of a class (detectors.metrics.class_name), so that
    shadow accuracy and skew grade a prediction as live accuracy does: True, 1, 1.0, "1" and "1.0" are
    class "1". numpy scalars count as the Python values they hold; anything else is its str()."""
    return metrics.same_class(_label(x), _label(y))


def _label(v: Any) -> Label:
    if isinstance(v, np.generic):
        v = v.item()
    return v if isinstance(v, str | bool | int | float) else str(v)


def agreement(a: Sequence[Any], b: Sequence[Any], task: str) -> dict[str, float | int]:
    """How closely two models' predictions on the same rows agree."""
    _check(a, b, task)
    if not a:
        raise ValueError("no predictions to compare")
    if task == "classification":
        return {"n": len(a), "agreement": sum(same_class(x, y) for x, y in zip(a, b, strict=True)) / len(a)}
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return {"n": len(a), "mean_abs_difference": float(diff.mean()), "max_abs_difference": float(diff.max())}


def skew(
    replayed: Sequence[Any], logged: Sequence[Any], task: str, *, atol: float, rtol: float, tolerance: float
) -> dict[str, Any]:
    """Serving skew: replayed outputs against the predictions logged in production (None: not logged).

    Regression rows disagree beyond atol + rtol * |logged|, or when either value is not a number.
    """
    _check(replayed, logged, task)
    compared = 0
    mismatched: list[int] = []
    diffs: list[float] = []
    for i, (r, lg) in enumerate(zip(replayed, logged, strict=True)):
        if lg is None:
            continue
        compared += 1
        if task == "classification":
            agree = same_class(r, lg)
        else:
            x, y = _number(r), _number(lg)
            agree = False
            if x is not None and y is not None:
                diffs.append(abs(x - y))
                agree = abs(x - y) <= atol + rtol * abs(y)  # False for NaN
        if not agree:
            mismatched.append(i)
    rate = len(mismatched) / compared if compared else None
    return {
        "compared": compared,
        "mismatches": len(mismatched),
        "mismatch_rate": rate,
        "mean_abs_difference": float(np.mean(diffs)) if diffs else None,
        "flagged": rate is not None and rate > tolerance,
        "examples": mismatched[:SKEW_EXAMPLES],
    }


def accuracy(predictions: Sequence[Any], labels: Sequence[Any], task: str) -> dict[str, Any]:
    """Accuracy (classification) or mean absolute error (regression) over the rows with a label."""
    _check(predictions, labels, task)
    rows = [(p, y) for p, y in zip(predictions, labels, strict=True) if y is not None]
    if task == "classification":
        hits = sum(same_class(p, y) for p, y in rows)
        return {"labelled": len(rows), "accuracy": hits / len(rows) if rows else None}
    mae = float(np.mean([abs(float(p) - float(y)) for p, y in rows])) if rows else None
    return {"labelled": len(rows), "mae": mae}


def _number(v: Any) -> float | None:
    """v as a float when it is a real number (bool included) or a string that parses as one."""
    if isinstance(v, numbers.Real | np.bool_):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _check(a: Sequence[Any], b: Sequence[Any], task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if len(a) != len(b):
        raise ValueError(f"lengths differ: {len(a)} != {len(b)}")
