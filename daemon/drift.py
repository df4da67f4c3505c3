"""Drift monitoring per key: one calibrated detector per stream, fed a batch at a time.

A key's streams are `score`, `latency`, `feature:<name>` (each feature, numeric or
categorical by its first value) and `errors` (misclassified, from joined labels). Each stream:

1. collects its reference: the first `reference_events` values, or a reference file's;
2. calibrates its detector on that reference to the target expected run time (ERT), inline
   (replay: deterministic) or on a background thread (the daemon: off the ingest loop; values
   that arrive meanwhile wait in a bounded buffer);
3. detects. Every detection becomes a `DriftAlert` carrying the input index of the event that
   completed the evidence.

Multiple testing: with `bonferroni`, each of a key's m feature streams is calibrated to
m × target, so the key's features together raise about one false alarm per target events.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any, Literal

import structlog

from daemon.config import DriftConfig
from daemon.events import InferenceEvent
from daemon.routing import Key
from detectors.base import InputKind
from detectors.calibration import Calibration, calibrate
from detectors.distribution import WindowedTest
from detectors.registry import DETECTORS

log = structlog.get_logger(__name__)

StreamState = Literal["reference", "calibrating", "active", "failed"]
STREAM_STATES: tuple[StreamState, ...] = ("reference", "calibrating", "active", "failed")
# Values held per stream while its calibration runs in the background; beyond it they are
# skipped (counted) rather than held without bound.
MAX_PENDING = 100_000


@dataclass(frozen=True, slots=True)
class DriftAlert:
    """One detection, as the replay report and the log line show it."""

    index: int
    timestamp: float | None
    key: Key
    stream: str
    detector: str
    score: float | None
    target_ert: float

    def report(self) -> dict[str, Any]:
        model, version, variant = self.key
        return {
            "index": self.index,
            "timestamp": self.timestamp,
            "kind": "drift",
            "model": model,
            "version": version,
            "variant": variant,
            "stream": self.stream,
            "detector": self.detector,
            "score": self.score,
            "target_ert": self.target_ert,
        }


class Calibrator:
    """Runs calibrations: inline (`workers=0`) or on background threads."""

    def __init__(self, workers: int = 0) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="calibrate") if workers else None

    def submit(self, fn: Callable[[], Calibration]) -> Future[Calibration]:
        if self._pool is not None:
            return self._pool.submit(fn)
        done: Future[Calibration] = Future()
        try:
            done.set_result(fn())
        except Exception as exc:
            done.set_exception(exc)
        return done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class StreamMonitor:
    """Reference → calibration → detection, for one stream of one key."""

    def __init__(
        self,
        stream: str,
        kind: InputKind,
        detector: str,
        settings: DriftConfig,
        calibrator: Calibrator,
        target_ert: Callable[[], float],
        reference: Sequence[Any] = (),
    ) -> None:
        self.stream = stream
        self.kind = kind
        self.detector = detector
        self._settings = settings
        self._calibrator = calibrator
        self._target_ert = target_ert
        self.state: StreamState = "reference"
        self._reference: list[Any] = list(reference[: settings.reference_events])
        self._future: Future[Calibration] | None = None
        self._det: Any = None
        self.calibration: Calibration | None = None
        # Values that came while calibrating, with their input indices and timestamps.
        self._pending: tuple[list[Any], list[int], list[float | None]] = ([], [], [])
        self.skipped = 0
        self.detections = 0
        self.last_detection: float | None = None  # monotonic seconds
        self.last_score: float | None = None
        self.error: str | None = None

    @property
    def score(self) -> float | None:
        """The detector's latest statistic; while a new reference is collected, the one that fired."""
        if self._det is None:
            return self.last_score
        s = getattr(self._det, "score", None)
        return None if s is None or not math.isfinite(s) else float(s)

    def feed(self, values: list[Any], indices: list[int], times: list[float | None]) -> list[DriftAlert]:
        """Take values (already of this stream's kind) with their input indices and timestamps."""
        if self.state == "reference":
            need = self._settings.reference_events - len(self._reference)
            self._reference.extend(values[:need])
            if len(self._reference) < self._settings.reference_events:
                return []
            values, indices, times = values[need:], indices[need:], times[need:]
            self._start_calibration()
        if self.state == "calibrating":
            assert self._future is not None
            if not self._future.done():
                self._hold(values, indices, times)
                return []
            if self._finish_calibration(self._future):
                pv, pi, pt = self._pending
                self._pending = ([], [], [])
                values, indices, times = pv + values, pi + indices, pt + times
        if self.state != "active":
            return []
        hits = self._det.update_many(values, stop_at_first=True)
        if not hits:
            return []
        h = hits[0]
        self.detections += 1
        self.last_detection = time.monotonic()
        self.last_score = self.score
        assert self.calibration is not None
        alert = DriftAlert(
            indices[h], times[h], ("", "", ""), self.stream, self.detector, self.last_score, self.calibration.target_ert
        )
        # Start over: the values after the detection are the new reference, and the threshold is
        # calibrated on it afresh (a bootstrapped test's null depends on its reference).
        self.state, self._det = "reference", None
        h += 1
        return [alert, *self.feed(values[h:], indices[h:], times[h:])]

    @property
    def calibrated(self) -> bool:
        """A calibration has finished but the stream has not taken it yet (it does at its next feed)."""
        return self.state == "calibrating" and self._future is not None and self._future.done()

    def _start_calibration(self) -> None:
        reference = list(self._reference)
        target = self._target_ert()
        params: dict[str, Any] = {}
        if issubclass(DETECTORS[self.detector], WindowedTest):
            params = {"reference_size": len(reference), "window_size": self._settings.window_events}
        name = self.detector
        self._future = self._calibrator.submit(lambda: calibrate(name, reference, target, params=params))
        self.state = "calibrating"
        if self._future.done():
            self._finish_calibration(self._future)

    def _finish_calibration(self, future: Future[Calibration]) -> bool:
        """Build the detector from a finished calibration; False if the stream cannot be monitored."""
        try:
            cal = future.result()
        except Exception as exc:
            # A reference a detector cannot learn from (a constant stream, no errors at all), or
            # a bug: this stream stays unmonitored, and says why; ingestion goes on.
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.info("drift_stream_not_monitored", stream=self.stream, detector=self.detector, reason=self.error)
            return False
        self.calibration = cal
        self._det = cal.build()
        self._det.update_many(self._reference)  # a window test's reference; a River detector's warm-up
        self._reference = []
        self.state = "active"
        return True

    def _hold(self, values: list[Any], indices: list[int], times: list[float | None]) -> None:
        pv, pi, pt = self._pending
        room = MAX_PENDING - len(pv)
        if room < len(values):
            self.skipped += len(values) - max(room, 0)
            values, indices, times = values[:room], indices[:room], times[:room]
        pv.extend(values)
        pi.extend(indices)
        pt.extend(times)


