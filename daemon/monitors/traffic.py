"""Per-key state that the pipeline updates in batches and the collector reads at scrape time."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from daemon.config import LimitsConfig, MetricsConfig
from daemon.ingest.events import InferenceEvent
from detectors.quantiles import SMALL_BATCH, QuantileSketch

OTHER = "__other__"
# Format of the per-key snapshots (a checkpoint's KeyStats and KeyPerformance); bump on any change.
SNAPSHOT_VERSION = 1
# Longer class names and feature names are folded into OTHER: they become label values.
MAX_LABEL_VALUE_CHARS = 128


class Overflow:
    """Counts values folded into OTHER because a cap was reached, by dimension."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, dimension: str, n: int = 1) -> None:
        self.counts[dimension] = self.counts.get(dimension, 0) + n


class Histogram:
    """Bucket counts with Prometheus semantics: bucket i counts values ≤ bounds[i]."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = [float(b) for b in bounds]
        self._np_bounds = np.asarray(self.bounds, dtype=np.float64)
        self.counts: list[int] = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe_many(self, values: Sequence[float]) -> None:
        if len(values) < SMALL_BATCH:
            for v in values:
                self.counts[bisect_left(self.bounds, v)] += 1
            self.sum += math.fsum(values)
            return
        arr = np.asarray(values, dtype=np.float64)
        idx = np.searchsorted(self._np_bounds, arr, side="left")
        added = np.bincount(idx, minlength=len(self.counts)).tolist()
        self.counts = [a + b for a, b in zip(self.counts, added, strict=True)]
        self.sum += float(arr.sum())

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": _float_out(self.sum)}

    def restore(self, state: dict[str, Any]) -> None:
        if len(state["counts"]) != len(self.counts):
            raise ValueError(
                f"histogram snapshot has {len(state['counts'])} buckets, this histogram has {len(self.counts)}"
            )
        self.counts = [int(c) for c in state["counts"]]
        self.sum = float(state["sum"])


class CappedCounts:
    """name → count for at most `cap` names; later names fold into OTHER."""

    def __init__(self, cap: int, dimension: str, overflow: Overflow) -> None:
        self.cap = cap
        self.dimension = dimension
        self.counts: dict[str, int] = {}
        self._overflow = overflow

    def add(self, name: str, n: int = 1) -> None:
        counts = self.counts
        if name in counts:
            counts[name] += n
        elif len(counts) < self.cap and len(name) <= MAX_LABEL_VALUE_CHARS and name != OTHER:
            counts[name] = n
        else:
            counts[OTHER] = counts.get(OTHER, 0) + n
            self._overflow.add(self.dimension, n)

    def snapshot(self) -> dict[str, int]:
        """name → count in first-seen order; the overflow is the pipeline's to snapshot."""
        return dict(self.counts)

    def restore(self, counts: dict[str, Any]) -> None:
        self.counts = {str(name): int(n) for name, n in counts.items()}


@dataclass(slots=True)
class FeatureStats:
    # Events of this key before the feature was first seen: they do not count as missing it.
    first_seen_at: int
    present: int = 0

    def missing(self, events: int) -> int:
        return events - self.first_seen_at - self.present


@dataclass(slots=True)
class KeySummary:
    """Final figures for one key: /v1/status and the replay report's summary."""

    model: str
    version: str
    variant: str
    events: int
    errors: int
    error_rate: float
    latency_seconds: dict[str, float | None]
    last_event_timestamp: float | None
    errors_by_type: dict[str, int] = field(default_factory=dict)


