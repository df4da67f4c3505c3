"""A partition's drift streams: reference → calibration → detection, indices, batches, references.

Each test drives `daemon.monitors.drift.Drift` as `PartitionState` does (tests/unit/drift_harness.py):
decoded events become a columnar batch, every key a row. `old_semantics` there replays one stream
the way the per-stream monitors before the columnar core did: the banks must find the same
detections, at the same input indices, with the same scores, however the events are cut.
"""

from __future__ import annotations

import math
import random
from typing import Any

import msgspec
import numpy as np
import pytest

from daemon.config import DriftConfig, from_mapping
from daemon.ingest.batch import build
from daemon.ingest.events import InferenceEvent
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.monitors import drift as drift_module
from daemon.monitors.drift import Calibrator, DriftAlert, reference_values
from daemon.runtime.app import build_pipeline
from detectors.calibration import calibrate
from detectors.scan import ScanTest
from tests.unit.drift_harness import (
    BASE_TIME,
    KEY,
    CountingCalibrator,
    Feeder,
    HeldCalibrator,
    assert_same,
    cached_calibrate,
    cuts_feed,
    every,
    old_semantics,
    patch_calibrate,
    rows_of,
    same_tree,
)

TARGET = 1_000_000.0  # DriftConfig's default target_ert_events
SMALL = {"reference_events": 200, "window_events": 100, "target_ert_events": 100_000}


def shifted(n: int, change_at: int, shift: float, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(shift if i >= change_at else 0.0, 1.0) for i in range(n)]


def x_events(xs: list[Any], key: tuple[str, str, str] = KEY) -> list[InferenceEvent]:
    return [
        InferenceEvent(request_id=f"r{i}", model=key[0], version=key[1], variant=key[2], features={"x": x})
        for i, x in enumerate(xs)
    ]


def wasserstein(**kw: Any) -> DriftConfig:
    return DriftConfig(numeric_detector="wasserstein", streams=("features",), **kw)


def test_the_pipeline_drives_drift_as_these_tests_do() -> None:
    """The harness is the pipeline's path: records decoded, a partition's rows, offsets as indices
    and record times as timestamps give the same alerts and the same drift state."""
    rng = random.Random(12)
    events = [
        InferenceEvent(
            request_id=f"r{i}",
            model="m",
            version="1",
            score=rng.gauss(0.3 if i < 900 else 0.5, 0.1),
            features={"x": rng.gauss(0, 1), "c": rng.choice("abc" if i < 1_300 else "aac")},
        )
        for i in range(2_000)
    ]
    # Features tracked from their first event, as the harness does (no admission gate).
    config = from_mapping({"drift": SMALL, "limits": {"feature_admission_events": 1}})
    alerts: list[DriftAlert] = []
    pipeline = build_pipeline(config, alert_sink=alerts.extend)
    records = [
        RawRecord("inference-logs", 0, i, BASE_TIME + i, None, msgspec.json.encode(e)) for i, e in enumerate(events)
    ]
    for a in range(0, len(records), 500):
        pipeline.process(chunks_of(records[a : a + 500]))
    f = Feeder(config.drift, max_features=config.limits.max_features)
    expected = cuts_feed(f, events, every(500, 2_000))
    assert {a.stream for a in expected} == {"score", "feature:c"}
    assert rows_of(alerts) == rows_of(expected)
    drift = pipeline.partitions[0].drift
    assert drift is not None
    assert same_tree(drift.snapshot(), f.drift.snapshot()) == []


def test_a_shift_is_reported_at_the_input_index_that_completed_the_window() -> None:
    f = Feeder(wasserstein())
    alerts = cuts_feed(f, x_events(shifted(12_000, 8_000, 1.0)), every(700, 12_000), start=100)
    # Reference = values 0..999, windows of 500 after it; the change at 8000 starts a window,
    # which ends at value 8499, whose input index is 100 + 8499.
    assert [a.index for a in alerts] == [100 + 8_499]
    a = alerts[0]
    assert (a.timestamp, a.key, a.stream, a.detector, a.target_ert) == (
        BASE_TIME + 100 + 8_499,
        KEY,
        "feature:x",
        "wasserstein",
        TARGET,  # one feature: bonferroni's factor is 1
    )
    sid = f.sid("feature:x")
    st = f.drift.streams[sid]
    assert st.calibration is not None and a.score is not None
    assert a.score > st.calibration.params["threshold"]
    # After the detection the stream learnt values 8500..9499 and tested windows after them.
    assert f.drift.state(sid) == "active" and f.drift.detections[sid] == 1
    assert f.drift.detections_of(0) == {"feature:x": 1}


