"""Windowed model quality from joined labels, per key and per slice, and a label-free accuracy estimate.

Metrics are recomputed from the window's items rather than kept as running sums: eviction is then
exact and every figure equals a batch computation over the same items. Windows are small and the
result is cached by version, so the exposition pays once per change. The estimate is NannyML's
CBPE reduced to accuracy: labels come late or never, but the model's confidence, calibrated once on
the first labelled window, says how often it is right on the predictions that have no label yet.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from daemon.ingest.events import Label
from daemon.monitors.labels import JoinedLabel
from daemon.monitors.traffic import (
    MAX_LABEL_VALUE_CHARS,
    OTHER,
    SNAPSHOT_VERSION,
    Overflow,
    _check_snapshot_version,
    _float_in,
    _float_out,
    _optional_float_in,
    _optional_float_out,
)

ALL = "__all__"
# Slice level of an event that lacks the slice feature; it does not count against the cap.
MISSING = "__missing__"
CLASSIFICATION = "classification"
REGRESSION = "regression"
# A time window also holds at most this many items, so memory is bounded however fast labels come.
MAX_TIME_WINDOW_ITEMS = 100_000
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


def graded(j: JoinedLabel) -> Graded:
    """The label's time is the item's time (the window is over labels); else the prediction's."""
    p = j.prediction
    ts = j.label_timestamp if j.label_timestamp is not None else p.timestamp
    return Graded(p.prediction, j.label, p.score, p.probabilities, ts)


def class_name(v: Label) -> str:
    """One name per class whatever the JSON type: 1, 1.0 and "1" are the same class."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if math.isfinite(v) and float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return str(v)


def _number(v: Label | None) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _fractional(v: Label | None) -> bool:
    """A number that no class is named by: a regression value."""
    return _number(v) and not (math.isfinite(v) and float(v).is_integer())  # type: ignore[arg-type]


def _task_of(g: Graded) -> str:
    return REGRESSION if _fractional(g.label) or _fractional(g.prediction) else CLASSIFICATION


def _is_positive(name: str, positive_class: str | None) -> bool | None:
    """Whether a class is the positive one; None when that cannot be told without a configured class."""
    if positive_class is not None:
        return name == positive_class
    return True if name in ("1", "true") else False if name in ("0", "false") else None


def _predicted_name(g: Graded) -> str | None:
    """The predicted class: the prediction, else the most probable class; None for a bare score."""
    if g.prediction is not None:
        return class_name(g.prediction)
    if g.probabilities:
        return max(g.probabilities.items(), key=lambda kv: kv[1])[0]
    return None


def is_wrong(g: Graded, positive_class: str | None = None) -> bool | None:
    """Whether a classification item's prediction misses its label; None when that cannot be told."""
    if _task_of(g) != CLASSIFICATION:
        return None
    truth = class_name(g.label)
    name = _predicted_name(g)
    if name is not None:
        return name != truth
    positive = _is_positive(truth, positive_class)
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
        positive = None if prediction is None else _is_positive(class_name(prediction), positive_class)
        return score if (score >= 0.5 if positive is None else positive) else 1.0 - score
    if probabilities:
        if prediction is not None:
            return float(probabilities.get(class_name(prediction), 0.0))
        return float(max(probabilities.values()))
    return None


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


def _classification(items: list[Graded], positive_class: str | None) -> dict[str, float]:
    truth = [class_name(g.label) for g in items]
    pred = [_predicted_name(g) for g in items]
    classes = set(truth).union(p for p in pred if p is not None)
    pos = positive_class or ("1" if "1" in classes else "true" if "true" in classes else None)
    # Binary: the positive class and at most one other. Any other class is then the negative one.
    if pos is not None and len(classes | {pos}) <= 2:
        return _binary(items, truth, pred, pos, next(iter(classes - {pos}), None))
    return _multiclass(items, truth, pred)


def _regression(items: list[Graded]) -> dict[str, float]:
    y = np.array([float(g.label) for g in items])
    err = y - np.array([float(g.prediction) for g in items])  # type: ignore[arg-type]
    out = {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2)))}
    nonzero = y != 0
    if nonzero.any():
        out["mape"] = float(np.mean(np.abs(err[nonzero]) / np.abs(y[nonzero])))
    return out


def _check_version(state: dict[str, Any], what: str) -> None:
    """The parts of a KeyPerformance snapshot carry their version as "v"."""
    _check_snapshot_version(state, what, "v")


