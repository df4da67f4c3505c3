"""Drift snapshots: a restore continues exactly like an uninterrupted run (crash safety's groundwork).

A partition's `Drift.snapshot()` goes through the checkpoint codec (`round_trip`) and is restored
into a fresh `Drift` whose keys were added first, as `PartitionState.restore` does.
"""

from __future__ import annotations

import math
import random
import time
from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from daemon.config import DriftConfig
from daemon.ingest.events import InferenceEvent
from daemon.monitors.drift import COLLECT, HOLD, OFF, SEQUENTIAL, WINDOW, Calibrator, DriftAlert
from detectors.scan import LOOK
from tests.unit.drift_harness import (
    KEY,
    Feeder,
    HeldCalibrator,
    assert_same,
    patch_calibrate,
    round_trip,
    rows_of,
    same_tree,
)

N = 3_000
BATCH = 97
SETTINGS = DriftConfig(reference_events=200, window_events=100, target_ert_events=100_000)
WINDOW_EVENTS = SETTINGS.window_events
STREAMS = ["score", "latency", "feature:x", "feature:c", "feature:k", "feature:flag"]


def make_events(n: int = N, seed: int = 0) -> list[InferenceEvent]:
    """Score and `x` shift at 1200, the categories at 1800, latency at 2400; `k` is an int feature,
    `flag` a bool one (categorical); `x` is null now and then (no value: skipped)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x: float | None = rng.gauss(1.5 if i >= 1_200 else 0.0, 1.0)
        if i % 131 == 7:
            x = None
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


def new(calibrator: Calibrator | None = None, settings: DriftConfig = SETTINGS) -> Feeder:
    return Feeder(settings, calibrator, max_features=8)


def feed(
    f: Feeder, events: list[InferenceEvent], start: int, stop: int, errors: list[bool] | None, cuts: list[int]
) -> list[DriftAlert]:
    """Feed events[start:stop] in batches ending at `cuts`, each followed by its errors if any."""
    alerts: list[DriftAlert] = []
    edges = [start, *(c for c in cuts if start < c < stop), stop]
    for a, b in pairwise(edges):
        alerts += f.events(events[a:b], a)
        if errors is not None:
            alerts += f.errors([KEY] * (b - a), errors[a:b], a)
    return alerts


CUTS = list(range(0, N, BATCH))


def check_split(split: int, errors: list[bool] | None = None) -> tuple[Feeder, dict[str, Any]]:
    """Run the scenario whole, and again snapshotted at `split` and restored into a fresh drift:
    the same alerts, and the same state at the end."""
    events = make_events()
    cuts = sorted({*CUTS, split})
    whole = new()
    expected = feed(whole, events, 0, N, errors, cuts)
    first = new()
    before = feed(first, events, 0, split, errors, cuts)
    state = round_trip(first.drift.snapshot())
    second = new()
    second.restore(state, first.keys)
    # Restore then snapshot is the identity (ages within the tolerance: they are ages, not times).
    assert same_tree(second.drift.snapshot(), state) == []
    assert (second.drift.newest_detection is None) == (first.drift.newest_detection is None)
    after = feed(second, events, split, N, errors, cuts)
    assert rows_of(before + after) == rows_of(expected)
    assert_same(whole.drift, second.drift)
    return whole, state


def stream_states(f: Feeder, state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each stream's part of a snapshot, by name, with its entries of the arrays."""
    out = {}
    for sid, st in enumerate(state["streams"]):
        entry = {"tester": None, "pending": None, "skipped": 0, "error": None, **st, **state["extra"].get(sid, {})}
        for name in ("phase", "fill", "detections", "score", "p_value", "last_detection_age", "bank_row"):
            entry[name] = state[name][sid].item()
        out[st["name"]] = entry
    return out


def test_the_scenario_has_detections_on_every_kind_of_stream() -> None:
    f = new()
    alerts = feed(f, make_events(), 0, N, make_errors(), CUTS)
    assert {a.stream for a in alerts} >= {"score", "latency", "feature:x", "feature:c", "errors"}
    assert {s.name: s.kind for s in f.drift.streams} == {
        "score": "numeric",
        "latency": "numeric",
        "feature:x": "numeric",
        "feature:c": "categorical",
        "feature:k": "numeric",
        "feature:flag": "categorical",
        "errors": "binary",
    }


