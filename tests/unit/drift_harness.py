"""Driving a partition's `Drift` from decoded events, as `PartitionState` does, for the drift tests.

A `Feeder` owns the key list of one `Drift` (a key's row is its position there) and turns events
into the columnar batches `Drift.update` takes; `old_semantics` replays one stream the way the
per-stream monitors before the columnar core did (a calibrated detector fed value by value),
the oracle the banks must agree with.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.config import DriftConfig
from daemon.ingest.batch import Key, build
from daemon.ingest.events import InferenceEvent
from daemon.monitors import drift as drift_module
from daemon.monitors.drift import COLLECT, HOLD, WINDOW, Calibrator, Drift, DriftAlert
from daemon.monitors.names import Overflow
from daemon.state import codec
from detectors.calibration import Calibration, calibrate
from detectors.distribution import WindowedTest
from detectors.registry import DETECTORS

KEY: Key = ("m", "1", "default")
# Event i's record time: alerts carry the time of the event that completed the evidence.
BASE_TIME = 1_000.0

AlertRow = tuple[int, float | None, Key, str, str, float | None, float]


def rows_of(alerts: Sequence[DriftAlert]) -> list[AlertRow]:
    return [(a.index, a.timestamp, a.key, a.stream, a.detector, a.score, a.target_ert) for a in alerts]


class Feeder:
    """One partition's drift: its keys (rows in order of first sight), fed batches of events."""

    def __init__(
        self,
        settings: DriftConfig,
        calibrator: Calibrator | None = None,
        max_features: int = 8,
        references: dict[Key, dict[str, list[Any]]] | None = None,
    ) -> None:
        self.keys: list[Key] = []
        self.overflow = Overflow()
        self.drift = Drift(settings, calibrator or Calibrator(), max_features, self.keys, self.overflow, references)

    def row(self, key: Key) -> int:
        if key not in self.keys:
            self.keys.append(key)
            self.drift.add_rows(1)
        return self.keys.index(key)

    def events(self, events: Sequence[InferenceEvent], start: int) -> list[DriftAlert]:
        """One batch: events[i] has input index start + i and record time BASE_TIME + that."""
        n = len(events)
        index = list(range(start, start + n))
        batch = build(list(events), [0] * n, index, [BASE_TIME + i for i in index])
        rows = np.array([self.row(k) for k in batch.keys], dtype=np.int64)[batch.key]
        return self.drift.update(rows, np.argsort(rows, kind="stable"), batch)

    def errors(self, keys: Sequence[Key], wrong: Sequence[bool], start: int) -> list[DriftAlert]:
        """Graded predictions of `keys[i]` (True: wrong), at input indices start + i."""
        index = np.arange(start, start + len(wrong), dtype=np.int64)
        rows = np.array([self.row(k) for k in keys], dtype=np.int64)
        return self.drift.update_errors(rows, np.array(wrong, dtype=np.bool_), index, BASE_TIME + index)

    def sid(self, name: str, key: Key = KEY) -> int:
        row = self.keys.index(key)
        return next(s for s in self.drift.by_row[row] if self.drift.streams[s].name == name)

    def restore(self, state: dict[str, Any], keys: Sequence[Key]) -> None:
        """As a partition restores: its keys first (same rows), then the drift state."""
        for key in keys:
            self.row(key)
        self.drift.restore(state)

    def settle(self, timeout: float = 20.0) -> list[DriftAlert]:
        """Poll until no stream is calibrating (a detection among held values may start another)."""
        deadline = time.monotonic() + timeout
        alerts: list[DriftAlert] = []
        d = self.drift
        while np.any(d.phase[: len(d.streams)] == HOLD):
            assert time.monotonic() < deadline, "background calibration did not finish"
            time.sleep(0.005)
            alerts += d.poll()
        return alerts


