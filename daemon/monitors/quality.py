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
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.export.families import Sink, escape
from daemon.monitors.labels import JoinedLabel
from daemon.monitors.names import MAX_LABEL_VALUE_CHARS, OTHER, Overflow
from detectors.metrics import (
    CLASSIFICATION,
    REGRESSION,
    Graded,
    classification_metrics,
    confidence,
    is_number,
    is_wrong,
    isotonic_fit,
    isotonic_predict,
    regression_metrics,
    task_of,
)

ALL = "__all__"
# Slice level of an event that lacks the slice feature; it does not count against the cap.
MISSING = "__missing__"
# A time window also holds at most this many items, so memory is bounded however fast labels come.
MAX_TIME_WINDOW_ITEMS = 100_000
Floats = npt.NDArray[np.float64]


def graded(j: JoinedLabel) -> Graded:
    """The label's time is the item's time (the window is over labels); else the prediction's."""
    p = j.prediction
    ts = j.label_timestamp if j.label_timestamp is not None else p.timestamp
    return Graded(p.prediction, j.label, p.score, p.probabilities, ts)


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


# The labelled count of a window, among the rows of KeyPerformance.rows().
SAMPLES = "samples"


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
            task = task_of(g)
            if g.prediction is None and (task == REGRESSION or (not g.probabilities and g.score is None)):
                self.unusable += 1
                continue
            if self._task is None:
                self._task = task
            # A regressor may predict or be graded by whole numbers: those are still regression items.
            elif task != self._task and not (
                self._task == REGRESSION and is_number(g.label) and is_number(g.prediction)
            ):
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
                result = regression_metrics(items)
            else:
                result = classification_metrics(items, self.positive_class)
            self._cache = (self.version, result)
        return dict(self._cache[1])

    def snapshot(self) -> dict[str, Any]:
        return {
            "task": self._task,
            "mismatched": self.mismatched,
            "unusable": self.unusable,
            "newest": self._newest,
            "items": [list(g) for g in self._items],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the state with a snapshot's; this window's own size keeps the newest items."""
        self._reset()
        self._task = state["task"]
        self.mismatched, self.unusable = int(state["mismatched"]), int(state["unusable"])
        self._newest = state["newest"]
        self._items.extend(Graded(*item) for item in state["items"])
        self.version += 1


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
            "reference": [list(r) for r in self._reference],
            "fit": fit,
            "window": list(self._window),
        }

    def restore(self, state: dict[str, Any]) -> None:
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
        min_samples: int = 1,
    ) -> None:
        _positive_int("max_slice_levels", max_slice_levels, 0)
        _positive_int("min_samples", min_samples)
        # Windows holding fewer labelled predictions show their count, not their figures: five
        # labels make an accuracy of 0.8 or 0.0, which no alert should read.
        self.min_samples = min_samples
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
        """(metric, slice_feature, slice_value, value); overall figures have feature and value __all__.
        Each window gives its labelled count (metric "samples"), and its figures from `min_samples` on."""
        if not self.labelled:
            return []
        rows = self._window_rows(self.overall, ALL, ALL)
        estimate = self.estimator.expected_accuracy
        if estimate is not None:
            rows.append(("accuracy_estimated", ALL, ALL, estimate))
        for feature, levels in self.slices.items():
            for level, window in levels.items():
                rows += self._window_rows(window, feature, level)
        return rows

    def _window_rows(self, window: QualityWindow, feature: str, level: str) -> list[tuple[str, str, str, float]]:
        metrics = window.metrics()
        n = len(window)
        rows = [(SAMPLES, feature, level, float(n))]
        if n >= self.min_samples:
            rows += [(m, feature, level, v) for m, v in metrics.items()]
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
            "labelled_events": self.labelled_events,
            "overall": self.overall.snapshot(),
            "estimator": self.estimator.snapshot(),
            "slices": {f: {lv: w.snapshot() for lv, w in levels.items()} for f, levels in self.slices.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the state with a snapshot's; slices of features no longer configured are dropped."""
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


# -- the exposition ----------------------------------------------------------------------------


def collect(rows: list[tuple[str, list[tuple[str, str, str, float]]]], out: Sink) -> None:
    """Quality families from (key label set, KeyPerformance.rows()) of each labelled key."""
    realized_sets, realized, estimated_sets, estimated, sample_sets, samples = [], [], [], [], [], []
    for key_set, metrics in rows:
        for metric, feature, level, value in metrics:
            if metric == SAMPLES:
                sample_sets.append(f'{key_set},slice_feature="{escape(feature)}",slice_value="{escape(level)}"')
                samples.append(value)
            elif metric.endswith("_estimated"):
                estimated_sets.append(f'{key_set},metric="{metric.removesuffix("_estimated")}"')
                estimated.append(value)
            else:
                realized_sets.append(
                    f'{key_set},metric="{metric}",slice_feature="{escape(feature)}",slice_value="{escape(level)}"'
                )
                realized.append(value)
    out.samples("inferwatch_model_performance", realized_sets, realized)
    out.samples("inferwatch_model_performance_estimated", estimated_sets, estimated)
    out.samples("inferwatch_model_performance_samples", sample_sets, samples)