@pytest.mark.parametrize("split", [100, 200, 700, 1_000])
def test_restore_continues_like_an_uninterrupted_run(split: int) -> None:
    whole, state = check_split(split)
    streams = stream_states(whole, state)
    assert list(streams) == STREAMS
    if split < 200:
        assert {s["phase"] for s in streams.values()} == {COLLECT}
        assert all(0 < s["fill"] < 200 for s in streams.values())
        assert all(s["calibration"] is None and s["tester"] is None for s in streams.values())
    elif split == 200:
        # Every stream but `x` has its 200 values: `x` was null twice (events 7 and 138).
        assert {name: (s["phase"], s["fill"]) for name, s in streams.items()} == {
            **{name: (WINDOW, 0) for name in STREAMS},
            "feature:x": (COLLECT, 198),
        }
    else:
        assert {s["phase"] for s in streams.values()} == {WINDOW}
        # Active window tests keep no state of their own but their statistic (the score array) and,
        # for error rates, the windows absorbed into the reference.
        assert all(s["calibration"] is not None for s in streams.values())
        assert all(s["tester"] is not None for name, s in streams.items() if name == "errors")
    if split == 100:
        # Numbers (ints too) as floats in the numeric bank; bools and strings as levels.
        k = streams["feature:k"]
        ints = [e.features["k"] for e in make_events(100)]  # type: ignore[index]
        assert state["numeric_references"][k["bank_row"], :100].tolist() == [float(v) for v in ints]
        assert set(state["levels"]["flag"]) == {"__other__", "True", "False"}
        assert set(state["levels"]["c"]) == {"__other__", "a", "b", "c", "d"}
        assert streams["feature:x"]["fill"] == 99  # event 7's x is null: no value


@pytest.mark.parametrize("split", [150, 1_300, 1_600, 2_450])
def test_restore_with_an_errors_stream(split: int) -> None:
    whole, state = check_split(split, make_errors())
    sid = whole.sid("errors")
    assert whole.drift.detections[sid] >= 1
    errors = stream_states(whole, state)["errors"]
    assert errors["kind"] == "binary" and errors["detector"] == "error_rate"
    row = np.r_[state["binary_references"][errors["bank_row"]], state["binary_windows"][errors["bank_row"]]]
    assert set(row.tolist()) <= {0.0, 1.0}  # errors as 0/1 in a bank of their own
    assert state["numeric_windows"].shape[1] == LOOK  # the scans' rows are narrow: a look
    restored = new()
    restored.restore(state, [KEY])
    assert restored.drift.reference(sid).dtype == np.bool_  # calibrated on as bools
    # 1600: just after the detection at 1599, re-learning.
    assert errors["phase"] == {150: COLLECT, 1_300: WINDOW, 1_600: COLLECT, 2_450: WINDOW}[split]
    if errors["phase"] == WINDOW:
        assert "absorbed" in errors["tester"]  # the expanding reference travels with the arrays
    # A checkpoint from before the errors streams had a bank of their own (their rows in the
    # numeric bank, every window as wide as drift.window_events) restores to the same state.
    before = old_layout(state)
    assert "binary_windows" not in before and before["numeric_windows"].shape[1] == WINDOW_EVENTS
    again = new()
    again.restore(before, [KEY])
    assert same_tree(again.drift.snapshot(), state) == []


def old_layout(state: dict[str, Any]) -> dict[str, Any]:
    """A drift snapshot as it was kept before: errors rows after the numeric ones, windows padded."""
    numeric = len(state["numeric_windows"])
    binary = np.array([st["kind"] == "binary" for st in state["streams"]])
    bank_row = state["bank_row"].copy()
    bank_row[binary] += numeric
    padded = np.zeros((numeric, WINDOW_EVENTS))
    padded[:, : state["numeric_windows"].shape[1]] = state["numeric_windows"]
    padded = np.r_[padded, state["binary_windows"]]
    out = {k: v for k, v in state.items() if not k.startswith("binary_")}
    return {
        **out,
        "bank_row": bank_row,
        "numeric_references": np.r_[state["numeric_references"], state["binary_references"]],
        "numeric_windows": padded,
    }


