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
from daemon.ingest.events import InferenceEvent
from daemon.state.routing import Key
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
# Format of StreamMonitor and KeyDrift snapshots; restore() refuses any other.
SNAPSHOT_VERSION = 1


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
        # The target ERT of the calibration last submitted (the bonferroni target can grow later).
        self._calibration_target: float | None = None

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
        self._submit_calibration(self._target_ert())
        assert self._future is not None
        if self._future.done():
            self._finish_calibration(self._future)

    def _submit_calibration(self, target: float) -> None:
        """Calibrate on the current reference to `target`, on the calibrator (inline or not)."""
        reference = list(self._reference)
        params: dict[str, Any] = {}
        if issubclass(DETECTORS[self.detector], WindowedTest):
            params = {"reference_size": len(reference), "window_size": self._settings.window_events}
        name = self.detector
        self._calibration_target = target  # a snapshot taken meanwhile resubmits with it
        self._future = self._calibrator.submit(lambda: calibrate(name, reference, target, params=params))
        self.state = "calibrating"

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

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state (see `SNAPSHOT_VERSION`); `restore()` on a like monitor continues it.

        A stream whose calibration has not been taken yet is stored as calibrating, with its
        reference and held values: `restore()` submits the (deterministic) calibration again.
        `last_detection` is stored as an age, since monotonic clocks do not cross processes.
        """
        cal = self.calibration
        pv, pi, pt = self._pending
        out: dict[str, Any] = _to_json(
            {
                "version": SNAPSHOT_VERSION,
                "stream": self.stream,
                "kind": self.kind,
                "detector": self.detector,
                "state": self.state,
                "reference": _values(self._reference, self.kind),
                "calibration_target": self._calibration_target,
                "calibration": None if cal is None else _calibration_state(cal),
                "detector_state": None if self._det is None else self._det.snapshot(),
                "pending": {"values": _values(pv, self.kind), "indices": list(pi), "times": list(pt)},
                "skipped": self.skipped,
                "detections": self.detections,
                "last_detection_age": _age(self.last_detection),
                "last_score": self.last_score,
                "error": self.error,
            }
        )
        return out

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the state with a snapshot's, taken from a monitor of the same stream and detector."""
        _check_version(state, "drift stream")
        st = _from_json(state)
        for name in ("stream", "kind", "detector"):
            if st[name] != getattr(self, name):
                raise ValueError(
                    f"drift stream snapshot is for {name} {st[name]!r}, not {getattr(self, name)!r}; "
                    "the configuration changed: start this stream afresh"
                )
        if st["state"] not in STREAM_STATES:
            raise ValueError(f"drift stream snapshot has unknown state {st['state']!r}")
        self.state = st["state"]
        self._reference = _values(st["reference"], self.kind)
        self._future, self._det = None, None
        self.calibration = None if st["calibration"] is None else _calibration(st["calibration"])
        target = st["calibration_target"]
        self._calibration_target = None if target is None else float(target)
        pending = st["pending"]
        self._pending = (
            _values(pending["values"], self.kind),
            [int(i) for i in pending["indices"]],
            [None if t is None else float(t) for t in pending["times"]],
        )
        self.skipped, self.detections = int(st["skipped"]), int(st["detections"])
        self.last_detection = _since(st["last_detection_age"])
        self.last_score = None if st["last_score"] is None else float(st["last_score"])
        self.error = st["error"]
        if self.state == "active":
            if self.calibration is None or st["detector_state"] is None:
                raise ValueError("drift stream snapshot is active but lacks its calibration or detector state")
            self._det = self.calibration.build()
            self._det.restore(st["detector_state"])
        elif self.state == "calibrating":
            if self._calibration_target is None:
                raise ValueError("drift stream snapshot is calibrating but lacks its calibration target")
            # Taken by the next feed() or KeyDrift.poll(), as the interrupted calibration would have been.
            self._submit_calibration(self._calibration_target)


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

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state of every stream (see `SNAPSHOT_VERSION`); `version` is not kept.

        Feature streams are listed in the order they were registered (names and kinds), since
        bonferroni targets and the cap depend on it; `last_detection` is stored as an age.
        """
        return {
            "version": SNAPSHOT_VERSION,
            "key": list(self.key),
            "features": [[name, m.kind] for name, m in self._features.items()],
            "streams": [m.snapshot() for m in self.streams.values()],
            "last_detection_age": _to_json(_age(self.last_detection)),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace every stream with a snapshot's. Streams calibrating when it was taken calibrate
        again on this key's calibrator, and take the result at the next update() or poll()."""
        _check_version(state, "drift key")
        if tuple(state["key"]) != tuple(self.key):
            raise ValueError(f"drift key snapshot is for key {tuple(state['key'])!r}, not {self.key!r}")
        features = [(str(name), str(kind)) for name, kind in state["features"]]
        if len(features) > self._max_features:
            raise ValueError(
                f"drift key snapshot has {len(features)} feature streams, more than max_features={self._max_features}"
            )
        self.streams, self._features = {}, {}
        kinds = {f"feature:{name}": kind for name, kind in features}
        # Register the features first, in their order: a feature stream's target counts them all.
        for name, kind in features:
            if kind not in ("numeric", "categorical"):
                raise ValueError(f"drift key snapshot has feature {name!r} of unknown kind {kind!r}")
            self._features[name] = self._monitor(f"feature:{name}", kind)  # type: ignore[arg-type]
        streams: dict[str, StreamMonitor] = {}
        for st in state["streams"]:
            name = st["stream"]
            stream_kind = kinds.get(name) or _STREAM_KINDS.get(name)
            if stream_kind is None:
                raise ValueError(f"drift key snapshot has an unknown stream {name!r}")
            m = self.streams.get(name) or self._monitor(name, stream_kind)  # type: ignore[arg-type]
            m.restore(st)
            streams[name] = m
        missing = set(self.streams) - set(streams)
        if missing:
            raise ValueError(f"drift key snapshot registers features without their streams: {sorted(missing)}")
        self.streams = streams  # in the snapshot's order, which poll() follows
        self.last_detection = _since(_from_json(state["last_detection_age"]))
        self.version += 1
        self._states = (-1, {})

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


