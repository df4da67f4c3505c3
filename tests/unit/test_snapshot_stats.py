"""Per-key snapshots (KeyStats, KeyPerformance): snapshot, JSON, restore, continue == an uninterrupted run."""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict
from typing import Any

import pytest

from daemon.config import LimitsConfig, MetricsConfig
from daemon.ingest.events import InferenceEvent, Label
from daemon.monitors.labels import JoinedLabel, PendingPrediction
from daemon.monitors.quality import KeyPerformance, confidence
from daemon.monitors.traffic import KeyStats, Overflow

KEY = ("fraud", "v3", "canary")
SLICE_FEATURES = ("country", "device")
COUNTRIES = ("de", "fr", "us", "jp", "br", "in")
DEVICES = ("ios", "android", "web", "tv", "watch")
ERROR_TYPES = tuple(f"E{i}" for i in range(9))
CLASSES = ("cat", "dog", "bird", "fish", "frog", "yak", "owl", "ant", "bee")

Batch = tuple[list[InferenceEvent], list[float | None]]
PerfBatch = tuple[list[InferenceEvent], list[float | None], list[JoinedLabel]]


def through_json(state: dict[str, Any]) -> dict[str, Any]:
    """Strict JSON (no NaN/Infinity literals) that reads back equal: no tuples, no non-finite floats."""
    back: dict[str, Any] = json.loads(json.dumps(state, allow_nan=False))
    assert back == state
    return back


# --- KeyStats -----------------------------------------------------------------------------------


def new_stats(overflow: Overflow) -> KeyStats:
    # Small caps, so that error types, classes and features all overflow into __other__ mid-stream.
    limits = LimitsConfig(max_error_types=4, max_classes=5, max_features=6)
    return KeyStats(MetricsConfig(), limits, overflow)


def traffic_event(rng: random.Random, i: int) -> InferenceEvent:
    kw: dict[str, Any] = {}
    if rng.random() < 0.9:
        kw["latency_ms"] = rng.lognormvariate(3.0, 1.0)
    if rng.random() < 0.08:
        kw["status"] = "error"
        kw["error_type"] = rng.choice(ERROR_TYPES) if rng.random() < 0.8 else None
    kind = rng.random()
    if kind < 0.3:
        kw["prediction"] = rng.choice(CLASSES)
        kw["score"] = rng.random()
    elif kind < 0.5:
        probs = [rng.random() for _ in range(3)]
        kw["probabilities"] = {c: p / sum(probs) for c, p in zip(rng.sample(CLASSES, 3), probs, strict=True)}
        if rng.random() < 0.5:
            kw["prediction"] = max(kw["probabilities"].items(), key=lambda kv: kv[1])[0]
    elif kind < 0.7:
        kw["prediction"] = rng.choice((0.0, 1.0, True, False))
        kw["score"] = rng.random()
    elif kind < 0.8:
        kw["prediction"] = rng.gauss(10.0, 3.0)  # a regression output: no class
    features: dict[str, float | str | bool | None] = {}
    if rng.random() < 0.85:
        features["amount"] = None if rng.random() < 0.1 else round(rng.expovariate(0.01), 2)
        features["country"] = rng.choice(COUNTRIES) if rng.random() < 0.9 else None
        features["device"] = rng.choice(DEVICES)
        # New feature names keep appearing: registration mid-batch, and the feature cap.
        for _ in range(rng.randrange(3)):
            features[f"f{rng.randrange(i // 40 + 2)}"] = None if rng.random() < 0.2 else rng.random()
        kw["features"] = features
    if rng.random() < 0.3:
        kw["ttft_ms"] = rng.uniform(20, 900)
        kw["tokens_in"] = rng.randrange(2000)
        kw["tokens_out"] = rng.randrange(800) if rng.random() < 0.9 else None
    return InferenceEvent(request_id=f"r{i}", model=KEY[0], version=KEY[1], variant=KEY[2], **kw)