def _label_out(v: Label | None) -> Any:
    """A label or prediction for strict JSON: a non-finite float becomes {"float": "nan"|"inf"|"-inf"}
    (a plain string would be read back as a class name)."""
    return {"float": str(v)} if isinstance(v, float) and not math.isfinite(v) else v


def _label_in(v: Any) -> Label | None:
    return float(v["float"]) if isinstance(v, dict) else v


def _graded_out(g: Graded) -> list[Any]:
    probs = g.probabilities
    return [
        _label_out(g.prediction),
        _label_out(g.label),
        _optional_float_out(g.score),
        None if probs is None else {c: _float_out(p) for c, p in probs.items()},
        _optional_float_out(g.timestamp),
    ]


def _graded_in(item: list[Any]) -> Graded:
    prediction, label, score, probs, ts = item
    return Graded(
        _label_in(prediction),
        _label_in(label),  # type: ignore[arg-type]
        _optional_float_in(score),
        None if probs is None else {str(c): _float_in(p) for c, p in probs.items()},
        _optional_float_in(ts),
    )


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class QualityWindow:
    """Quality over the last `window_events` labelled predictions, or the last `window_seconds` of them.

    The task is fixed by the first usable item: a window mixing regression and classification has no
    meaningful metric, so items of the other task are only counted (`mismatched`). A time window
    evicts from the front in arrival order: an item that came out of order leaves with those before
    it. Items without a timestamp take the newest one seen (the first one seen, when none was yet).
    """

    def __init__(
        self, window_events: int | None = 1000, window_seconds: float | None = None, positive_class: str | None = None
    ) -> None:
        if (window_events is None) == (window_seconds is None):
            raise ValueError(
                f"set exactly one of window_events and window_seconds, got window_events={window_events!r}, "
                f"window_seconds={window_seconds!r}"
            )
        if window_events is not None:
            _positive_int("window_events", window_events)
        if window_seconds is not None and (
            isinstance(window_seconds, bool)
            or not isinstance(window_seconds, int | float)
            or not (math.isfinite(window_seconds) and window_seconds > 0)
        ):
            raise ValueError(f"window_seconds must be a finite number of seconds > 0, got {window_seconds!r}")
        if positive_class is not None and not isinstance(positive_class, str):
            raise ValueError(f"positive_class must be a string, got {positive_class!r}")
        self.window_events = window_events
        self.window_seconds = None if window_seconds is None else float(window_seconds)
        self.positive_class = positive_class
        # Bumped by every change: the exposition re-renders, and metrics() recomputes, only then.
        self.version = 0
        self._reset()

    def _reset(self) -> None:
        self._items: deque[Graded] = deque(maxlen=self.window_events or MAX_TIME_WINDOW_ITEMS)
        self._task: str | None = None
        self.mismatched = 0
        self.unusable = 0
        self._newest: float | None = None
        self._cache: tuple[int, dict[str, float]] | None = None

    @property
    def task(self) -> str | None:
        return self._task

    def __len__(self) -> int:
        return len(self._items)

    def add(self, items: Sequence[Graded]) -> None:
        if not items:
            return
        self.version += 1
        for g in items:
            task = _task_of(g)
            if g.prediction is None and (task == REGRESSION or (not g.probabilities and g.score is None)):
                self.unusable += 1
                continue
            if self._task is None:
                self._task = task
            # A regressor may predict or be graded by whole numbers: those are still regression items.
            elif task != self._task and not (self._task == REGRESSION and _number(g.label) and _number(g.prediction)):
                self.mismatched += 1
                continue
            if self.window_seconds is not None:
                g = self._stamp(g)  # before the append: the first timestamp replaces the deque
            self._items.append(g)
        if self.window_seconds is not None and self._newest is not None:
            cutoff = self._newest - self.window_seconds
            items_ = self._items
            while items_ and (ts := items_[0].timestamp) is not None and ts < cutoff:
                items_.popleft()

    def _stamp(self, g: Graded) -> Graded:
        ts = g.timestamp
        if ts is None or not math.isfinite(ts):
            return g._replace(timestamp=self._newest)
        if self._newest is None:
            self._items = deque((i._replace(timestamp=ts) for i in self._items), maxlen=self._items.maxlen)
        if self._newest is None or ts > self._newest:
            self._newest = ts
        return g

    def metrics(self) -> dict[str, float]:
        """Figures over the window; {} when it is empty. Regression: mae, rmse, mape; classification:
        accuracy, precision, recall, f1 and, over the items with a score or probabilities, log_loss,
        brier and ece."""
        if self._cache is None or self._cache[0] != self.version:
            items = list(self._items)
            if not items:
                result: dict[str, float] = {}
            elif self._task == REGRESSION:
                result = _regression(items)
            else:
                result = _classification(items, self.positive_class)
            self._cache = (self.version, result)
        return dict(self._cache[1])

    def snapshot(self) -> dict[str, Any]:
        return {
            "v": SNAPSHOT_VERSION,
            "task": self._task,
            "mismatched": self.mismatched,
            "unusable": self.unusable,
            "newest": self._newest,
            "items": [_graded_out(g) for g in self._items],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the state with a snapshot's; this window's own size keeps the newest items."""
        _check_version(state, "quality window")
        self._reset()
        self._task = state["task"]
        self.mismatched, self.unusable = int(state["mismatched"]), int(state["unusable"])
        self._newest = state["newest"]
        self._items.extend(_graded_in(item) for item in state["items"])
        self.version += 1


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


class ConfidenceEstimator:
    """CBPE's expected accuracy: P(correct) = iso(confidence), averaged over the latest predictions.

    Calibrated once, on the first `reference_size` labelled pairs: the reference is a period whose
    quality is known, and a later shift in confidences then moves the estimate without labels.
    """

    def __init__(self, reference_size: int = 1000, window_events: int = 1000) -> None:
        _positive_int("reference_size", reference_size)
        _positive_int("window_events", window_events)
        self.reference_size = reference_size
        self.window_events = window_events
        self._reference: list[tuple[float, bool]] = []
        self._fit: tuple[Floats, Floats] | None = None
        self._window: deque[float] = deque(maxlen=window_events)

    @property
    def calibrated(self) -> bool:
        return self._fit is not None

    def add_labelled(self, confidences: Sequence[float], correct: Sequence[bool]) -> None:
        if len(confidences) != len(correct):
            raise ValueError(f"{len(confidences)} confidences but {len(correct)} correct flags")
        if self._fit is not None:
            return
        for c, ok in zip(confidences, correct, strict=True):
            if math.isfinite(c):
                self._reference.append((float(c), bool(ok)))
                if len(self._reference) >= self.reference_size:
                    break
        if len(self._reference) >= self.reference_size:
            conf, ok_ = zip(*self._reference, strict=True)
            self._fit = isotonic_fit(conf, [float(v) for v in ok_])
            self._reference = []

    def add_predictions(self, confidences: Sequence[float]) -> None:
        self._window.extend(c for c in confidences if math.isfinite(c))

    @property
    def expected_accuracy(self) -> float | None:
        if self._fit is None or not self._window:
            return None
        return float(np.mean(isotonic_predict(*self._fit, np.fromiter(self._window, np.float64, len(self._window)))))

    def snapshot(self) -> dict[str, Any]:
        fit = None if self._fit is None else [self._fit[0].tolist(), self._fit[1].tolist()]
        return {
            "v": SNAPSHOT_VERSION,
            "reference": [list(r) for r in self._reference],
            "fit": fit,
            "window": list(self._window),
        }

    def restore(self, state: dict[str, Any]) -> None:
        _check_version(state, "confidence estimator")
        self._reference = [(float(c), bool(ok)) for c, ok in state["reference"]]
        fit = state["fit"]
        self._fit = None if fit is None else (np.array(fit[0], dtype=np.float64), np.array(fit[1], dtype=np.float64))
        self._window = deque((float(c) for c in state["window"]), maxlen=self.window_events)


class KeyPerformance:
    """One key's quality: overall, per level of each slice feature, and the CBPE estimate.

    A slice feature keeps its first `max_slice_levels` levels; later ones fold into OTHER (counted
    as "slice_level" overflow) because levels become Prometheus label values.
    """

    def __init__(
        self,
        window_events: int | None,
        window_seconds: float | None,
        positive_class: str | None,
        slice_features: Sequence[str],
        max_slice_levels: int,
        reference_size: int,
        overflow: Overflow,
    ) -> None:
        _positive_int("max_slice_levels", max_slice_levels, 0)
        self._settings = (window_events, window_seconds, positive_class)
        self.overall = QualityWindow(*self._settings)
        # The estimate's window counts predictions; a time-windowed key uses 1000 of them.
        self.estimator = ConfidenceEstimator(reference_size, window_events or 1000)
        self.slice_features = tuple(slice_features)
        self.max_slice_levels = max_slice_levels
        self.slices: dict[str, dict[str, QualityWindow]] = {f: {} for f in self.slice_features}
        self.labelled_events = 0
        self._overflow = overflow
        self.version = 0

    @property
    def task(self) -> str | None:
        return self.overall.task

    @property
    def labelled(self) -> bool:
        """Whether any label has come: until then the estimate's predictions need not be tracked."""
        return self.labelled_events > 0

    def add_joined(self, joined: Sequence[JoinedLabel]) -> None:
        if not joined:
            return
        self.version += 1
        self.labelled_events += len(joined)
        items = [graded(j) for j in joined]
        self.overall.add(items)
        for i, feature in enumerate(self.slice_features):
            groups: dict[str, list[Graded]] = {}
            for j, g in zip(joined, items, strict=True):
                s = j.prediction.slices
                groups.setdefault(s[i] if i < len(s) and s[i] != "" else MISSING, []).append(g)
            for level, group in groups.items():
                self._slice(feature, level, len(group)).add(group)
        if self.overall.task == CLASSIFICATION and not self.estimator.calibrated:
            positive = self.overall.positive_class
            conf: list[float] = []
            correct: list[bool] = []
            for g in items:
                c = confidence(g.prediction, g.score, g.probabilities, positive)
                wrong = is_wrong(g, positive)
                if c is not None and wrong is not None:
                    conf.append(c)
                    correct.append(not wrong)
            self.estimator.add_labelled(conf, correct)

    def _slice(self, feature: str, level: str, n: int) -> QualityWindow:
        levels = self.slices[feature]
        window = levels.get(level)
        if window is not None:
            return window
        capped = sum(1 for lv in levels if lv not in (MISSING, OTHER))
        if level == MISSING or (
            level != OTHER and len(level) <= MAX_LABEL_VALUE_CHARS and capped < self.max_slice_levels
        ):
            window = levels[level] = QualityWindow(*self._settings)
            return window
        self._overflow.add("slice_level", n)
        if OTHER not in levels:
            levels[OTHER] = QualityWindow(*self._settings)
        return levels[OTHER]

    def add_predictions(self, confidences: Sequence[float]) -> None:
        if not confidences:
            return
        self.estimator.add_predictions(confidences)
        # Before calibration the estimate does not exist, so nothing rendered has changed.
        if self.estimator.calibrated:
            self.version += 1

    def rows(self) -> list[tuple[str, str, str, float]]:
        """(metric, slice_feature, slice_value, value); overall figures have feature and value __all__."""
        rows = [(m, ALL, ALL, v) for m, v in self.overall.metrics().items()]
        estimate = self.estimator.expected_accuracy
        if estimate is not None:
            rows.append(("accuracy_estimated", ALL, ALL, estimate))
        for feature, levels in self.slices.items():
            for level, window in levels.items():
                rows.extend((m, feature, level, v) for m, v in window.metrics().items())
        return rows

    def summary(self) -> dict[str, Any]:
        return {
            "task": self.overall.task,
            "window": len(self.overall),
            "metrics": self.overall.metrics(),
            "accuracy_estimated": self.estimator.expected_accuracy,
            "slices": {f: {lv: w.metrics() for lv, w in levels.items()} for f, levels in self.slices.items()},
        }

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state (non-finite floats encoded); the shared Overflow is not in it.
        A restore into a KeyPerformance of the same config continues exactly."""
        return {
            "version": SNAPSHOT_VERSION,
            "labelled_events": self.labelled_events,
            "overall": self.overall.snapshot(),
            "estimator": self.estimator.snapshot(),
            "slices": {f: {lv: w.snapshot() for lv, w in levels.items()} for f, levels in self.slices.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the state with a snapshot's; slices of features no longer configured are dropped."""
        _check_snapshot_version(state, "KeyPerformance")
        self.labelled_events = int(state["labelled_events"])
        self.overall.restore(state["overall"])
        self.estimator.restore(state["estimator"])
        self.slices = {f: {} for f in self.slice_features}
        for feature, levels in state["slices"].items():
            if feature in self.slices:
                for level, window_state in levels.items():
                    window = self.slices[feature][level] = QualityWindow(*self._settings)
                    window.restore(window_state)
        self.version += 1