def test_no_alarm_on_a_stationary_stream() -> None:
    f = Feeder(wasserstein())
    assert cuts_feed(f, x_events(shifted(60_000, 60_000, 0.0, seed=3)), every(5_000, 60_000)) == []
    sid = f.sid("feature:x")
    # Every window was tested (the score is the last one's) and none fired.
    assert f.drift.state(sid) == "active" and f.drift.detections[sid] == 0
    assert 0 < f.drift.score[sid] < f.drift.streams[sid].calibration.params["threshold"]  # type: ignore[union-attr]


@pytest.mark.parametrize("detector", ["ks", "wasserstein", "jensen_shannon", "error_rate"])
def test_batch_cuts_and_interleaved_keys_do_not_change_alerts_or_scores(
    detector: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four keys interleaved at random, each shifting at its own point, fed in polls of 7, 500 and
    2000 events and in one batch: the same alerts (index, time, key, score) and final scores, and
    the ones the old per-stream monitor found for each key's values."""
    settings = DriftConfig(
        **SMALL,
        streams=("errors",) if detector == "error_rate" else ("features",),
        **({"numeric_detector": detector} if detector in ("ks", "wasserstein") else {}),
        **({"categorical_detector": detector} if detector == "jensen_shannon" else {}),
    )
    keys = [("m", str(v), "default") for v in range(4)]
    rng = random.Random(11)
    per_key: dict[tuple[str, str, str], list[Any]] = {}
    for j, key in enumerate(keys):
        at = 900 + 400 * j
        if detector == "jensen_shannon":
            per_key[key] = [rng.choice("abcd" if i < at else "aabd") for i in range(3_000)]
        elif detector == "error_rate":
            per_key[key] = [rng.random() < (0.05 if i < at else 0.25) for i in range(3_000)]
        else:
            per_key[key] = [rng.gauss(1.0 if i >= at else 0.0, 1.0) for i in range(3_000)]
    owners = [k for k in keys for _ in range(3_000)]
    rng.shuffle(owners)
    taken = dict.fromkeys(keys, 0)
    seq = []
    for k in owners:
        seq.append((k, per_key[k][taken[k]]))
        taken[k] += 1
    ks_rows: list[int] = []
    real_ks = drift_module.ks_asymptotic

    def spy(refs: Any, windows: Any) -> Any:
        ks_rows.append(len(refs))
        return real_ks(refs, windows)

    monkeypatch.setattr(drift_module, "ks_asymptotic", spy)
    monkeypatch.setattr(drift_module, "KS_BLOCK_ROWS", 3)  # windows tested in several blocks
    patch_calibrate(monkeypatch)  # the four runs calibrate the same references

    def run(cut: int) -> tuple[list[Any], list[float], list[int]]:
        f = Feeder(settings)
        for k in keys:
            f.row(k)
        alerts: list[DriftAlert] = []
        for a in range(0, len(seq), cut):
            part = seq[a : a + cut]
            if detector == "error_rate":
                alerts += f.errors([k for k, _ in part], [v for _, v in part], a)
            else:
                events = [
                    InferenceEvent(request_id=f"r{a + i}", model=k[0], version=k[1], features={"v": v})
                    for i, (k, v) in enumerate(part)
                ]
                alerts += f.events(events, a)
        d = f.drift
        n = len(d.streams)
        assert n == 4
        return sorted(rows_of(alerts)), d.score[:n].tolist(), d.detections[:n].tolist()

    whole = run(len(seq))
    assert len(whole[0]) >= 4  # every key's shift was found
    assert all(a[5] is not None for a in whole[0]) and not np.isnan(whole[1]).any()
    for cut in (7, 500, 2_000):
        got = run(cut)
        assert got[0] == whole[0], cut
        assert np.array_equal(got[1], whole[1]), cut
        assert got[2] == whole[2], cut
    # The old semantics, key by key, on the positions of that key's values in the sequence.
    expected = []
    for k in keys:
        positions = [i for i, (kk, _) in enumerate(seq) if kk == k]
        for p, score in old_semantics(detector, per_key[k], 200, 100, 100_000, cached_calibrate):
            expected.append((positions[p], k, score))
    assert sorted(expected) == [(a[0], a[2], a[5]) for a in whole[0]]
    if detector == "ks":
        # 200 x 100 is past the exact law: windows go through ks_asymptotic, many in one call.
        assert ks_rows and max(ks_rows) > 1


@pytest.mark.parametrize(("stream", "detector"), [("latency", "adwin"), ("errors", "ddm")])
def test_river_detectors_take_the_values_one_by_one(
    stream: str, detector: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_calibrate(monkeypatch)
    settings = DriftConfig(**SMALL, streams=(stream,), numeric_detector="adwin", error_detector="ddm")
    rng = random.Random(4)
    if stream == "latency":
        values: list[Any] = [abs(rng.gauss(50 if i < 1_500 else 70, 5)) for i in range(3_000)]
    else:
        values = [rng.random() < (0.05 if i < 1_500 else 0.3) for i in range(3_000)]

    def run(cut: int) -> list[Any]:
        f = Feeder(settings)
        alerts: list[DriftAlert] = []
        for a in range(0, len(values), cut):
            part = values[a : a + cut]
            if stream == "errors":
                alerts += f.errors([KEY] * len(part), part, a)
            else:
                events = [
                    InferenceEvent(request_id=f"r{a + i}", model="m", version="1", latency_ms=v)
                    for i, v in enumerate(part)
                ]
                alerts += f.events(events, a)
        assert f.drift.streams[0].detector == detector
        return rows_of(alerts)

    whole = run(len(values))
    expected = old_semantics(detector, values, 200, 100, 100_000, cached_calibrate)
    assert expected and [(a[0], a[5]) for a in whole] == expected
    assert all(a[3] == stream and a[4] == detector and a[5] is None for a in whole)  # River shows no score
    # A detection at any value, not only where a window of 100 would end.
    assert any((i - 200) % 100 != 99 for i, _ in expected)
    assert run(7) == whole and run(500) == whole


def _settle(f: Feeder) -> list[int]:
    return [a.index for a in f.settle()]


def test_background_calibration_holds_values_and_loses_none() -> None:
    xs = shifted(12_000, 3_000, 1.0, seed=5)
    inline = [a.index for a in cuts_feed(Feeder(wasserstein()), x_events(xs), every(700, 12_000))]
    background = Calibrator(workers=1)
    f = Feeder(wasserstein(), calibrator=background)
    try:
        events = x_events(xs)
        # The reference completes; calibration starts in the background, later values wait.
        hits = [a.index for a in cuts_feed(f, events[:2_000], every(700, 2_000))]
        hits += _settle(f)
        # The rest arrives at once: the detection restarts the stream, whose next calibration
        # runs while the values after it wait.
        hits += [a.index for a in f.events(events[2_000:], 2_000)]
        hits += _settle(f)
    finally:
        background.close()
    sid = f.sid("feature:x")
    assert f.drift.state(sid) == "active" and f.drift.streams[sid].skipped == 0
    assert len(inline) == 1 and hits == inline


def test_a_quiet_key_takes_its_finished_calibration_and_tests_what_it_held() -> None:
    calibrator = HeldCalibrator()
    f = Feeder(DriftConfig(streams=("latency",)), calibrator=calibrator)
    xs = shifted(2_000, 1_000, 3.0, seed=9)  # a 3-sd jump right after the reference
    events = [InferenceEvent(request_id=str(i), model="m", version="1", latency_ms=50 + x) for i, x in enumerate(xs)]
    assert f.events(events, 0) == []  # all held: calibrating
    sid = f.sid("latency")
    assert f.drift.states() == {"reference": 0, "calibrating": 1, "active": 0, "failed": 0, "drifted": 0}
    assert sum(len(p[0]) for p in f.drift.streams[sid].pending) == 1_000
    assert f.drift.poll() == []  # not finished yet
    calibrator.finish()
    # No new event for this key: poll() alone activates the stream and tests the held values.
    alerts = f.drift.poll()
    # The scan's first look after the reference (values 1,000 to 1,049) fires.
    assert [(a.key, a.stream, a.index) for a in alerts] == [(KEY, "latency", 1_049)]
    # The 950 held values after the detection are the start of the next reference.
    assert f.drift.state(sid) == "reference" and f.drift.fill[sid] == 950
    assert f.drift.states()["calibrating"] == 0 and f.drift.streams[sid].pending == []


def test_held_values_beyond_the_cap_are_skipped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drift_module, "MAX_PENDING", 250)
    f = Feeder(DriftConfig(reference_events=50, window_events=10, streams=("latency",)), calibrator=HeldCalibrator())
    events = [InferenceEvent(request_id=str(i), model="m", version="1", latency_ms=float(i % 13)) for i in range(400)]
    cuts_feed(f, events, every(60, 400))
    st = f.drift.streams[f.sid("latency")]
    assert st.skipped == 100
    assert np.concatenate([p[1] for p in st.pending]).tolist() == list(range(50, 300))  # the first ones


def test_a_reference_no_detector_can_learn_from_leaves_the_stream_failed() -> None:
    f = Feeder(DriftConfig(**SMALL, streams=("errors",), error_detector="ddm"))
    assert f.errors([KEY] * 5_000, [False] * 5_000, 0) == []
    sid = f.sid("errors")
    st = f.drift.streams[sid]
    assert f.drift.state(sid) == "failed" and st.error is not None and "error rate" in st.error
    assert f.drift.states(0) == {"reference": 0, "calibrating": 0, "active": 0, "failed": 1, "drifted": 0}
    assert f.errors([KEY] * 500, [True] * 500, 5_000) == [] and f.drift.state(sid) == "failed"


def event(i: int, features: dict[str, Any], **kw: Any) -> InferenceEvent:
    return InferenceEvent(request_id=f"r{i}", model="m", version="1", features=features, **kw)


def test_streams_get_their_kind_from_their_first_value_and_bonferroni_targets() -> None:
    rng = random.Random(1)
    events = [
        event(i, {"x": rng.gauss(0, 1), "y": rng.gauss(0, 1), "c": rng.choice("abc"), "flag": None}, score=rng.random())
        for i in range(1_500)
    ]
    f = Feeder(DriftConfig(), max_features=64)
    f.events(events, 0)
    d = f.drift
    # `flag` is only ever null, so it has no stream yet; latency is absent, so no stream.
    assert {s.name: s.kind for s in d.streams} == {
        "score": "numeric",
        "feature:x": "numeric",
        "feature:y": "numeric",
        "feature:c": "categorical",
    }
    assert {s.name: s.detector for s in d.streams}["feature:c"] == "scan_categorical"
    targets = {s.name: s.calibration.target_ert for s in d.streams if s.calibration}
    assert targets == {"score": TARGET, "feature:x": 3 * TARGET, "feature:y": 3 * TARGET, "feature:c": 3 * TARGET}
    assert d.states(0) == {"reference": 0, "calibrating": 0, "active": 4, "failed": 0, "drifted": 0}
    plain = Feeder(DriftConfig(multiple_testing="none"), max_features=64)
    plain.events(events, 0)
    assert {s.calibration.target_ert for s in plain.drift.streams if s.calibration} == {TARGET}


def test_values_of_the_wrong_type_are_skipped_not_fatal() -> None:
    """A string or a bool in a numeric feature, a number in a categorical one (among its strings):
    skipped, as if absent, however the polls cut them (a poll of 7 can hold only strings)."""
    settings = DriftConfig(**SMALL, streams=("features",))
    xs = shifted(3_000, 1_500, 2.0, seed=6)
    rng = random.Random(7)
    cs = [rng.choice("abc") for _ in range(3_000)]

    def wrong_x(i: int) -> Any:
        if 300 <= i < 320 or (i > 10 and i % 10 == 3):
            return "oops"
        return True if i % 17 == 16 else None

    def events(with_wrong: bool) -> list[InferenceEvent]:
        out = []
        for i in range(3_000):
            feats: dict[str, Any] = {}
            bad = wrong_x(i)
            if bad is None:
                feats["x"] = xs[i]
            elif with_wrong:
                feats["x"] = bad
            if i % 10 != 5:
                feats["c"] = cs[i]
            elif with_wrong:
                feats["c"] = 7.5
            out.append(event(i, feats))
        return out

    numbers = [xs[i] for i in range(3_000) if wrong_x(i) is None]
    for cut in (7, 500, 3_000):
        dirty, clean = Feeder(settings), Feeder(settings)
        alerts = cuts_feed(dirty, events(True), every(cut, 3_000))
        assert rows_of(alerts) == rows_of(cuts_feed(clean, events(False), every(cut, 3_000)))
        assert {a.stream for a in alerts} == {"feature:x"}, cut
        d = dirty.drift
        assert {s.name: s.kind for s in d.streams} == {"feature:x": "numeric", "feature:c": "categorical"}
        assert_same(d, clean.drift)
    # The reference is the first 200 numbers, in order (its calibration resamples them).
    held = Feeder(settings, calibrator=HeldCalibrator())
    cuts_feed(held, events(True)[:260], every(7, 260))
    assert held.drift.state(held.sid("feature:x")) == "calibrating"
    assert held.drift.reference(held.sid("feature:x")).tolist() == numbers[:200]


def test_a_poll_whose_categorical_feature_holds_only_numbers_skips_them() -> None:
    settings = DriftConfig(**SMALL, streams=("features",))
    rng = random.Random(8)
    xs = [rng.gauss(0, 1) for _ in range(180)]
    cs = [rng.choice("abc") for _ in range(150)]
    first = [event(i, {"x": xs[i], "c": cs[i]}) for i in range(150)]
    dirty, clean = Feeder(settings), Feeder(settings)
    dirty.events(first, 0)
    clean.events(first, 0)
    # A poll in which `c` (categorical since its first value) carries only numbers.
    dirty.events([event(i, {"x": xs[i], "c": 1.0}) for i in range(150, 180)], 150)
    clean.events([event(i, {"x": xs[i]}) for i in range(150, 180)], 150)
    assert same_tree(dirty.drift.snapshot(), clean.drift.snapshot()) == []


def test_a_categorical_only_partition_survives_a_number() -> None:
    f = Feeder(DriftConfig(**SMALL, streams=("features",)))
    f.events([event(i, {"c": "ab"[i % 2]}) for i in range(20)], 0)
    f.events([event(20, {"c": 3.0})], 20)
    assert f.drift.fill[f.sid("feature:c")] == 20


def test_feature_cap_bounds_the_streams() -> None:
    f = Feeder(DriftConfig(**SMALL), max_features=2)
    f.events([event(0, {"a": 1.0, "b": 2.0, "c": 3.0})], 0)
    f.events([InferenceEvent(request_id="o", model="other", features={"c": 1.0, "d": 2.0})], 1)
    assert [(s.row, s.name) for s in f.drift.streams] == [
        (0, "feature:a"),
        (0, "feature:b"),
        (1, "feature:c"),  # the cap is per key
        (1, "feature:d"),
    ]
    # The key's capped features never get a stream, however many of their values come.
    f.events([event(i, {"c": float(i), "e": 1.0}) for i in range(2, 400)], 2)
    assert [s.name for s in f.drift.streams if s.row == 0] == ["feature:a", "feature:b"]


def test_streams_setting_limits_what_is_watched() -> None:
    f = Feeder(DriftConfig(streams=("latency",)))
    f.events([event(0, {"a": 1.0}, score=0.5, latency_ms=3.0)], 0)
    assert [s.name for s in f.drift.streams] == ["latency"]
    assert f.errors([KEY], [True], 1) == []
    assert [s.name for s in f.drift.streams] == ["latency"]


def test_reference_values_prefill_the_reference() -> None:
    rng = random.Random(2)
    ref_events = [event(i, {"x": rng.gauss(0, 1), "c": rng.choice("abc")}) for i in range(1_000)]
    settings = DriftConfig(streams=("features",))
    batch = build(ref_events, [0] * 1_000, list(range(1_000)), [None] * 1_000)
    refs = reference_values(batch, settings, 64)
    assert set(refs) == {KEY}
    assert len(refs[KEY]["feature:x"]) == 1_000 and all(type(v) is float for v in refs[KEY]["feature:x"])
    assert refs[KEY]["feature:c"] == [e.features["c"] for e in ref_events]  # type: ignore[index]
    f = Feeder(settings, references=refs)
    # With the reference given, the first live look is tested at once: a shifted one fires.
    live = [event(i, {"x": rng.gauss(2, 1), "c": "c"}) for i in range(500)]
    alerts = f.events(live, 0)
    assert sorted((a.stream, a.index, a.key, a.target_ert) for a in alerts) == [
        ("feature:c", 49, KEY, 2 * TARGET),
        ("feature:x", 49, KEY, 2 * TARGET),
    ]
    # A key the reference file does not have collects its own.
    other = f.events([InferenceEvent(request_id="o", model="other", features={"x": 0.5})], 500)
    assert other == [] and f.drift.state(f.sid("feature:x", ("other", "unknown", "default"))) == "reference"


def test_config_rejects_an_uncalibratable_or_wrong_kind_detector() -> None:
    with pytest.raises(Exception, match="error_detector='wasserstein' is not a calibratable binary detector"):
        from_mapping({"drift": {"error_detector": "wasserstein"}})
    with pytest.raises(Exception, match="kswin"):
        from_mapping({"drift": {"numeric_detector": "kswin"}})


def test_after_a_detection_the_stream_relearns_recalibrates_and_detects_again() -> None:
    xs = shifted(20_000, 8_000, 1.0, seed=7)
    xs[15_000:] = [x + 2.0 for x in xs[15_000:]]  # a second shift, on top of the first
    calibrator = CountingCalibrator()
    f = Feeder(wasserstein(), calibrator=calibrator)
    alerts = cuts_feed(f, x_events(xs), every(700, 20_000))
    assert [a.index for a in alerts] == [8_499, 15_499]
    sid = f.sid("feature:x")
    # References 0..999, 8500..9499 and 15500..16499: three calibrations.
    assert calibrator.submitted == 3
    assert f.drift.state(sid) == "active" and f.drift.detections[sid] == 2
    cal = f.drift.streams[sid].calibration
    assert (
        cal is not None
        and cal.params["threshold"]
        == calibrate(
            "wasserstein", xs[15_500:16_500], TARGET, params={"reference_size": 1_000, "window_size": 500}
        ).params["threshold"]
    )
    assert all(a.score is not None and a.score > 0.2 for a in alerts)


def test_folded_levels_share_the_other_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drift_module, "MAX_LEVELS", 3)  # OTHER and two levels
    f = Feeder(DriftConfig(**SMALL, streams=("features",)))
    f.events([event(i, {"c": "abcd"[i % 4]}) for i in range(100)], 0)
    d = f.drift
    assert d.level_names["c"] == ["__other__", "a", "b"]
    assert d.reference(f.sid("feature:c"))[:4] == ["a", "b", "__other__", "__other__"]
    assert d.overflow.counts.get("feature_level", 0) > 0