def cuts_feed(
    feeder: Feeder, events: Sequence[InferenceEvent], cuts: Sequence[int], start: int = 0
) -> list[DriftAlert]:
    """events (input indices start...) in batches ending at each of `cuts` (relative positions)."""
    alerts: list[DriftAlert] = []
    edges = sorted({0, len(events), *(c for c in cuts if 0 < c < len(events))})
    for a, b in pairwise(edges):
        alerts += feeder.events(events[a:b], start + a)
    return alerts


def every(n: int, total: int) -> list[int]:
    return list(range(0, total, n))


def round_trip(state: dict[str, Any]) -> dict[str, Any]:
    """Through the checkpoint codec, as a checkpoint holds it."""
    out: dict[str, Any] = codec.decode(codec.encode(state))
    return out


# -- comparing states ----------------------------------------------------------------------------

AGE_TOLERANCE_S = 30.0  # the two runs being compared took a while


def same_tree(a: Any, b: Any, path: str = "") -> list[str]:
    """Differences between two snapshot trees (arrays by value, NaN equal to NaN, ages within a
    tolerance); [] when they are the same."""
    if path.endswith("last_detection_age"):
        x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if x.shape != y.shape or not np.array_equal(np.isnan(x), np.isnan(y)):
            return [f"{path}: {x} != {y}"]
        ok = np.isnan(x) | (np.abs(x - y) < AGE_TOLERANCE_S)
        return [] if ok.all() else [f"{path}: {x} != {y}"]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in same_tree(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        x, y = np.asarray(a), np.asarray(b)
        equal_nan = x.dtype.kind == "f" and y.dtype.kind == "f"
        if x.shape != y.shape or not np.array_equal(x, y, equal_nan=equal_nan):
            return [f"{path}: arrays differ ({x.dtype}{x.shape} vs {y.dtype}{y.shape})"]
        return []
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in same_tree(x, y, f"{path}[{i}]")]
    if _number(a) and _number(b):  # a numpy scalar in one, its Python number in the decoded other
        same = a == b or (math.isnan(a) and math.isnan(b))
        return [] if same else [f"{path}: {a!r} != {b!r}"]
    return [] if a == b and type(a) is type(b) else [f"{path}: {a!r} != {b!r}"]


def _number(x: Any) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool | np.bool_)


def assert_same(a: Drift, b: Drift) -> None:
    """Two drifts in the same state: what they show, and their snapshots. (Plain asserts here are
    not rewritten by pytest: each says what differs.)"""
    n = len(a.streams)
    assert n == len(b.streams), (n, len(b.streams))
    assert a.states() == b.states(), (a.states(), b.states())
    described = [[(s.name, s.kind, s.detector, s.row, s.feature) for s in d.streams] for d in (a, b)]
    assert described[0] == described[1], described
    held = [[(s.calibration, s.target, s.skipped, s.error) for s in d.streams] for d in (a, b)]
    assert held[0] == held[1], held
    for name in ("phase", "fill", "detections"):
        x, y = getattr(a, name)[:n].tolist(), getattr(b, name)[:n].tolist()
        assert x == y, (name, x, y)
    assert np.array_equal(a.score[:n], b.score[:n], equal_nan=True), (a.score[:n], b.score[:n])
    never = [np.isnan(d.last_detection[:n]).tolist() for d in (a, b)]
    assert never[0] == never[1], never
    assert (a.newest_detection is None) == (b.newest_detection is None)
    diffs = same_tree(meaningful(a.snapshot(), a.R), meaningful(b.snapshot(), b.R))
    assert diffs == [], diffs


