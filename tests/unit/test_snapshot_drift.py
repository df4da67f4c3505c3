"""Drift snapshots: a restore continues exactly like an uninterrupted run (crash safety's groundwork)."""

from __future__ import annotations

import json
import math
import random
import time
from concurrent.futures import Future
from itertools import pairwise
from typing import Any

import pytest

from daemon.config import DriftConfig
from daemon.ingest.events import InferenceEvent
from daemon.monitors.drift import Calibrator, DriftAlert, KeyDrift

KEY = ("m", "1", "default")
N = 3_000
BATCH = 97
SETTINGS = DriftConfig(reference_events=200, window_events=100, target_ert_events=100_000)


def make_events(n: int = N, seed: int = 0) -> list[InferenceEvent]:
    """Score and `x` shift at 1200, the categories at 1800, latency at 2400; `k` is an int feature."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x: float = rng.gauss(1.5 if i >= 1_200 else 0.0, 1.0)
        if i % 131 == 7:
            x = math.nan if i % 2 else math.inf  # non-finite values reach the numeric stream
        cats = "abcd" if i < 1_800 else "aaad"
        features: dict[str, Any] = {"x": x, "c": rng.choice(cats), "k": rng.randint(0, 9), "flag": rng.random() < 0.3}
        out.append(
            InferenceEvent(
                request_id=f"r{i}",
                model="m",
                version="1",
                latency_ms=abs(rng.gauss(50.0 if i < 2_400 else 80.0, 10.0)),
                score=rng.gauss(0.3 if i < 1_200 else 0.6, 0.1),
                features=features,
            )
        )
    return out


def make_errors(n: int = N, seed: int = 1) -> list[bool]:
    rng = random.Random(seed)
    return [rng.random() < (0.05 if i < 1_500 else 0.3) for i in range(n)]


AlertRow = tuple[int, str, str, float | None, float, tuple[str, str, str]]


def rows(alerts: list[DriftAlert]) -> list[AlertRow]:
    return [(a.index, a.stream, a.detector, a.score, a.target_ert, a.key) for a in alerts]


def new_drift(calibrator: Calibrator | None = None, settings: DriftConfig = SETTINGS) -> KeyDrift:
    return KeyDrift(KEY, settings, calibrator or Calibrator(), max_features=8)


def feed(
    drift: KeyDrift, events: list[InferenceEvent], start: int, stop: int, errors: list[bool] | None, cuts: list[int]
) -> list[DriftAlert]:
    """Feed events[start:stop] in batches ending at `cuts`, each followed by its errors if any."""
    alerts: list[DriftAlert] = []
    edges = [start, *(c for c in cuts if start < c < stop), stop]
    for a, b in pairwise(edges):
        idx = list(range(a, b))
        times: list[float | None] = [1_000.0 + i for i in idx]
        alerts += drift.update(events[a:b], idx, times)
        if errors is not None:
            alerts += drift.update_errors(errors[a:b], idx, times)
    return alerts


def round_trip(state: dict[str, Any]) -> dict[str, Any]:
    """Through strict JSON, as a checkpoint file holds it."""
    return json.loads(json.dumps(state, allow_nan=False))  # type: ignore[no-any-return]


AGES = ("last_detection_age",)


def without_ages(state: Any) -> Any:
    if isinstance(state, dict):
        return {k: without_ages(v) for k, v in state.items() if k not in AGES}
    if isinstance(state, list):
        return [without_ages(v) for v in state]
    return state


def ages(state: Any) -> list[float | None]:
    if isinstance(state, dict):
        return [state[k] for k in AGES if k in state] + [a for v in state.values() for a in ages(v)]
    if isinstance(state, list):
        return [a for v in state for a in ages(v)]
    return []


def assert_same(a: KeyDrift, b: KeyDrift) -> None:
    assert a.states() == b.states()
    assert list(a.streams) == list(b.streams)
    for name, m in a.streams.items():
        r = b.streams[name]
        assert (m.state, m.detections, m.score, m.skipped, m.error) == (
            r.state,
            r.detections,
            r.score,
            r.skipped,
            r.error,
        )
        assert m.calibration == r.calibration
        assert (m.last_detection is None) == (r.last_detection is None)
    assert (a.last_detection is None) == (b.last_detection is None)
    sa, sb = a.snapshot(), b.snapshot()
    assert without_ages(sa) == without_ages(sb)
    assert close_ages(ages(sa), ages(sb))


def close_ages(xs: list[float | None], ys: list[float | None], tolerance: float = 30.0) -> bool:
    """The same ages, within `tolerance` seconds (the runs being compared took a while)."""
    return len(xs) == len(ys) and all(
        (x is None and y is None) or (x is not None and y is not None and abs(x - y) < tolerance)
        for x, y in zip(xs, ys, strict=True)
    )


CUTS = list(range(0, N, BATCH))


def check_split(split: int, errors: list[bool] | None = None) -> tuple[KeyDrift, dict[str, Any]]:
    events = make_events()
    cuts = sorted({*CUTS, split})
    whole = new_drift()
    expected = feed(whole, events, 0, N, errors, cuts)
    first = new_drift()
    before = feed(first, events, 0, split, errors, cuts)
    state = round_trip(first.snapshot())
    second = new_drift()
    second.restore(state)
    assert without_ages(second.snapshot()) == without_ages(state)  # restore then snapshot is the identity
    # Ages, not monotonic times: the restored detections are as old as the snapshotted ones.
    assert close_ages(ages(second.snapshot()), ages(state))
    assert (second.last_detection is None) == (first.last_detection is None)
    after = feed(second, events, split, N, errors, cuts)
    assert rows(before + after) == rows(expected)
    assert_same(whole, second)
    return whole, state


def test_the_scenario_has_detections_on_every_kind_of_stream() -> None:
    drift = new_drift()
    alerts = feed(drift, make_events(), 0, N, make_errors(), CUTS)
    assert {a.stream for a in alerts} >= {"score", "latency", "feature:x", "feature:c", "errors"}
    assert set(drift.streams) == {"score", "latency", "feature:x", "feature:c", "feature:k", "feature:flag", "errors"}


@pytest.mark.parametrize("split", [100, 200, 700, 1_000])
def test_restore_continues_like_an_uninterrupted_run(split: int) -> None:
    _, state = check_split(split)
    streams = {s["stream"]: s for s in state["streams"]}
    if split < 200:
        assert {s["state"] for s in streams.values()} == {"reference"}
        assert all(0 < len(s["reference"]) < 200 for s in streams.values())
    else:
        assert {s["state"] for s in streams.values()} == {"active"}
        assert all(s["calibration"] is not None and s["detector_state"] is not None for s in streams.values())
    # Numeric values are floats, non-finite ones tagged; categorical ones strings.
    if split == 100:
        assert {"$float": "nan"} in streams["feature:x"]["reference"]
        assert all(type(v) is float for v in streams["feature:k"]["reference"])
        assert set(streams["feature:flag"]["reference"]) == {"True", "False"}


def test_restore_just_after_a_detection_while_the_reference_is_relearnt() -> None:
    whole = new_drift()
    alerts = feed(whole, make_events(), 0, N, None, CUTS)
    first = min(a.index for a in alerts if a.stream == "feature:x")
    _, state = check_split(first + 50)
    x = next(s for s in state["streams"] if s["stream"] == "feature:x")
    # Re-learning: the old calibration and the score that fired are kept, the detector is gone.
    assert x["state"] == "reference" and x["detections"] == 1 and x["detector_state"] is None
    assert x["calibration"] is not None and x["last_score"] is not None and x["last_detection_age"] is not None
    assert 0 < len(x["reference"]) < 200
    # A checkpoint restored two minutes later, in another process: the detection is that much older.
    x["last_detection_age"] = 120.0
    state["last_detection_age"] = 100.0
    later = new_drift()
    later.restore(state)
    m = later.streams["feature:x"]
    assert m.last_detection is not None and later.last_detection is not None
    assert 119.0 < time.monotonic() - m.last_detection < 125.0
    assert 99.0 < time.monotonic() - later.last_detection < 105.0


@pytest.mark.parametrize("split", [150, 1_300, 1_600, 2_450])
def test_restore_with_an_errors_stream(split: int) -> None:
    whole, state = check_split(split, make_errors())
    assert "errors" in whole.streams and whole.streams["errors"].detections >= 1
    errors = next(s for s in state["streams"] if s["stream"] == "errors")
    assert all(type(v) is bool for v in errors["reference"] + errors["pending"]["values"])


class PendingCalibrator(Calibrator):
    """A background calibrator whose calibrations never finish: a crash mid-calibration."""

    def __init__(self) -> None:
        super().__init__(workers=1)
        self.submitted = 0

    def submit(self, fn: Any) -> Future[Any]:
        self.submitted += 1
        return Future()


def settle(drift: KeyDrift) -> list[DriftAlert]:
    """Wait for the key's background calibrations; the streams take them and test what they held."""
    deadline = time.monotonic() + 15
    alerts: list[DriftAlert] = []
    while any(m.state == "calibrating" for m in drift.streams.values()):
        assert time.monotonic() < deadline, "background calibration did not finish"
        time.sleep(0.01)
        alerts += drift.poll()  # a detection among the held values may start another calibration
    return alerts