def test_folded_levels_are_counted_per_value_whatever_the_cuts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drift_module, "MAX_LEVELS", 3)
    events = [event(i, {"c": "abcd"[i % 4]}) for i in range(100)]
    counts = []
    for cut in (7, 100):
        f = Feeder(DriftConfig(**SMALL, streams=("features",)))
        cuts_feed(f, events, every(cut, 100))
        counts.append(f.overflow.counts.get("feature_level", 0))
    assert counts == [50, 50]  # "c" and "d", 25 values each


def _blip_then_change(seed: int = 5) -> list[float]:
    """2,000 quiet values, a blip of 50 values at +5 (a detection), 500 quiet values, then a lasting
    +1.5 sd change: the reference learned after the blip would straddle the change."""
    rng = np.random.default_rng(seed)
    return np.r_[
        rng.standard_normal(2_000),
        rng.standard_normal(50) + 5,
        rng.standard_normal(500),
        rng.standard_normal(3_000) + 1.5,
    ].tolist()


def test_a_change_inside_a_new_reference_is_reported_and_never_learned() -> None:
    f = Feeder(DriftConfig(streams=("features",)))
    alerts = f.events(x_events(_blip_then_change()), 0)
    assert [a.index for a in alerts][:1] == [2_049]  # the blip
    (split,) = alerts[1:]
    # The reference learned after the blip held the change 500 values in: reported, and only the
    # values after it are kept to learn from (so nothing more fires on the new regime).
    assert split.details is not None and split.details["test"] == "reference_mean"
    assert abs(split.details["reference_offset"] - 500) <= 20
    assert split.details["statistic"] > split.details["threshold"]
    sid = f.sid("feature:x")
    assert f.drift.state(sid) == "active"
    ref = f.drift.reference(sid)
    assert abs(float(np.mean(ref)) - 1.5) < 0.15  # learned from the new regime only


