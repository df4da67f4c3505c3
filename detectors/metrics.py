"""Quality formulas over graded predictions, and the one definition of a class.

Pure statistics: the daemon keeps the windows (daemon/monitors/quality.py) and the shadow runner
its replays (daemon/shadow/compare.py); both name classes and grade predictions here, so a
prediction True against a label "1" is right for live accuracy and for shadow accuracy alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

# A label or prediction as logged (the JSON types an event allows).
Label = float | str | bool

CLASSIFICATION = "classification"
REGRESSION = "regression"
# Log loss clips probabilities to [EPS, 1 - EPS], as sklearn does: one sure miss is not infinite.
EPS = 1e-15
ECE_BINS = 10

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]


class Graded(NamedTuple):
    """A prediction with its label: what the windows hold."""

    prediction: Label | None
    label: Label
    score: float | None
    probabilities: dict[str, float] | None
    timestamp: float | None


def class_name(v: Label) -> str:
    """The one name of a class, whatever the JSON type: True, 1, 1.0, "1" and "1.0" are class "1".

    Booleans are the classes "1" and "0"; a number (or a string that reads as one) that is whole is
    named by its integer, any other by its shortest repr; other strings are their own name.

    >>> [class_name(v) for v in (True, 1, 1.0, "1", "1.0", False, "cat", 0.5, "0.50")]
    ['1', '1', '1', '1', '1', '0', 'cat', '0.5', '0.5']
    """
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, str):
        try:
            x = float(v)
        except ValueError:
            return v
        if not math.isfinite(x):
            return v
    else:
        x = float(v)
    if math.isfinite(x) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def counted_class(v: Label) -> str | None:
    """The class a logged prediction is counted under; None for a fractional number (a regression
    output, not a class)."""
    if isinstance(v, float | int) and not isinstance(v, bool) and not (math.isfinite(v) and float(v).is_integer()):
        return None
    return class_name(v)


def same_class(x: Label, y: Label) -> bool:
    """Whether two predictions or labels name the same class (class_name decides)."""
    return class_name(x) == class_name(y)


def is_number(v: Label | None) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _fractional(v: Label | None) -> bool:
    """A number that no class is named by: a regression value."""
    return is_number(v) and not (math.isfinite(v) and float(v).is_integer())  # type: ignore[arg-type]


def task_of(g: Graded) -> str:
    return REGRESSION if _fractional(g.label) or _fractional(g.prediction) else CLASSIFICATION


def is_positive(name: str, positive_class: str | None) -> bool | None:
    """Whether a class is the positive one; None when that cannot be told without a configured class."""
    if positive_class is not None:
        return name == positive_class
    return True if name in ("1", "true") else False if name in ("0", "false") else None


def predicted_name(g: Graded) -> str | None:
    """The predicted class: the prediction, else the most probable class; None for a bare score."""
    if g.prediction is not None:
        return class_name(g.prediction)
    if g.probabilities:
        return class_name(max(g.probabilities.items(), key=lambda kv: kv[1])[0])
    return None


def is_wrong(g: Graded, positive_class: str | None = None) -> bool | None:
    """Whether a classification item's prediction misses its label; None when that cannot be told."""
    if task_of(g) != CLASSIFICATION:
        return None
    truth = class_name(g.label)
    name = predicted_name(g)
    if name is not None:
        return name != truth
    positive = is_positive(truth, positive_class)
    if g.score is None or not math.isfinite(g.score) or positive is None:
        return None
    return positive != (g.score >= 0.5)


def confidence(
    prediction: Label | None,
    score: float | None,
    probabilities: dict[str, float] | None,
    positive_class: str | None = None,
) -> float | None:
    """Probability the model gives its own predicted class; None when it gives none.

    A score is P(positive): the confidence is s when the predicted class is positive, else 1 - s.
    When the prediction does not say which class it is (no configured positive class, not 1/true
    or 0/false), the score's side of 0.5 does.
    """
    if score is not None and math.isfinite(score):
        positive = None if prediction is None else is_positive(class_name(prediction), positive_class)
        return score if (score >= 0.5 if positive is None else positive) else 1.0 - score
    if probabilities:
        if prediction is not None:
            return probability_of(probabilities, class_name(prediction))
        return float(max(probabilities.values()))
    return None


def probability_of(probabilities: dict[str, float], name: str) -> float:
    """The probability given to class `name` (keys are matched by class_name); 0 when none is."""
    p = probabilities.get(name)
    if p is None:
        p = next((v for k, v in probabilities.items() if class_name(k) == name), 0.0)
    return float(p)


def _ratio(a: float, b: float) -> float:
    """sklearn's zero_division=0: a figure with nothing to divide by is 0."""
    return a / b if b else 0.0