def traffic(seed: int, n: int = 1500) -> list[Batch]:
    rng = random.Random(seed)
    batches: list[Batch] = []
    t, i = 1_700_000_000.0, 0
    while i < n:
        size = rng.choice((1, 2, 5, 17, 31, 32, 64, 120))  # both sides of SMALL_BATCH
        events = [traffic_event(rng, i + k) for k in range(size)]
        times: list[float | None] = []
        for _ in events:
            t += rng.expovariate(2.0)
            # Some without a time, some out of order.
            times.append(None if rng.random() < 0.05 else t - rng.uniform(0, 30) if rng.random() < 0.1 else t)
        batches.append((events, times))
        i += size
    return batches


def stats_observed(s: KeyStats, overflow: Overflow) -> dict[str, Any]:
    return {
        "summary": asdict(s.summary(KEY)),
        "latency": (s.latency.counts, s.latency.sum),
        "ttft": (s.ttft.counts, s.ttft.sum),
        "score": (s.score.counts, s.score.sum),
        "quantiles": [s.latency_sketch.quantile(q) for q in (0.1, 0.5, 0.9, 0.999)],
        "errors": s.errors.counts,
        "classes": s.classes.counts,
        "missing": {name: fs.missing(s.events) for name, fs in s.features.items()},
        "tokens": (s.tokens_in, s.tokens_out),
        "overflow": overflow.counts,
    }