def _check_version(state: dict[str, Any], what: str) -> None:
    if state.get("version") != SNAPSHOT_VERSION:
        raise ValueError(
            f"{what} snapshot version must be {SNAPSHOT_VERSION}, got {state.get('version')!r}; "
            "it was written by another inferwatch: delete the checkpoint to start drift monitoring afresh"
        )


def _age(at: float | None) -> float | None:
    return None if at is None else time.monotonic() - at


def _since(age: float | None) -> float | None:
    return None if age is None else time.monotonic() - float(age)


def _values(values: list[Any], kind: InputKind) -> list[Any]:
    """A stream's values as a snapshot holds them: floats, bools (True = error) or strings."""
    if kind == "numeric":
        return [float(v) for v in values]
    if kind == "binary":
        return [bool(v) for v in values]
    return [str(v) for v in values]


def _calibration_state(cal: Calibration) -> dict[str, Any]:
    return {
        "name": cal.name,
        "params": dict(cal.params),
        "target_ert": cal.target_ert,
        "estimated_ert": cal.estimated_ert,
        "method": cal.method,
        "simulated_events": cal.simulated_events,
        "points": [list(p) for p in cal.points],
    }


def _calibration(state: dict[str, Any]) -> Calibration:
    return Calibration(
        name=state["name"],
        params=dict(state["params"]),
        target_ert=float(state["target_ert"]),
        estimated_ert=float(state["estimated_ert"]),
        method=state["method"],
        simulated_events=int(state["simulated_events"]),
        points=[(float(v), float(arl), int(n)) for v, arl, n in state["points"]],
    )


# A non-finite float in a snapshot: {"$float": "nan" | "inf" | "-inf"} (JSON has no such numbers).
_FLOAT_TAG = "$float"


def _to_json(obj: Any) -> Any:
    """`obj` with tuples as lists, numpy scalars as Python ones and non-finite floats tagged."""
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else {_FLOAT_TAG: repr(float(obj))}
    if obj is None or isinstance(obj, str | int):  # bool is an int
        return obj
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_json(v) for v in obj]
    item = getattr(obj, "item", None)  # a numpy scalar
    if item is not None:
        return _to_json(item())
    raise TypeError(f"cannot put a {type(obj).__name__} in a drift snapshot")


def _from_json(obj: Any) -> Any:
    """The inverse of `_to_json` (but lists stay lists)."""
    if isinstance(obj, dict):
        if len(obj) == 1 and _FLOAT_TAG in obj:
            return float(obj[_FLOAT_TAG])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


_STREAM_KINDS: dict[str, str] = {"score": "numeric", "latency": "numeric", "errors": "binary"}
_NUMBERS = {float, int}
_STR = {str}


def _top_probability(e: InferenceEvent) -> float | None:
    return max(e.probabilities.values()) if e.probabilities else None