def test_restore_just_after_a_detection_while_the_reference_is_relearnt() -> None:
    whole = new()
    alerts = feed(whole, make_events(), 0, N, None, CUTS)
    first = min(a.index for a in alerts if a.stream == "feature:x")
    _, state = check_split(first + 50)
    x = stream_states(whole, state)["feature:x"]
    # Re-learning: the old calibration and the score that fired are kept, the detector is gone.
    assert x["phase"] == COLLECT and x["detections"] == 1 and x["tester"] is None
    assert x["calibration"] is not None and math.isfinite(x["score"]) and math.isfinite(x["last_detection_age"])
    assert 0 < x["fill"] <= 50
    # A checkpoint restored two minutes later, in another process: the detections are that much older.
    sid = whole.sid("feature:x")
    ages = state["last_detection_age"] = state["last_detection_age"].copy()
    detected = np.flatnonzero(~np.isnan(ages))
    assert sid in detected.tolist()
    ages[detected] = 100.0
    ages[sid] = 120.0
    later = new()
    later.restore(state, [KEY])
    d = later.drift
    assert 119.0 < time.monotonic() - d.last_detection[sid] < 125.0
    assert d.newest_detection is not None and 99.0 < time.monotonic() - d.newest_detection < 105.0
    assert d.state(sid) == "reference" and d.score[sid] == x["score"]


def test_a_stream_snapshotted_while_calibrating_calibrates_again_on_restore() -> None:
    events, split = make_events(), 1_400
    whole = new()
    expected = feed(whole, events, 0, N, None, CUTS)
    stuck = HeldCalibrator()  # its calibrations never finish: a crash mid-calibration
    first = new(stuck)
    assert feed(first, events, 0, split, None, CUTS) == []  # everything after the reference is held
    assert stuck.submitted == 6 and first.drift.states()["calibrating"] == 6
    state = round_trip(first.drift.snapshot())
    streams = stream_states(first, state)
    for name, s in streams.items():
        assert s["phase"] == HOLD and s["fill"] == 200
        assert s["calibration"] is None and s["tester"] is None
        assert s["target"] == (400_000.0 if name.startswith("feature:") else 100_000.0)  # 4 features
        values, index, times = s["pending"]
        assert len(values) == len(index) == len(times) > 1_000
        assert index.tolist() == sorted(index.tolist()) and index[0] >= 200 and index[-1] == split - 1
    background = Calibrator(workers=1)
    try:
        second = new(background)
        second.restore(state, first.keys)
        assert second.drift.states()["calibrating"] == 6
        got = second.settle()  # the held values are tested now, as the finished calibration would have
        assert second.drift.states()["calibrating"] == 0
        # Later calibrations (after detections) run in the background too.
        got += feed(second, events, split, N, None, CUTS) + second.settle()
    finally:
        background.close()
    assert got and sorted(rows_of(got)) == sorted(rows_of(expected))
    assert_same(whole.drift, second.drift)


def test_a_calibration_target_is_the_one_submitted_not_a_later_one() -> None:
    """A feature registered while another calibrates raises the bonferroni target of later
    calibrations only; the restored calibration keeps the target it was submitted with."""
    rng = random.Random(3)
    first = new(HeldCalibrator())
    early = [
        InferenceEvent(request_id=f"r{i}", model="m", version="1", features={"x": rng.gauss(0, 1)}) for i in range(250)
    ]
    first.events(early, 0)
    first.events([InferenceEvent(request_id="z", model="m", version="1", features={"x": 0.0, "y": 1.0})], 250)
    state = round_trip(first.drift.snapshot())
    x = stream_states(first, state)["feature:x"]
    assert x["phase"] == HOLD and x["target"] == 100_000.0  # one feature when it was submitted
    second = new()
    second.restore(state, first.keys)
    second.drift.poll()
    cal = second.drift.streams[second.sid("feature:x")].calibration
    assert cal is not None and cal.target_ert == 100_000.0
    # `y`'s reference completes after the restore: two features by then.
    later = [
        InferenceEvent(request_id=f"y{i}", model="m", version="1", features={"y": rng.gauss(0, 1)}) for i in range(200)
    ]
    second.events(later, 251)
    cal = second.drift.streams[second.sid("feature:y")].calibration
    assert cal is not None and cal.target_ert == 200_000.0