@pytest.mark.parametrize("seed", [1, 2])
def test_key_stats_restore_continues_like_an_uninterrupted_run(seed: int) -> None:
    batches = traffic(seed)
    overflow_a = Overflow()
    a = new_stats(overflow_a)
    for events, times in batches:
        a.update(events, times)
    expected = stats_observed(a, overflow_a)
    # The stream reaches every path the snapshot must carry.
    assert a.errors.counts.get("__other__") and a.classes.counts.get("__other__") and overflow_a.counts["feature"]
    assert any(fs.first_seen_at > 0 for fs in a.features.values())
    assert a.ttft.sum > 0 and a.tokens_in > 0 and a.last_event_timestamp is not None

    for split in sorted({0, 1, 3, len(batches) // 2, len(batches) - 1, len(batches)}):
        overflow_b = Overflow()
        b = new_stats(overflow_b)
        for events, times in batches[:split]:
            b.update(events, times)
        state = through_json(b.snapshot())
        assert state["version"] == 1
        # A new process: the pipeline restores its Overflow itself.
        overflow_c = Overflow()
        overflow_c.counts = dict(overflow_b.counts)
        c = new_stats(overflow_c)
        c.restore(state)
        assert c.snapshot() == state
        assert stats_observed(c, overflow_c) == stats_observed(b, overflow_b)
        for events, times in batches[split:]:
            c.update(events, times)
        assert stats_observed(c, overflow_c) == expected, f"split at batch {split}"
        assert c.snapshot() == a.snapshot()


def test_key_stats_non_finite_floats_survive_strict_json() -> None:
    overflow = Overflow()
    s = new_stats(overflow)
    events = [
        InferenceEvent(request_id="a", model="m", latency_ms=math.inf, score=math.nan),
        InferenceEvent(request_id="b", model="m", latency_ms=5.0, score=-math.inf),
    ]
    s.update(events, [math.inf, None])
    state = through_json(s.snapshot())
    t = new_stats(Overflow())
    t.restore(state)
    assert t.snapshot() == state
    assert t.latency.sum == math.inf and math.isnan(t.score.sum) and t.last_event_timestamp == math.inf
    assert t.latency.counts == s.latency.counts and t.score.counts == s.score.counts


# --- KeyPerformance ----------------------------------------------------------------------------


def new_performance(overflow: Overflow, window: str) -> KeyPerformance:
    window_events, window_seconds = (60, None) if window == "events" else (None, 40.0)
    return KeyPerformance(
        window_events=window_events,
        window_seconds=window_seconds,
        positive_class=None,
        slice_features=SLICE_FEATURES,
        max_slice_levels=3,
        reference_size=30,
        overflow=overflow,
    )


def prediction_event(rng: random.Random, i: int, task: str) -> tuple[InferenceEvent, Label | None]:
    """An event and its true label (None: the label never comes)."""
    kw: dict[str, Any] = {}
    label: Label | None = None
    if task == "binary":
        truth = rng.random() < 0.4
        # Confidence shifts over the stream: the estimate must move after calibration.
        p = min(max(rng.gauss(0.7 if truth else 0.3, 0.2 + i / 10_000), 0.0), 1.0)
        kw["score"] = p
        if rng.random() < 0.7:
            kw["prediction"] = float(p >= 0.5)
        label = float(truth) if rng.random() < 0.9 else truth
        if rng.random() < 0.03:
            kw["prediction"] = 0.37  # a regression output in a classification key: mismatched
    elif task == "multiclass":
        truth_name = rng.choice(CLASSES[:4])
        raw = {c: rng.random() + (1.5 if c == truth_name else 0.0) for c in CLASSES[:4]}
        kw["probabilities"] = {c: v / sum(raw.values()) for c, v in raw.items()}
        if rng.random() < 0.6:
            kw["prediction"] = max(kw["probabilities"].items(), key=lambda kv: kv[1])[0]
        label = truth_name
        if rng.random() < 0.03:
            kw.pop("probabilities")
            kw.pop("prediction", None)  # nothing to grade: unusable
    else:
        truth_value = rng.gauss(100.0, 20.0)
        kw["prediction"] = truth_value + rng.gauss(0, 5.0)
        label = round(truth_value, 3) if rng.random() < 0.9 else 0.0
    if rng.random() < 0.3:
        label = None
    kw["latency_ms"] = rng.uniform(1, 50)
    kw["features"] = {
        "country": rng.choice(COUNTRIES) if rng.random() < 0.9 else None,
        "device": rng.choice(DEVICES),
    }
    return InferenceEvent(request_id=f"r{i}", model=KEY[0], version=KEY[1], variant=KEY[2], **kw), label


def labelled_stream(seed: int, task: str, n: int = 1200) -> list[PerfBatch]:
    """Batches as the pipeline feeds a key: its events, their times, and the labels joined in that batch
    (inline ones at once, the rest from the label topic some batches later)."""
    rng = random.Random(seed)
    n_batches = 40
    batches: list[PerfBatch] = [([], [], []) for _ in range(n_batches)]
    t, i = 1_700_000_000.0, 0
    for b in range(n_batches):
        events, times, _ = batches[b]
        for _ in range(n // n_batches + rng.randrange(-20, 20)):
            e, label = prediction_event(rng, i, task)
            i += 1
            t += rng.expovariate(2.0)
            ts = None if rng.random() < 0.05 else t
            events.append(e)
            times.append(ts)
            if label is None:
                continue
            features = e.features or {}
            pending = PendingPrediction(
                e.request_id,
                KEY,
                e.prediction,
                e.score,
                e.probabilities,
                ts,
                tuple("" if (v := features.get(f)) is None else str(v) for f in SLICE_FEATURES),
                i,
            )
            delay = 0 if rng.random() < 0.4 else rng.randrange(1, 6)
            label_ts = ts if delay == 0 else t + delay * 20.0 + rng.uniform(-30, 0)  # some out of order
            if b + delay < n_batches:
                batches[b + delay][2].append(JoinedLabel(pending, label, label_ts if rng.random() < 0.95 else None))
    return batches


def feed(kp: KeyPerformance, batches: list[PerfBatch]) -> None:
    """What Pipeline._predictions and _grade do for one key."""
    for events, _, joined in batches:
        positive = kp.overall.positive_class
        kp.add_predictions(
            [c for e in events if (c := confidence(e.prediction, e.score, e.probabilities, positive)) is not None]
        )
        kp.add_joined(joined)


def performance_observed(kp: KeyPerformance, overflow: Overflow) -> dict[str, Any]:
    return {
        "summary": kp.summary(),
        "rows": kp.rows(),
        "estimate": kp.estimator.expected_accuracy,
        "calibrated": kp.estimator.calibrated,
        "labelled": (kp.labelled, kp.labelled_events),
        "task": kp.task,
        "window": (len(kp.overall), kp.overall.mismatched, kp.overall.unusable),
        "overflow": overflow.counts,
    }


@pytest.mark.parametrize("window", ["events", "seconds"])
@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_key_performance_restore_continues_like_an_uninterrupted_run(task: str, window: str) -> None:
    batches = labelled_stream(11, task)
    overflow_a = Overflow()
    a = new_performance(overflow_a, window)
    feed(a, batches)
    expected = performance_observed(a, overflow_a)
    assert a.task == ("regression" if task == "regression" else "classification")
    assert overflow_a.counts["slice_level"] > 0 and set(a.slices["country"]) >= {"__other__", "__missing__"}
    if task != "regression":
        assert expected["estimate"] is not None
        assert a.overall.mismatched + a.overall.unusable > 0
    # Before calibration, just after it, and well after it.
    calibrated_at = next((k for k in range(len(batches)) if _calibrated_after(batches[: k + 1], window)), None)
    splits = {0, 1, 3, len(batches) // 2, len(batches) - 1, len(batches)}
    if calibrated_at is not None:
        splits |= {calibrated_at, calibrated_at + 1}

    for split in sorted(splits):
        overflow_b = Overflow()
        b = new_performance(overflow_b, window)
        feed(b, batches[:split])
        state = through_json(b.snapshot())
        assert state["version"] == 1
        overflow_c = Overflow()
        overflow_c.counts = dict(overflow_b.counts)
        c = new_performance(overflow_c, window)
        c.restore(state)
        assert c.snapshot() == state
        assert performance_observed(c, overflow_c) == performance_observed(b, overflow_b)
        feed(c, batches[split:])
        assert performance_observed(c, overflow_c) == expected, f"split at batch {split}"
        assert c.snapshot() == a.snapshot()


def _calibrated_after(batches: list[PerfBatch], window: str) -> bool:
    kp = new_performance(Overflow(), window)
    feed(kp, batches)
    return kp.estimator.calibrated


def test_key_performance_non_finite_floats_survive_strict_json() -> None:
    overflow = Overflow()
    kp = new_performance(overflow, "seconds")
    pending = [
        PendingPrediction("a", KEY, math.inf, None, None, 5.0, ("de", "ios")),
        PendingPrediction("b", KEY, 2.5, math.nan, {"x": math.nan, "y": math.inf}, None, ("nan", "")),
    ]
    kp.add_joined([JoinedLabel(pending[0], 1.5, math.inf), JoinedLabel(pending[1], -math.inf, 6.0)])
    kp.add_joined([JoinedLabel(pending[0], "nan", 7.0)])  # a label "nan" is a string, not the float nan
    state = through_json(kp.snapshot())
    restored = new_performance(Overflow(), "seconds")
    restored.restore(state)
    assert restored.snapshot() == state
    items = list(restored.overall._items)
    assert items[0].prediction == math.inf and items[1].label == -math.inf and math.isnan(items[1].score or 0.0)
    assert items[1].probabilities is not None and math.isnan(items[1].probabilities["x"])
    assert items[2].label == "nan" and isinstance(items[2].label, str)
    assert [type(g.label) for g in items] == [type(g.label) for g in kp.overall._items]


# --- both ---------------------------------------------------------------------------------------


def _fresh(kind: str) -> KeyStats | KeyPerformance:
    return new_stats(Overflow()) if kind == "KeyStats" else new_performance(Overflow(), "events")


@pytest.mark.parametrize("kind", ["KeyStats", "KeyPerformance"])
def test_snapshot_of_a_fresh_object_round_trips(kind: str) -> None:
    state = through_json(_fresh(kind).snapshot())
    assert state["version"] == 1
    restored = _fresh(kind)
    restored.restore(state)
    assert restored.snapshot() == state
    if isinstance(restored, KeyStats):
        assert restored.summary(KEY) == new_stats(Overflow()).summary(KEY)
    else:
        assert restored.summary() == new_performance(Overflow(), "events").summary() and restored.rows() == []


@pytest.mark.parametrize("kind", ["KeyStats", "KeyPerformance"])
def test_newer_or_unknown_snapshot_version_is_refused(kind: str) -> None:
    state = _fresh(kind).snapshot()
    target = _fresh(kind)
    before = target.snapshot()
    with pytest.raises(ValueError, match=rf"^{kind} snapshot version 2 is newer than this inferwatch \(1\)$"):
        target.restore({**state, "version": 2})
    for bad in ({k: v for k, v in state.items() if k != "version"}, {**state, "version": "1"}, {**state, "version": 0}):
        with pytest.raises(ValueError, match=f"{kind} snapshot version"):
            target.restore(bad)
    assert target.snapshot() == before