def test_a_stream_is_drifted_since_the_change_until_it_has_learned_again() -> None:
    f = Feeder(DriftConfig(streams=("features",)))
    xs = shifted(4_000, 2_000, 2.0, seed=3)
    (alert,) = f.events(x_events(xs[:2_600]), 0)
    assert alert.details is not None and alert.details["change_index"] == 2_000
    row = f.keys.index(KEY)
    assert f.drift.drifted_since(row) == {"feature:x": {"index": 2_000, "timestamp": BASE_TIME + 2_000}}
    # A thousand values after the detection are the new reference: no longer drifted.
    assert f.events(x_events(xs[2_600:]), 2_600) == []
    assert f.drift.drifted_since(row) == {}


def test_a_pinned_reference_holds_the_stream_until_it_is_reset() -> None:
    f = Feeder(DriftConfig(streams=("features",), pin_references=True))
    xs = shifted(6_000, 2_000, 2.0, seed=4)
    alerts = f.events(x_events(xs[:4_000]), 0)
    assert len(alerts) == 1  # then holds: no new reference, no more alerts
    sid = f.sid("feature:x")
    assert f.drift.state(sid) == "drifted" and f.drift.states()["drifted"] == 1
    assert isinstance(f.drift.streams[sid].tester, ScanTest)
    assert f.drift.streams[sid].tester.reference_events == 1_000  # a pinned reference never grew
    row = f.keys.index(KEY)
    assert f.drift.reference_action(row, "feature:x", "reset") == ["feature:x"]
    assert f.drift.state(sid) == "reference"
    assert f.events(x_events(xs[4_000:]), 4_000) == []
    assert f.drift.state(sid) == "active" and f.drift.drifted_since(row) == {}
    assert f.drift.reference_action(row, "nope", "pin") == []