def test_a_stream_snapshotted_while_calibrating_calibrates_again_on_restore() -> None:
    events, split = make_events(), 1_400
    whole = new_drift()
    expected = feed(whole, events, 0, N, None, CUTS)
    stuck = PendingCalibrator()
    first = new_drift(stuck)
    assert feed(first, events, 0, split, None, CUTS) == []  # everything after the reference is held
    assert stuck.submitted == 6 and first.states()["calibrating"] == 6
    state = round_trip(first.snapshot())
    for s in state["streams"]:
        assert s["state"] == "calibrating" and len(s["reference"]) == 200
        assert s["calibration"] is None and s["detector_state"] is None
        assert len(s["pending"]["values"]) == len(s["pending"]["indices"]) > 0
    background = Calibrator(workers=1)
    try:
        second = new_drift(background)
        second.restore(state)
        assert second.states()["calibrating"] == 6
        got = settle(second)  # the held values are tested now, as the finished calibration would have
        assert second.states()["calibrating"] == 0
        # Later calibrations (after detections) run in the background too.
        got += feed(second, events, split, N, None, CUTS) + settle(second)
    finally:
        background.close()
    assert got and sorted(rows(got)) == sorted(rows(expected))
    assert_same(whole, second)


def test_a_calibration_target_is_the_one_submitted_not_a_later_one() -> None:
    """A feature registered while another calibrates raises the bonferroni target of later
    calibrations only; the restored calibration keeps the target it was submitted with."""
    rng = random.Random(3)
    stuck = PendingCalibrator()
    first = new_drift(stuck)
    early = [InferenceEvent(request_id=f"r{i}", model="m", features={"x": rng.gauss(0, 1)}) for i in range(250)]
    first.update(early, list(range(250)), [None] * 250)
    late = [InferenceEvent(request_id="z", model="m", features={"x": 0.0, "y": 1.0})]
    first.update(late, [250], [None])
    state = round_trip(first.snapshot())
    x = next(s for s in state["streams"] if s["stream"] == "feature:x")
    assert x["calibration_target"] == 100_000.0  # one feature when it was submitted
    second = new_drift()
    second.restore(state)
    second.poll()
    cal = second.streams["feature:x"].calibration
    assert cal is not None and cal.target_ert == 100_000.0