def _probabilistic(p_true: Floats, brier: Floats, conf: Floats, correct: Bools) -> dict[str, float]:
    """Log loss, Brier and ECE (ten equal-width bins over the predicted class's confidence)."""
    bins = np.minimum((np.clip(conf, 0.0, 1.0) * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    # Σ_b (n_b/n)|acc_b - conf_b| = Σ_b |Σ_{i∈b} (correct_i - conf_i)| / n
    gaps = np.bincount(bins, weights=correct.astype(np.float64) - conf, minlength=ECE_BINS)
    return {
        "log_loss": float(-np.mean(np.log(np.clip(p_true, EPS, 1.0 - EPS)))),
        "brier": float(np.mean(brier)),
        "ece": float(np.sum(np.abs(gaps)) / len(conf)),
    }


def _binary(
    items: list[Graded], truth: list[str], pred: list[str | None], pos: str, neg: str | None
) -> dict[str, float]:
    y = np.array([t == pos for t in truth], dtype=np.bool_)
    yhat = np.array(
        [
            p == pos if p is not None else g.score is not None and g.score >= 0.5
            for g, p in zip(items, pred, strict=True)
        ],
        dtype=np.bool_,
    )
    tp, fp, fn = int(np.sum(y & yhat)), int(np.sum(~y & yhat)), int(np.sum(y & ~yhat))
    out = {
        "accuracy": float(np.mean(y == yhat)),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }
    p_pos = np.array([_p_positive(g, pos, neg) for g in items], dtype=np.float64)
    has = ~np.isnan(p_pos)
    if has.any():
        p, yy, yh = p_pos[has], y[has], yhat[has]
        out.update(_probabilistic(np.where(yy, p, 1.0 - p), (p - yy) ** 2, np.where(yh, p, 1.0 - p), yh == yy))
    return out


def _p_positive(g: Graded, pos: str, neg: str | None) -> float:
    """P(positive) of a binary item: the score, else from the probabilities (a missing class has 0)."""
    if g.score is not None:
        return g.score
    probs = g.probabilities
    if not probs:
        return math.nan
    if pos in probs:
        return float(probs[pos])
    return 1.0 - float(probs[neg]) if neg is not None and neg in probs else 0.0


def _multiclass(items: list[Graded], truth: list[str], pred: list[str | None]) -> dict[str, float]:
    """Macro averages over the classes seen; a bare score names no class here, so its item is left out."""
    kept = [(g, t, p) for g, t, p in zip(items, truth, pred, strict=True) if p is not None]
    if not kept:
        return {}
    index = {c: k for k, c in enumerate(sorted({t for _, t, _ in kept} | {p for _, _, p in kept}))}
    k = len(index)
    codes = np.array([index[t] * k + index[p] for _, t, p in kept], dtype=np.int64)
    cm = np.bincount(codes, minlength=k * k).reshape(k, k).astype(np.float64)
    tp, predicted, actual = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)

    def macro(num: Floats, den: Floats) -> float:
        return float(np.mean(np.divide(num, den, out=np.zeros(k), where=den > 0)))

    out = {
        "accuracy": float(tp.sum() / len(kept)),
        "precision": macro(tp, predicted),
        "recall": macro(tp, actual),
        "f1": macro(2 * tp, predicted + actual),
    }
    rows = [
        (
            float(probs.get(t, 0.0)),
            sum((v - (c == t)) ** 2 for c, v in probs.items()) + (0.0 if t in probs else 1.0),
            float(probs.get(p, 0.0)),
            p == t,
        )
        for g, t, p in kept
        # Values outside [0, 1] are no probabilities (and 1e200 ** 2 overflows): not scored.
        if (probs := g.probabilities) and all(0.0 <= v <= 1.0 for v in probs.values())
    ]
    if rows:
        p_true, brier, conf, correct = (np.array(col) for col in zip(*rows, strict=True))
        out.update(_probabilistic(p_true, brier, conf, correct))
    return out


def classification_metrics(items: list[Graded], positive_class: str | None) -> dict[str, float]:
    truth = [class_name(g.label) for g in items]
    pred = [predicted_name(g) for g in items]
    classes = set(truth).union(p for p in pred if p is not None)
    pos = positive_class or ("1" if "1" in classes else "true" if "true" in classes else None)
    # Binary: the positive class and at most one other. Any other class is then the negative one.
    if pos is not None and len(classes | {pos}) <= 2:
        return _binary(items, truth, pred, pos, next(iter(classes - {pos}), None))
    return _multiclass(items, truth, pred)


def regression_metrics(items: list[Graded]) -> dict[str, float]:
    y = np.array([float(g.label) for g in items])
    err = y - np.array([float(g.prediction) for g in items])  # type: ignore[arg-type]
    out = {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2)))}
    nonzero = y != 0
    if nonzero.any():
        out["mape"] = float(np.mean(np.abs(err[nonzero]) / np.abs(y[nonzero])))
    return out


def isotonic_fit(x: Sequence[float], y: Sequence[float]) -> tuple[Floats, Floats]:
    """Increasing least-squares fit of y on x by pool-adjacent-violators: (block centres, block means).

    Equal x are pooled first (a function has one value per x); each block keeps the weighted mean of
    its x (its centre) and of its y, and `isotonic_predict` interpolates between the centres.
    """
    ux, inverse, counts = np.unique(np.asarray(x, dtype=np.float64), return_inverse=True, return_counts=True)
    sum_y = np.bincount(inverse.ravel(), weights=np.asarray(y, dtype=np.float64), minlength=len(ux))
    weights: list[float] = []
    sums_x: list[float] = []
    sums_y: list[float] = []
    for w, sx, sy in zip(counts.tolist(), (ux * counts).tolist(), sum_y.tolist(), strict=True):
        w, sx, sy = float(w), float(sx), float(sy)
        # Pool while the block before has a higher mean: sy_prev/w_prev > sy/w without dividing.
        while weights and sums_y[-1] * w > sy * weights[-1]:
            w += weights.pop()
            sx += sums_x.pop()
            sy += sums_y.pop()
        weights.append(w)
        sums_x.append(sx)
        sums_y.append(sy)
    ws = np.array(weights)
    return np.array(sums_x) / ws, np.array(sums_y) / ws


def isotonic_predict(centres: Floats, values: Floats, x: Sequence[float] | Floats) -> Floats:
    """Linear between block centres, flat beyond the ends."""
    return np.interp(np.asarray(x, dtype=np.float64), centres, values)