def test_river_detectors_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    """ADWIN on the latency and DDM on the errors: River's state is a pickle (with the River
    version) in the snapshot."""
    patch_calibrate(monkeypatch)
    settings = DriftConfig(
        reference_events=200,
        window_events=100,
        target_ert_events=100_000,
        streams=("latency", "errors"),
        numeric_detector="adwin",
        error_detector="ddm",
    )
    rng = random.Random(4)
    events = [
        InferenceEvent(request_id=str(i), model="m", version="1", latency_ms=abs(rng.gauss(50 if i < 1_500 else 70, 5)))
        for i in range(2_500)
    ]
    errors = [rng.random() < (0.05 if i < 1_200 else 0.3) for i in range(2_500)]
    cuts = list(range(0, 2_500, 250))
    whole = new(settings=settings)
    expected = feed(whole, events, 0, 2_500, errors, cuts)
    assert {a.stream for a in expected} == {"latency", "errors"}
    first = new(settings=settings)
    before = feed(first, events, 0, 1_000, errors, cuts)
    state = round_trip(first.drift.snapshot())
    assert state["phase"].tolist() == [SEQUENTIAL, SEQUENTIAL]
    testers = [state["extra"][sid]["tester"] for sid in range(len(state["streams"]))]
    assert all(isinstance(t["pickle"], str) and t["river_version"] for t in testers)
    second = new(settings=settings)
    second.restore(state, first.keys)
    assert same_tree(second.drift.snapshot(), state) == []
    after = feed(second, events, 1_000, 2_500, errors, cuts)
    assert rows_of(before + after) == rows_of(expected)
    assert_same(whole.drift, second.drift)


def fed(n: int = 300, settings: DriftConfig = SETTINGS) -> tuple[Feeder, dict[str, Any]]:
    f = new(settings=settings)
    feed(f, make_events(n), 0, n, None, CUTS)
    return f, round_trip(f.drift.snapshot())


def test_restore_refuses_other_window_sizes_a_used_drift_or_a_damaged_state() -> None:
    f, state = fed()
    for other in (
        DriftConfig(reference_events=300, window_events=100, target_ert_events=100_000),
        DriftConfig(reference_events=200, window_events=50, target_ert_events=100_000),
    ):
        with pytest.raises(
            ValueError, match=r"\(drift.reference_events, window_events changed\): set them back, or start afresh"
        ):
            new(settings=other).restore(state, f.keys)
    with pytest.raises(ValueError, match="restores into an empty partition only"):
        f.drift.restore(state)
    bad = [{**st, "detector": "nope"} if st["name"] == "score" else st for st in state["streams"]]
    with pytest.raises(ValueError, match="drift stream 'score' uses an unknown detector 'nope'"):
        new().restore({**state, "streams": bad}, f.keys)
    bad = [{**st, "kind": "text"} if st["name"] == "feature:c" else st for st in state["streams"]]
    with pytest.raises(ValueError, match="drift stream 'feature:c' has an unknown kind 'text'"):
        new().restore({**state, "streams": bad}, f.keys)
    bad = [{**st, "calibration": None} if st["name"] == "latency" else st for st in state["streams"]]
    with pytest.raises(ValueError, match="drift stream 'latency' is active but its checkpoint lacks its calibration"):
        new().restore({**state, "streams": bad}, f.keys)
    held = new(HeldCalibrator())
    feed(held, make_events(300), 0, 300, None, CUTS)
    calibrating = round_trip(held.drift.snapshot())
    bad = [{**st, "target": None} for st in calibrating["streams"]]
    with pytest.raises(ValueError, match="drift stream 'score' is calibrating but its checkpoint lacks the target"):
        new().restore({**calibrating, "streams": bad}, held.keys)