def test_llm_timings_and_lengths_are_streams_of_their_own() -> None:
    # An LLM's TTFT doubles at request 3,000 (the default config: every stream watched); its
    # prompt and output lengths are streams too, and a classic model's key has none of them.
    rng = random.Random(4)
    events = [
        InferenceEvent(
            request_id=f"r{i}",
            model="llm",
            ttft_ms=rng.lognormvariate(math.log(200.0 if i < 3_000 else 400.0), 0.5),
            tpot_ms=rng.lognormvariate(math.log(30.0), 0.2),
            tokens_in=rng.randint(50, 400),
            tokens_out=rng.randint(20, 300),
        )
        for i in range(4_000)
    ]
    f = Feeder(DriftConfig())
    alerts = cuts_feed(f, [*events, *x_events([0.0, 1.0])], every(700, 4_002))
    llm = ("llm", "unknown", "default")
    names = {"ttft", "tpot", "prompt_tokens", "output_tokens"}
    assert {s.name for s in f.drift.streams if s.row == f.keys.index(llm)} == names
    assert {s.name for s in f.drift.streams if s.row == f.keys.index(KEY)} == {"feature:x"}
    (ttft,) = [a for a in alerts if a.stream == "ttft"]
    assert 3_000 <= ttft.index < 3_000 + 1_000  # the target: within 1,000 requests
    assert ttft.details["window_mean"] > 1.5 * ttft.details["reference_mean"]
    assert [a.stream for a in alerts] == ["ttft"]