def meaningful(state: dict[str, Any], reference_events: int) -> dict[str, Any]:
    """A snapshot without its banks' stale values: past a stream's fill, a bank row holds what an
    earlier reference or window left there (which depends on how values reached it: through the
    bank, straight from a batch, or held during a calibration), and nothing reads it."""
    out = {k: v for k, v in state.items() if not k.endswith(("_references", "_windows"))}
    banks = {
        name: np.concatenate([state[f"{name}_references"], state[f"{name}_windows"]], axis=1)
        for name in ("numeric", "categorical")
    }
    stale = {name: np.ones(bank.shape, dtype=np.bool_) for name, bank in banks.items()}
    r = reference_events
    for sid, st in enumerate(state["streams"]):
        bank = "categorical" if st["kind"] == "categorical" else "numeric"
        row, phase, fill = int(state["bank_row"][sid]), int(state["phase"][sid]), int(state["fill"][sid])
        if phase == COLLECT:
            stale[bank][row, :fill] = False
        else:
            stale[bank][row, :r] = False
            if phase == WINDOW:
                stale[bank][row, r : r + fill] = False
    banks["numeric"][stale["numeric"]] = np.nan
    banks["categorical"][stale["categorical"]] = -1
    out.update(banks)
    return out


# -- calibrators ---------------------------------------------------------------------------------


class HeldCalibrator(Calibrator):
    """Calibrations finish only when the test says so: a slow background calibration."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[tuple[Callable[[], Calibration], Future[Calibration]]] = []
        self.submitted = 0

    def submit(self, fn: Callable[[], Calibration]) -> Future[Calibration]:
        future: Future[Calibration] = Future()
        self.jobs.append((fn, future))
        self.submitted += 1
        return future

    def finish(self) -> None:
        """Run the calibrations submitted so far (their callbacks fire here, as a worker's would)."""
        jobs, self.jobs = self.jobs, []
        for fn, future in jobs:
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)


class CountingCalibrator(Calibrator):
    """Inline, counting the calibrations submitted."""

    def __init__(self) -> None:
        super().__init__()
        self.submitted = 0

    def submit(self, fn: Callable[[], Calibration]) -> Future[Calibration]:
        self.submitted += 1
        return super().submit(fn)


_CALIBRATIONS: dict[Any, Calibration] = {}


def cached_calibrate(name: str, reference: Sequence[Any], target_ert: float, **kw: Any) -> Calibration:
    """`calibrate` is deterministic (seeded): remembering its results only saves time (River's
    simulations take ~0.5-1 s each); the tests that use it patch it into the drift module."""
    params = kw.get("params") or {}
    key = (name, tuple(reference), float(target_ert), tuple(sorted(params.items())), tuple(sorted(kw)))
    hit = _CALIBRATIONS.get(key)
    if hit is None:
        hit = _CALIBRATIONS[key] = calibrate(name, reference, target_ert, **kw)
    return hit


def patch_calibrate(monkeypatch: Any) -> None:
    monkeypatch.setattr(drift_module, "calibrate", cached_calibrate)


# -- the old semantics, one stream ---------------------------------------------------------------


def old_semantics(
    detector: str,
    values: Sequence[Any],
    reference_events: int,
    window_events: int,
    target: float,
    calibrate_fn: Callable[..., Calibration] = calibrate,
) -> list[tuple[int, float | None]]:
    """(position in `values`, score) of each detection of one stream, as the per-stream monitor
    before the columnar core found them: the first `reference_events` values calibrate a fresh
    detector, which then takes the reference and every later value one by one; after a detection
    the values that follow are the next reference."""
    out: list[tuple[int, float | None]] = []
    windowed = issubclass(DETECTORS[detector], WindowedTest)
    params = {"reference_size": reference_events, "window_size": window_events} if windowed else {}
    start = 0
    while start + reference_events <= len(values):
        reference = list(values[start : start + reference_events])
        det = calibrate_fn(detector, reference, target, params=params).build()
        det.update_many(reference)
        hits = det.update_many(values[start + reference_events :], stop_at_first=True)
        if not hits:
            break
        at = start + reference_events + hits[0]
        score = getattr(det, "score", None)
        out.append((at, None if score is None or not math.isfinite(score) else float(score)))
        start = at + 1
    return out


def floats(xs: npt.ArrayLike) -> list[float]:
    return [float(v) for v in np.asarray(xs, dtype=np.float64).tolist()]