class KeyStats:
    """Streaming traffic, error, latency, prediction and feature-completeness figures of one key."""

    def __init__(self, metrics: MetricsConfig, limits: LimitsConfig, overflow: Overflow) -> None:
        self.events = 0
        self.errors = CappedCounts(limits.max_error_types, "error_type", overflow)
        self.latency = Histogram(metrics.latency_buckets_seconds)
        self.latency_sketch = QuantileSketch()
        self.ttft = Histogram(metrics.ttft_buckets_seconds)
        self.tokens_in = 0
        self.tokens_out = 0
        self.score = Histogram(metrics.score_buckets)
        self.classes = CappedCounts(limits.max_classes, "class", overflow)
        self.features: dict[str, FeatureStats] = {}
        self.max_features = limits.max_features
        self.last_event_timestamp: float | None = None
        self._overflow = overflow
        # Bumped by every update: the exposition re-renders a key only when it has moved.
        self.version = 0

    def update(self, events: Sequence[InferenceEvent], times: Sequence[float | None]) -> None:
        """Fold a batch of this key's events in; `times` are their unix-second timestamps.

        One pass per field rather than one branchy pass per event: list comprehensions and
        Counter run at C speed (bench/pipeline_throughput.py).
        """
        if not events:
            return
        self.version += 1
        lat = [x / 1000.0 for e in events if (x := e.latency_ms) is not None]
        if lat:
            self.latency.observe_many(lat)
            self.latency_sketch.update_many(lat)
        errors = [e.error_type or "unknown" for e in events if e.status == "error"]
        if errors:
            for error_type, n in Counter(errors).items():
                self.errors.add(error_type, n)
        scores = [x for e in events if (x := e.score) is not None]
        for e in [e for e in events if e.probabilities and e.score is None]:
            best = max(e.probabilities.items(), key=_second)  # type: ignore[union-attr]
            scores.append(best[1])
            if e.prediction is None:
                self.classes.add(best[0])
        if scores:
            self.score.observe_many(scores)
        for pred, n in Counter([p for e in events if (p := e.prediction) is not None]).items():
            cls = _class_name(pred)
            if cls is not None:
                self.classes.add(cls, n)
        self._update_features(events)
        ttft = [x / 1000.0 for e in events if (x := e.ttft_ms) is not None]
        if ttft:
            self.ttft.observe_many(ttft)
        tokens = [e for e in events if e.tokens_in is not None or e.tokens_out is not None]
        if tokens:
            self.tokens_in += sum([e.tokens_in or 0 for e in tokens])
            self.tokens_out += sum([e.tokens_out or 0 for e in tokens])
        self.events += len(events)
        newest = max(filter(None, times), default=None)
        if newest is not None and (self.last_event_timestamp is None or newest > self.last_event_timestamp):
            self.last_event_timestamp = newest

    def _update_features(self, events: Sequence[InferenceEvent]) -> None:
        # Count names with C-level Counter/chain instead of touching every feature of every
        # event in Python; nulls are rare and counted on a slow path.
        feats = [f for e in events if (f := e.features)]
        if not feats:
            return
        seen = Counter(chain.from_iterable(feats))
        with_null = [f for f in feats if None in f.values()]
        nulls = Counter([k for f in with_null for k, v in f.items() if v is None]) if with_null else _NO_NULLS
        features = self.features
        new = [name for name in seen if name not in features]
        if new:
            self._register(new, events)
        for name, n in seen.items():
            fs = features.get(name)
            if fs is not None:
                fs.present += n - nulls[name]
            else:
                self._overflow.add("feature", n)

    def _register(self, names: list[str], events: Sequence[InferenceEvent]) -> None:
        """Start counting `names`, each from the first event of this batch that carries it."""
        todo = set(names)
        for i, e in enumerate(events):
            if e.features:
                for name in [n for n in e.features if n in todo]:  # in order: the cap keeps the first
                    todo.discard(name)
                    if len(self.features) < self.max_features and len(name) <= MAX_LABEL_VALUE_CHARS:
                        self.features[name] = FeatureStats(first_seen_at=self.events + i)
                if not todo:
                    return

    @property
    def error_count(self) -> int:
        return sum(self.errors.counts.values())

    def summary(self, key: tuple[str, str, str]) -> KeySummary:
        errors = self.error_count
        sk = self.latency_sketch
        quantiles = {f"p{int(q * 100)}": _finite(sk.quantile(q)) for q in (0.5, 0.95, 0.99)}
        return KeySummary(
            model=key[0],
            version=key[1],
            variant=key[2],
            events=self.events,
            errors=errors,
            error_rate=errors / self.events if self.events else 0.0,
            latency_seconds=quantiles,
            last_event_timestamp=self.last_event_timestamp,
            errors_by_type=dict(self.errors.counts),
        )

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state (non-finite floats as "nan"/"inf"/"-inf"); the shared Overflow is
        not in it. A restore into a KeyStats of the same config continues exactly."""
        return {
            "version": SNAPSHOT_VERSION,
            "events": self.events,
            "errors": self.errors.snapshot(),
            "latency": self.latency.snapshot(),
            "latency_sketch": self.latency_sketch.snapshot(),
            "ttft": self.ttft.snapshot(),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "score": self.score.snapshot(),
            "classes": self.classes.snapshot(),
            # name → [first_seen_at, present], in first-seen order.
            "features": {name: [fs.first_seen_at, fs.present] for name, fs in self.features.items()},
            "last_event_timestamp": _optional_float_out(self.last_event_timestamp),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the state with a snapshot's (see snapshot())."""
        _check_snapshot_version(state, "KeyStats")
        self.events = int(state["events"])
        self.errors.restore(state["errors"])
        self.latency.restore(state["latency"])
        self.latency_sketch.restore(state["latency_sketch"])
        self.ttft.restore(state["ttft"])
        self.tokens_in = int(state["tokens_in"])
        self.tokens_out = int(state["tokens_out"])
        self.score.restore(state["score"])
        self.classes.restore(state["classes"])
        self.features = {
            str(name): FeatureStats(first_seen_at=int(first), present=int(present))
            for name, (first, present) in state["features"].items()
        }
        self.last_event_timestamp = _optional_float_in(state["last_event_timestamp"])
        self.version += 1


_NO_NULLS: Counter[str] = Counter()


def _class_name(pred: float | str | bool) -> str | None:
    """Class label of a prediction; None for a non-integral number (a regression output)."""
    if pred is True or pred is False:
        return "true" if pred else "false"
    if isinstance(pred, str):
        return pred
    if pred.is_integer() and abs(pred) < 1e15:
        return str(int(pred))
    return None


def _second(item: tuple[str, float]) -> float:
    return item[1]


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def _check_snapshot_version(state: Any, what: str, field: str = "version") -> None:
    """Refuse a snapshot this inferwatch cannot read, saying why."""
    if not isinstance(state, dict):
        raise ValueError(f"{what} snapshot must be a JSON object, got {type(state).__name__}")
    version = state.get(field)
    if type(version) is int and version == SNAPSHOT_VERSION:
        return
    if type(version) is int and version > SNAPSHOT_VERSION:
        raise ValueError(f"{what} snapshot version {version} is newer than this inferwatch ({SNAPSHOT_VERSION})")
    raise ValueError(f"{what} snapshot version {version!r} is not one this inferwatch reads ({SNAPSHOT_VERSION})")


def _float_out(x: float) -> float | str:
    """A float for strict JSON: a non-finite one becomes "nan", "inf" or "-inf", which float() reads back."""
    return x if math.isfinite(x) else str(x)


def _float_in(v: float | str) -> float:
    return float(v) if isinstance(v, str) else v


def _optional_float_out(x: float | None) -> float | str | None:
    return None if x is None else _float_out(x)


def _optional_float_in(v: float | str | None) -> float | None:
    return None if v is None else _float_in(v)
