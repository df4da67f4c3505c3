"""Per-key drift monitoring: reference → calibration → detection, indices, families, references."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from daemon.config import DriftConfig, from_mapping
from daemon.ingest.events import InferenceEvent
from daemon.monitors.drift import Calibrator, KeyDrift, StreamMonitor, reference_columns

KEY = ("m", "1", "default")
TARGET = 1_000_000.0


def shifted(n: int, change_at: int, shift: float, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(shift if i >= change_at else 0.0, 1.0) for i in range(n)]


def feed_all(m: StreamMonitor, xs: list[Any], batch: int = 700, base: int = 0) -> list[int]:
    hits: list[int] = []
    for i in range(0, len(xs), batch):
        chunk = xs[i : i + batch]
        idx = list(range(base + i, base + i + len(chunk)))
        hits += [a.index for a in m.feed(chunk, idx, [float(j) for j in idx])]
    return hits


def monitor(
    kind: str = "numeric", detector: str = "wasserstein", calibrator: Calibrator | None = None
) -> StreamMonitor:
    return StreamMonitor("feature:x", kind, detector, DriftConfig(), calibrator or Calibrator(), lambda: TARGET)  # type: ignore[arg-type]


def test_a_shift_is_reported_at_the_input_index_that_completed_the_window() -> None:
    m = monitor()
    hits = feed_all(m, shifted(12_000, 8_000, 1.0), base=100)
    assert m.state == "active"
    assert m.calibration is not None and m.calibration.target_ert == TARGET
    # Reference = values 0..999, windows of 500 after it; the change at 8000 starts a window,
    # which ends at value 8499, whose input index is 100 + 8499.
    assert hits == [100 + 8499]


def test_no_alarm_on_a_stationary_stream() -> None:
    assert feed_all(monitor(), shifted(60_000, 60_000, 0.0, seed=3)) == []


def _settle(m: StreamMonitor) -> list[int]:
    """Wait for a background calibration, then let the monitor work off what it held."""
    deadline = time.monotonic() + 30
    while m._future is not None and not m._future.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    return [a.index for a in m.feed([], [], [])]


def test_background_calibration_holds_values_and_loses_none() -> None:
    xs = shifted(12_000, 3_000, 1.0, seed=5)
    inline = feed_all(monitor(), xs)
    background = Calibrator(workers=1)
    m = monitor(calibrator=background)
    try:
        hits = feed_all(m, xs[:2_000])  # the reference completes; calibration starts in the background
        assert m.state == "calibrating"
        hits += _settle(m)
        # The rest arrives at once: the detection restarts the stream, whose next calibration
        # runs while the values after it wait.
        hits += feed_all(m, xs[2_000:], batch=10_000, base=2_000)
        hits += _settle(m)
    finally:
        background.close()
    assert m.state == "active" and m.skipped == 0
    assert len(inline) == 1 and hits == inline


def test_a_reference_no_detector_can_learn_from_leaves_the_stream_unmonitored() -> None:
    m = monitor(kind="binary", detector="ddm")
    assert feed_all(m, [False] * 5_000) == []
    assert m.state == "failed" and m.error is not None and "error rate" in m.error


def event(i: int, features: dict[str, Any], **kw: Any) -> InferenceEvent:
    return InferenceEvent(request_id=f"r{i}", model="m", version="1", features=features, **kw)


def test_key_drift_finds_features_by_kind_and_applies_bonferroni() -> None:
    rng = random.Random(1)
    drift = KeyDrift(KEY, DriftConfig(), Calibrator(), max_features=64)
    events = [
        event(i, {"x": rng.gauss(0, 1), "y": rng.gauss(0, 1), "c": rng.choice("abc"), "flag": None}, score=rng.random())
        for i in range(1_500)
    ]
    drift.update(events, list(range(1_500)), [None] * 1_500)
    kinds = {name: m.kind for name, m in drift.streams.items()}
    # `flag` is only ever null, so it has no kind yet; latency is absent, so no stream.
    assert kinds == {"score": "numeric", "feature:x": "numeric", "feature:y": "numeric", "feature:c": "categorical"}
    targets = {name: m.calibration.target_ert for name, m in drift.streams.items() if m.calibration}
    assert targets == {"score": TARGET, "feature:x": 3 * TARGET, "feature:y": 3 * TARGET, "feature:c": 3 * TARGET}
    plain = KeyDrift(KEY, DriftConfig(multiple_testing="none"), Calibrator(), max_features=64)
    plain.update(events, list(range(1_500)), [None] * 1_500)
    assert {m.calibration.target_ert for m in plain.streams.values() if m.calibration} == {TARGET}


def test_values_of_the_wrong_kind_are_skipped_not_fatal() -> None:
    drift = KeyDrift(KEY, DriftConfig(), Calibrator(), max_features=64)
    events = [event(i, {"x": "oops" if i % 10 == 3 else float(i % 7)}) for i in range(1_200)]
    drift.update(events, list(range(1_200)), [None] * 1_200)
    m = drift.streams["feature:x"]
    assert m.state == "active"  # 1,080 numbers: the 1,000-value reference is complete


def test_feature_cap_bounds_the_streams() -> None:
    drift = KeyDrift(KEY, DriftConfig(), Calibrator(), max_features=2)
    drift.update([event(0, {"a": 1.0, "b": 2.0, "c": 3.0})], [0], [None])
    assert set(drift.streams) == {"feature:a", "feature:b"}


def test_streams_setting_limits_what_is_watched() -> None:
    drift = KeyDrift(KEY, DriftConfig(streams=("latency",)), Calibrator(), max_features=64)
    drift.update([event(0, {"a": 1.0}, score=0.5, latency_ms=3.0)], [0], [None])
    assert set(drift.streams) == {"latency"}
    assert drift.update_errors([True], [0], [None]) == []


def test_reference_columns_prefill_the_reference() -> None:
    rng = random.Random(2)
    ref_events = [event(i, {"x": rng.gauss(0, 1)}) for i in range(1_000)]
    refs = reference_columns(ref_events, DriftConfig(), 64)
    assert len(refs["feature:x"]) == 1_000
    drift = KeyDrift(KEY, DriftConfig(), Calibrator(), max_features=64, references=refs)
    # With the reference given, the first live window is tested at once: a shifted one fires.
    live = [event(i, {"x": rng.gauss(2, 1)}) for i in range(500)]
    alerts = drift.update(live, list(range(500)), [None] * 500)
    assert [(a.stream, a.index) for a in alerts] == [("feature:x", 499)]
    assert alerts[0].key == KEY


def test_config_rejects_an_uncalibratable_or_wrong_kind_detector() -> None:
    with pytest.raises(Exception, match="error_detector='wasserstein' is not a calibratable binary detector"):
        from_mapping({"drift": {"error_detector": "wasserstein"}})
    with pytest.raises(Exception, match="kswin"):
        from_mapping({"drift": {"numeric_detector": "kswin"}})


def test_after_a_detection_the_stream_relearns_recalibrates_and_detects_again() -> None:
    xs = shifted(20_000, 8_000, 1.0, seed=7)
    xs[15_000:] = [x + 2.0 for x in xs[15_000:]]  # a second shift, on top of the first
    m = monitor()
    alerts = []
    for i in range(0, len(xs), 700):
        idx = list(range(i, min(i + 700, len(xs))))
        alerts += m.feed(xs[i : i + 700], idx, [None] * len(idx))
    assert [a.index for a in alerts] == [8_499, 15_499]
    # The new reference (values 8500..9499) was calibrated again: two calibrations so far.
    assert m.state == "active" and m.detections == 2
    assert all(a.score is not None and a.score > m.calibration.params["threshold"] for a in alerts)  # type: ignore[union-attr]


@pytest.mark.parametrize("detector", ["wasserstein", "ks", "page_hinkley"])
def test_batching_does_not_change_alerts_or_their_scores(detector: str) -> None:
    xs = shifted(16_000, 6_000, 1.5, seed=11)
    xs[11_000:] = [x - 3.0 for x in xs[11_000:]]

    def run(batch: int) -> list[tuple[int, float | None]]:
        m = monitor(detector=detector)
        out = []
        for i in range(0, len(xs), batch):
            idx = list(range(i, min(i + batch, len(xs))))
            out += [(a.index, a.score) for a in m.feed(xs[i : i + batch], idx, [None] * len(idx))]
        return out

    whole = run(len(xs))
    assert len(whole) >= 2
    assert run(333) == whole


class HeldCalibrator(Calibrator):
    """Calibrations finish only when the test says so: a slow background calibration."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[tuple[Any, Any]] = []

    def submit(self, fn: Any) -> Any:
        from concurrent.futures import Future

        future: Future[Any] = Future()
        self.jobs.append((fn, future))
        return future

    def finish(self) -> None:
        for fn, future in self.jobs:
            future.set_result(fn())
        self.jobs.clear()


def test_a_quiet_key_takes_its_finished_calibration_and_tests_what_it_held() -> None:
    calibrator = HeldCalibrator()
    drift = KeyDrift(KEY, DriftConfig(streams=("latency",)), calibrator, 10)
    xs = shifted(2_000, 1_000, 3.0, seed=9)  # a 3-sd jump right after the reference
    events = [InferenceEvent(request_id=str(i), model="m", latency_ms=x) for i, x in enumerate(xs)]
    assert drift.update(events, list(range(len(xs))), [None] * len(xs)) == []  # all held: calibrating
    assert drift.states()["calibrating"] == 1 and drift.poll() == []  # not finished yet
    calibrator.finish()
    # No new event for this key: poll() alone activates the stream and tests the held values.
    alerts = drift.poll()
    assert [(a.key, a.stream) for a in alerts] == [(KEY, "latency")]
    assert 1_000 <= alerts[0].index < 1_500
    assert drift.streams["latency"].state in ("active", "reference")
    assert drift.states()["calibrating"] == 0