def test_the_mix_of_finish_reasons_is_a_categorical_stream() -> None:
    # An LLM stops on its length cap 5% of the time, then 25% from request 3,000 (answers cut
    # short): the finish_reason stream, categorical, detects it; the level names reach the alert.
    rng = random.Random(6)
    events = [
        InferenceEvent(
            request_id=f"r{i}",
            model="llm",
            finish_reason="length" if rng.random() < (0.05 if i < 3_000 else 0.25) else "stop",
        )
        for i in range(4_000)
    ]
    f = Feeder(DriftConfig())
    alerts = cuts_feed(f, [*events, *x_events([0.0, 1.0])], every(700, 4_002))
    llm = ("llm", "unknown", "default")
    (stream,) = [s for s in f.drift.streams if s.row == f.keys.index(llm)]
    assert (stream.name, stream.kind) == ("finish_reason", "categorical")
    (alert,) = [a for a in alerts if a.stream == "finish_reason"]
    assert 3_000 <= alert.index < 3_000 + 1_000
    assert [a.stream for a in alerts] == ["finish_reason"]
    # Not watched when the config leaves it out.
    quiet = Feeder(DriftConfig(streams=("features",)))
    assert cuts_feed(quiet, events, every(700, 4_000)) == [] and not quiet.drift.streams