def test_restore_refuses_a_changed_detector() -> None:
    f, state = fed()
    other = DriftConfig(reference_events=200, window_events=100, target_ert_events=100_000, numeric_detector="psi")
    with pytest.raises(ValueError, match="detector"):
        new(settings=other).restore(state, f.keys)


def test_restore_refuses_other_window_sizes_of_the_same_total() -> None:
    f, state = fed()
    other = DriftConfig(reference_events=250, window_events=50, target_ert_events=100_000)
    with pytest.raises(ValueError, match="reference_events"):
        new(settings=other).restore(state, f.keys)


def test_a_failed_stream_stays_failed_with_its_reason() -> None:
    settings = DriftConfig(reference_events=200, window_events=100, streams=("errors",), error_detector="ddm")
    f = new(settings=settings)
    f.errors([KEY] * 250, [False] * 250, 0)  # no error at all: DDM cannot learn
    sid = f.sid("errors")
    error = f.drift.streams[sid].error
    assert f.drift.state(sid) == "failed" and error is not None and "error rate" in error
    state = round_trip(f.drift.snapshot())
    assert state["phase"].tolist() == [OFF] and state["extra"][0]["error"] == error
    restored = new(settings=settings)
    restored.restore(state, f.keys)
    d = restored.drift
    assert d.state(sid) == "failed" and d.streams[sid].error == error
    assert d.states() == f.drift.states() == {"reference": 0, "calibrating": 0, "active": 0, "failed": 1, "drifted": 0}
    fill = int(d.fill[sid])
    assert restored.errors([KEY] * 500, [True] * 500, 250) == []
    assert d.state(sid) == "failed" and d.fill[sid] == fill and d.streams[sid].pending == []


def test_a_snapshot_does_not_change_as_the_drift_goes_on() -> None:
    f, _ = fed()
    state = f.drift.snapshot()
    copy = round_trip(state)
    more = [InferenceEvent(request_id="n", model="m", version="1", features={"c": "new level"})]
    f.events(more, 300)
    assert same_tree(state, copy) == []


def test_a_snapshot_shares_references_until_the_next_one_and_stays_what_it_was() -> None:
    """The loop copies windows but shares references (the mirror) with a snapshot: later batches
    (a detection that restarts a reference included) must not change it, and each snapshot must
    equal one taken with fresh copies, whatever the streams did in between: a reference being
    collected, one held while calibrating, one sorted when its calibration is taken."""
    events, errors = make_events(), make_errors()
    held = HeldCalibrator()
    f = new(calibrator=held)

    def same_as_fresh() -> dict[str, Any]:
        fresh = round_trip(f.drift.snapshot(fresh=True))
        shared = f.drift.snapshot()
        assert same_tree(round_trip(shared), fresh) == []
        return shared

    stops = [150, 260, 270, 1_150, 1_250, 1_320, 1_400, 1_500, 1_520]
    start = 0
    previous: tuple[dict[str, Any], dict[str, Any]] | None = None
    for stop in stops:
        feed(f, events, start, stop, errors, CUTS)
        start = stop
        if stop in (270, 1_520):  # calibrations held since the references filled are taken now
            held.finish()
            f.drift.poll()
        if previous is not None:  # the last snapshot, after the batches since: as it was
            assert same_tree(round_trip(previous[0]), previous[1]) == []
        shared = same_as_fresh()
        previous = (shared, round_trip(shared))
    assert f.drift.detections.sum() > 0  # a restart happened on the way


def test_a_checkpoint_from_before_the_llm_streams_restores() -> None:
    # Before the LLM streams, a key's fixed streams were score, latency and errors: 3 columns.
    _, state = check_split(1_300, make_errors())
    assert state["fixed"].shape[1] > 3 and (state["fixed"][:, 3:] == -1).all()
    again = new()
    again.restore({**state, "fixed": state["fixed"][:, :3]}, [KEY])
    assert same_tree(again.drift.snapshot(), state) == []