class KeyDrift:
    """The streams of one (model, version, variant)."""

    def __init__(
        self,
        key: Key,
        settings: DriftConfig,
        calibrator: Calibrator,
        max_features: int,
        references: dict[str, list[Any]] | None = None,
    ) -> None:
        self.key = key
        self.settings = settings
        self._calibrator = calibrator
        self._max_features = max_features
        self._references = references or {}
        self.streams: dict[str, StreamMonitor] = {}
        self._features: dict[str, StreamMonitor] = {}
        watch = settings.streams
        self._watch_features = "features" in watch
        self._watch_score = "score" in watch
        self._watch_latency = "latency" in watch
        self.watch_errors = "errors" in watch
        # Bumped when anything the exposition shows may have changed.
        self.version = 0
        self._states: tuple[int, dict[str, int]] = (-1, {})
        # Monotonic time of the newest detection of any stream.
        self.last_detection: float | None = None

    def _monitor(self, stream: str, kind: InputKind) -> StreamMonitor:
        s = self.settings
        detector = {"numeric": s.numeric_detector, "categorical": s.categorical_detector, "binary": s.error_detector}[
            kind
        ]
        target: Callable[[], float] = lambda: float(s.target_ert_events)  # noqa: E731
        if stream.startswith("feature:") and s.multiple_testing == "bonferroni":
            target = lambda: float(s.target_ert_events) * max(1, len(self._features))  # noqa: E731
        m = StreamMonitor(stream, kind, detector, s, self._calibrator, target, self._references.get(stream, ()))
        self.streams[stream] = m
        return m

    def update(
        self, events: Sequence[InferenceEvent], indices: list[int], times: list[float | None]
    ) -> list[DriftAlert]:
        """Feed a batch of this key's events; return the detections, in no particular order."""
        alerts: list[DriftAlert] = []
        for stream, kind, column in self._columns(events):
            values, idx, ts = _usable(column, kind, indices, times)
            if values:
                m = self.streams.get(stream) or self._monitor(stream, kind)
                alerts.extend(self._stamp(m.feed(values, idx, ts)))
        self.version += 1
        return alerts

    def _columns(self, events: Sequence[InferenceEvent]) -> Iterator[tuple[str, InputKind, list[Any]]]:
        """(stream, kind, one value or None per event) for each watched stream of the batch."""
        if self._watch_score:
            yield "score", "numeric", [e.score if e.score is not None else _top_probability(e) for e in events]
        if self._watch_latency:
            yield "latency", "numeric", [e.latency_ms for e in events]
        if self._watch_features:
            feats = [e.features for e in events]
            if any(feats):
                complete = None not in feats
                for name in self._feature_names(feats):
                    m = self._features[name]
                    if complete:  # the usual case: map() runs the lookups at C speed
                        yield m.stream, m.kind, list(map(dict.get, feats, repeat(name)))  # type: ignore[arg-type]
                    else:
                        yield m.stream, m.kind, [f.get(name) if f else None for f in feats]

    def poll(self) -> list[DriftAlert]:
        """Streams whose calibration finished take it now and test the values held meanwhile.

        Without this a stream would wait for its key's next event: a key gone quiet would show
        `calibrating` forever and never test a drift that arrived while it was calibrating.
        """
        done = [m for m in self.streams.values() if m.calibrated]
        if not done:
            return []
        alerts: list[DriftAlert] = []
        for m in done:
            alerts.extend(self._stamp(m.feed([], [], [])))
        self.version += 1
        return alerts

    def update_errors(self, wrong: list[bool], indices: list[int], times: list[float | None]) -> list[DriftAlert]:
        """Feed graded predictions in label order: True where the prediction was wrong."""
        if not self.watch_errors or not wrong:
            return []
        m = self.streams.get("errors") or self._monitor("errors", "binary")
        self.version += 1
        return self._stamp(m.feed(wrong, indices, times))

    def _feature_names(self, feats: list[dict[str, Any] | None]) -> list[str]:
        """Known feature streams, after registering new names (kind from the first usable value)."""
        known = self._features
        if len(known) < self._max_features and not known.keys() >= set(chain.from_iterable(filter(None, feats))):
            for f in feats:
                if f is None:
                    continue
                for name, v in f.items():
                    if name in known or v is None or len(known) >= self._max_features:
                        continue
                    kind: InputKind = "categorical" if isinstance(v, str | bool) else "numeric"
                    known[name] = self._monitor(f"feature:{name}", kind)
        return list(known)

    def _stamp(self, alerts: list[DriftAlert]) -> list[DriftAlert]:
        out = [DriftAlert(a.index, a.timestamp, self.key, a.stream, a.detector, a.score, a.target_ert) for a in alerts]
        if out:
            self.last_detection = time.monotonic()
        for a in out:
            log.warning(
                "drift_detected",
                model=a.key[0],
                version=a.key[1],
                variant=a.key[2],
                stream=a.stream,
                detector=a.detector,
                index=a.index,
                event_timestamp=a.timestamp,
                score=a.score,
            )
        return out

    def states(self) -> dict[str, int]:
        """Streams by state; cached per version, since every scrape asks for every key."""
        if self._states[0] != self.version:
            counts: dict[str, int] = dict.fromkeys(STREAM_STATES, 0)
            for m in self.streams.values():
                counts[m.state] += 1
            self._states = (self.version, counts)
        return self._states[1]