def test_a_river_detector_round_trips_through_json() -> None:
    """River detectors snapshot as a base64 pickle (with the River version) inside the JSON."""
    settings = DriftConfig(reference_events=200, window_events=100, streams=("latency",), numeric_detector="adwin")
    rng = random.Random(4)
    events = [
        InferenceEvent(request_id=str(i), model="m", latency_ms=abs(rng.gauss(50 if i < 1_500 else 70, 5)))
        for i in range(2_500)
    ]
    cuts = list(range(0, 2_500, 250))
    whole = new_drift(settings=settings)
    expected = feed(whole, events, 0, 2_500, None, cuts)
    first = new_drift(settings=settings)
    before = feed(first, events, 0, 1_000, None, cuts)
    state = round_trip(first.snapshot())
    assert isinstance(state["streams"][0]["detector_state"]["pickle"], str)
    second = new_drift(settings=settings)
    second.restore(state)
    after = feed(second, events, 1_000, 2_500, None, cuts)
    assert expected and rows(before + after) == rows(expected)
    assert_same(whole, second)


def test_restore_refuses_another_version_or_key_or_detector() -> None:
    drift = new_drift()
    feed(drift, make_events(300), 0, 300, None, CUTS)
    state = round_trip(drift.snapshot())
    assert state["version"] == 1
    with pytest.raises(ValueError, match="drift key snapshot version must be 1, got 2"):
        new_drift().restore({**state, "version": 2})
    with pytest.raises(ValueError, match="drift stream snapshot version must be 1, got None"):
        drift.streams["score"].restore({})
    with pytest.raises(ValueError, match="key"):
        KeyDrift(("other", "1", "default"), SETTINGS, Calibrator(), 8).restore(state)
    other = DriftConfig(reference_events=200, window_events=100, target_ert_events=100_000, numeric_detector="psi")
    with pytest.raises(ValueError, match="detector 'ks'"):
        new_drift(settings=other).restore(state)


def test_a_failed_stream_stays_failed_with_its_reason() -> None:
    settings = DriftConfig(reference_events=200, window_events=100, streams=("errors",), error_detector="ddm")
    drift = new_drift(settings=settings)
    drift.update_errors([False] * 250, list(range(250)), [None] * 250)  # no error at all: DDM cannot learn
    state = round_trip(drift.snapshot())
    restored = new_drift(settings=settings)
    restored.restore(state)
    m = restored.streams["errors"]
    assert m.state == "failed" and m.error == drift.streams["errors"].error and m.error is not None
    assert restored.states() == drift.states() == {"reference": 0, "calibrating": 0, "active": 0, "failed": 1}
    assert restored.update_errors([True] * 500, list(range(250, 750)), [None] * 500) == []