def reference_columns(
    events: Sequence[InferenceEvent], settings: DriftConfig, max_features: int
) -> dict[str, list[Any]]:
    """Each stream's values in `events`, as a key's monitors would take them: a reference file."""
    probe = KeyDrift(("", "", ""), settings, Calibrator(), max_features)
    out: dict[str, list[Any]] = {}
    none: list[Any] = [None] * len(events)
    for stream, kind, column in probe._columns(events):
        out[stream] = _usable(column, kind, none, none)[0]
    return out


def _usable(
    column: list[Any], kind: InputKind, indices: list[int], times: list[float | None]
) -> tuple[list[Any], list[int], list[float | None]]:
    """The values of `column` this stream takes, with their indices and times."""
    types = set(map(type, column))  # one C-level pass; usually a single type
    if kind == "numeric":
        if types <= _NUMBERS:
            return column, indices, times
        keep = [i for i, v in enumerate(column) if type(v) is float or type(v) is int]
    else:
        if types == _STR:
            return column, indices, times
        keep = [i for i, v in enumerate(column) if type(v) is str or type(v) is bool]
        return [str(column[i]) for i in keep], [indices[i] for i in keep], [times[i] for i in keep]
    return [column[i] for i in keep], [indices[i] for i in keep], [times[i] for i in keep]


_NUMBERS = {float, int}
_STR = {str}


def _top_probability(e: InferenceEvent) -> float | None:
    return max(e.probabilities.values()) if e.probabilities else None
