"""Snapshots of a partition's traffic (Traffic) and of a key's quality (KeyPerformance): snapshot,
through the checkpoint codec, restore, continue == an uninterrupted run."""

from __future__ import annotations

import math
import random
from dataclasses import asdict
from typing import Any

import numpy as np
import pytest

from daemon.config import LimitsConfig, MetricsConfig
from daemon.ingest.batch import Key
from daemon.ingest.events import InferenceEvent, Label
from daemon.monitors.labels import JoinedLabel, PendingPrediction
from daemon.monitors.names import OTHER, Overflow
from daemon.monitors.quality import KeyPerformance
from daemon.monitors.traffic import SKETCH, Traffic
from daemon.state.codec import decode, encode
from detectors.metrics import confidence
from tests.unit.state_harness import FedTraffic

KEY: Key = ("fraud", "v3", "canary")
KEYS: tuple[Key, ...] = (KEY, ("fraud", "v3", "control"), ("chat", "v1", "default"))
SLICE_FEATURES = ("country", "device")
COUNTRIES = ("de", "fr", "us", "jp", "br", "in")
DEVICES = ("ios", "android", "web", "tv", "watch")
ERROR_TYPES = tuple(f"E{i}" for i in range(9))
CLASSES = ("cat", "dog", "bird", "fish", "frog", "yak", "owl", "ant", "bee")
# Small caps, so that error types, classes and features all overflow into __other__ mid-stream.
CAPS = LimitsConfig(max_error_types=4, max_classes=5, max_features=6)

TrafficBatch = tuple[list[InferenceEvent], list[float | None]]
PerfBatch = tuple[list[InferenceEvent], list[float | None], list[JoinedLabel]]


def same(a: Any, b: Any) -> bool:
    """Deep equality that a checkpoint must keep: types (1.0 is no 1, True no 1), array dtypes and
    shapes, and NaN where NaN was."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
        )
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def through_codec(state: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint stores and reads back: the binary codec must give back an equal tree."""
    back: dict[str, Any] = decode(encode(state))
    assert same(back, state)
    return back


# --- Traffic ------------------------------------------------------------------------------------


class Fed(FedTraffic):
    def __init__(self, limits: LimitsConfig = CAPS) -> None:
        super().__init__(limits)


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
        # New feature names keep appearing: first sightings mid-batch, and the feature cap.
        for _ in range(rng.randrange(3)):
            features[f"f{rng.randrange(i // 40 + 2)}"] = None if rng.random() < 0.2 else rng.random()
        kw["features"] = features
    if rng.random() < 0.3:
        kw["ttft_ms"] = rng.uniform(20, 900)
        kw["tokens_in"] = rng.randrange(2000)
        kw["tokens_out"] = rng.randrange(800) if rng.random() < 0.9 else None
    model, version, variant = KEYS[0] if rng.random() < 0.6 else rng.choice(KEYS[1:])
    return InferenceEvent(request_id=f"r{i}", model=model, version=version, variant=variant, **kw)


def traffic(seed: int, n: int = 1500) -> list[TrafficBatch]:
    rng = random.Random(seed)
    batches: list[TrafficBatch] = []
    t, i = 1_700_000_000.0, 0
    while i < n:
        size = rng.choice((1, 2, 5, 17, 31, 32, 64, 120))
        events = [traffic_event(rng, i + k) for k in range(size)]
        times: list[float | None] = []
        for _ in events:
            t += rng.expovariate(2.0)
            # Some without a time, some out of order.
            times.append(None if rng.random() < 0.05 else t - rng.uniform(0, 30) if rng.random() < 0.1 else t)
        batches.append((events, times))
        i += size
    return batches


def stats_observed(f: Fed, with_overflow: bool = True) -> dict[str, Any]:
    t = f.traffic
    out: dict[str, Any] = {}
    for key, row in f.rows.items():
        out[str(key)] = {
            "summary": asdict(t.summary(row, key)),
            **{name: (h.counts[row].tolist(), float(h.sums[row])) for name, h in _histograms(t)},
            "quantiles": [SKETCH.quantile(t.sketch[row], q) for q in (0.1, 0.5, 0.9, 0.999)],
            "errors": t.counts(row, "errors"),
            "classes": t.counts(row, "classes"),
            "missing": t.missing(row),
            "tokens": t.tokens[row].tolist(),
        }
    if with_overflow:
        out["overflow"] = dict(f.overflow.counts)
    return out


def _histograms(t: Traffic) -> list[tuple[str, Any]]:
    return list(t.histograms.items())


def run(batches: list[TrafficBatch], limits: LimitsConfig = CAPS) -> Fed:
    f = Fed(limits)
    for events, times in batches:
        f.update(events, times)
    return f


def restored(state: dict[str, Any], overflow: dict[str, int], limits: LimitsConfig = CAPS) -> Fed:
    f = Fed(limits)
    f.overflow.counts = dict(overflow)
    f.restore(through_codec(state))
    return f


@pytest.mark.parametrize("seed", [1, 2])
def test_traffic_restore_continues_like_an_uninterrupted_run(seed: int) -> None:
    batches = traffic(seed)
    a = run(batches)
    expected = stats_observed(a)
    # The stream reaches every path the snapshot must carry, in every key.
    t = a.traffic
    assert t.rows == 3
    for row in range(3):
        assert t.counts(row, "classes").get(OTHER) and t.first_seen[row].max() > 0
        assert t.ttft.sums[row] > 0 and t.tokens[row].all() and not math.isnan(t.last_time[row])
    assert t.counts(0, "errors").get(OTHER)
    assert a.overflow.counts["feature"] and a.overflow.counts["error_type"] and a.overflow.counts["class"]

    for split in sorted({0, 1, 3, len(batches) // 2, len(batches) - 1, len(batches)}):
        b = run(batches[:split])
        state = b.snapshot()
        c = restored(state, b.overflow.counts)
        assert same(c.snapshot(), state)
        assert stats_observed(c) == stats_observed(b)
        for events, times in batches[split:]:
            c.update(events, times)
        assert stats_observed(c) == expected, f"split at batch {split}"
        assert same(c.snapshot(), a.snapshot())


def test_traffic_restore_with_smaller_caps_equals_a_run_with_those_caps() -> None:
    """Names past a smaller cap fold into OTHER on restore: the caps keep the first names seen, so the
    restored state, continued, is what a run with the smaller caps all along gives (but for the
    overflow counter, which counts folds as they happen)."""
    batches = traffic(3)
    smaller = LimitsConfig(max_error_types=2, max_classes=3, max_features=4)
    expected = stats_observed(run(batches, smaller), with_overflow=False)
    for split in (len(batches) // 3, len(batches) - 2):
        b = run(batches[:split])
        assert any(len(names) > 4 for names in b.traffic.feature_names.names)  # something to fold
        c = restored(b.snapshot(), b.overflow.counts, smaller)
        assert [len(n) for n in c.traffic.class_names.names] == [3, 3, 3]
        for row in range(3):
            before = b.traffic.counts(row, "classes")
            after = c.traffic.counts(row, "classes")
            kept = c.traffic.class_names.names[row]
            assert kept == b.traffic.class_names.names[row][:3]
            assert after[OTHER] == sum(v for k, v in before.items() if k not in kept)
        for events, times in batches[split:]:
            c.update(events, times)
        assert stats_observed(c, with_overflow=False) == expected, f"split at batch {split}"


def test_traffic_restore_with_larger_caps_keeps_the_counts_and_takes_new_names() -> None:
    batches = traffic(4)
    larger = LimitsConfig(max_error_types=8, max_classes=12, max_features=20)
    split = len(batches) // 2
    b = run(batches[:split])
    c = restored(b.snapshot(), b.overflow.counts, larger)
    assert stats_observed(c) == stats_observed(b)
    for events, times in batches[split:]:
        c.update(events, times)
    a = run(batches)  # the small caps all along
    for row in range(3):
        # The names of before the restore keep their place; names first seen after it get columns.
        names = c.traffic.class_names.names[row]
        assert names[:5] == b.traffic.class_names.names[row] and len(names) > 5
        assert c.traffic.feature_names.names[row][:6] == b.traffic.feature_names.names[row]
        assert len(c.traffic.feature_names.names[row]) > 6
        for which in ("classes", "errors"):
            assert sum(c.traffic.counts(row, which).values()) == sum(a.traffic.counts(row, which).values())
        # A feature kept by both runs has the same figures.
        missing_c, missing_a = c.traffic.missing(row), a.traffic.missing(row)
        assert all(missing_c[name] == n for name, n in missing_a.items())
    assert c.traffic.events.tolist() == a.traffic.events.tolist()


def test_traffic_non_finite_floats_survive_the_codec() -> None:
    f = Fed()
    events = [
        InferenceEvent(request_id="a", model="m", latency_ms=math.inf, score=math.nan, ttft_ms=math.inf),
        InferenceEvent(request_id="b", model="m", latency_ms=5.0, score=-math.inf),
    ]
    f.update(events, [math.inf, None])
    g = restored(f.snapshot(), {})
    t = g.traffic
    assert t.latency.sums[0] == math.inf and t.score.sums[0] == -math.inf and t.ttft.sums[0] == math.inf
    assert t.last_time[0] == math.inf
    assert t.latency.counts[0].tolist() == f.traffic.latency.counts[0].tolist()
    assert t.latency.counts[0, -1] == 1 and t.score.counts[0].sum() == 1  # NaN: no score
    assert same(g.snapshot(), f.snapshot())


def test_traffic_restore_refuses_changed_buckets_and_a_used_partition() -> None:
    f = run(traffic(5, n=100))
    state = through_codec(f.snapshot())["traffic"]
    other = Traffic(MetricsConfig(latency_buckets_seconds=(0.1, 1.0)), CAPS, Overflow(), [])
    with pytest.raises(ValueError, match=r"latency histogram has other buckets than this config .*start afresh"):
        other.restore(state)
    used = Traffic(MetricsConfig(), CAPS, Overflow(), [])
    used.add_rows(1)
    with pytest.raises(ValueError, match="empty partition"):
        used.restore(state)


def test_traffic_restore_of_a_checkpoint_from_before_the_llm_metrics() -> None:
    f = run(traffic(5, n=100))
    state = through_codec(f.snapshot())["traffic"]
    llm = ("tpot", "queue", "decode", "prompt_length", "output_length", "tokens_per_second", "finish")
    older = {k: v for k, v in state.items() if not k.startswith(llm)}
    assert len(older) == len(state) - 2 * len(llm)  # counts and sums; finish reasons' counts and names
    t = Traffic(MetricsConfig(), CAPS, Overflow(), [])
    t.restore(older)
    assert t.latency.counts[: len(state["events"])].tolist() == state["latency_counts"].tolist()
    assert not t.histograms["tpot"].counts.any() and not t.histograms["output_length"].sums.any()


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
                position=i,
            )
            delay = 0 if rng.random() < 0.4 else rng.randrange(1, 6)
            label_ts = ts if delay == 0 else t + delay * 20.0 + rng.uniform(-30, 0)  # some out of order
            if b + delay < n_batches:
                batches[b + delay][2].append(JoinedLabel(pending, label, label_ts if rng.random() < 0.95 else None))
    return batches


def feed(kp: KeyPerformance, batches: list[PerfBatch]) -> None:
    """What PartitionState._predictions and grade do for one key."""
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
        "overflow": dict(overflow.counts),
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
    assert (calibrated_at is None) == (task == "regression")
    splits = {0, 1, 3, len(batches) // 2, len(batches) - 1, len(batches)}
    if calibrated_at is not None:
        splits |= {calibrated_at, calibrated_at + 1}

    for split in sorted(splits):
        overflow_b = Overflow()
        b = new_performance(overflow_b, window)
        feed(b, batches[:split])
        state = through_codec(b.snapshot())
        overflow_c = Overflow()
        overflow_c.counts = dict(overflow_b.counts)
        c = new_performance(overflow_c, window)
        c.restore(state)
        assert same(c.snapshot(), state)
        assert performance_observed(c, overflow_c) == performance_observed(b, overflow_b)
        feed(c, batches[split:])
        assert performance_observed(c, overflow_c) == expected, f"split at batch {split}"
        assert same(c.snapshot(), a.snapshot())


def _calibrated_after(batches: list[PerfBatch], window: str) -> bool:
    kp = new_performance(Overflow(), window)
    feed(kp, batches)
    return kp.estimator.calibrated


def test_key_performance_non_finite_floats_and_label_types_survive_the_codec() -> None:
    overflow = Overflow()
    kp = new_performance(overflow, "seconds")
    pending = [
        PendingPrediction("a", KEY, math.inf, None, None, 5.0, ("de", "ios")),
        PendingPrediction("b", KEY, 2.5, math.nan, {"x": math.nan, "y": math.inf}, None, ("nan", "")),
    ]
    kp.add_joined([JoinedLabel(pending[0], 1.5, math.inf), JoinedLabel(pending[1], -math.inf, 6.0)])
    kp.add_joined([JoinedLabel(pending[0], "nan", 7.0)])  # a label "nan" is a string, not the float nan
    kp.add_joined([JoinedLabel(pending[1], 2, 8.0), JoinedLabel(pending[1], 2.0, 8.0)])  # int and float stay so
    state = through_codec(kp.snapshot())
    restored_kp = new_performance(Overflow(), "seconds")
    restored_kp.restore(state)
    assert same(restored_kp.snapshot(), kp.snapshot())
    items = list(restored_kp.overall._items)
    assert items[0].prediction == math.inf and items[1].label == -math.inf and math.isnan(items[1].score or 0.0)
    assert items[1].probabilities is not None and math.isnan(items[1].probabilities["x"])
    assert items[2].label == "nan" and isinstance(items[2].label, str)
    assert [type(g.label) for g in items] == [type(g.label) for g in kp.overall._items]
    assert [type(g.label) for g in items[-2:]] == [int, float]


# --- both ---------------------------------------------------------------------------------------


def test_snapshot_of_a_fresh_traffic_round_trips() -> None:
    for keys in (0, 2):  # no rows, and rows without events
        f = Fed()
        f.traffic.add_rows(keys)
        state = through_codec(f.traffic.snapshot())
        assert len(state["events"]) == keys
        g = Traffic(MetricsConfig(), CAPS, Overflow(), [])
        g.restore(state)
        assert same(g.snapshot(), state)
        for row in range(keys):
            assert g.summary(row, KEY) == f.traffic.summary(row, KEY)
            assert g.summary(row, KEY).last_event_timestamp is None


def test_snapshot_of_a_fresh_key_performance_round_trips() -> None:
    state = through_codec(new_performance(Overflow(), "events").snapshot())
    restored_kp = new_performance(Overflow(), "events")
    restored_kp.restore(state)
    assert same(restored_kp.snapshot(), state)
    assert restored_kp.summary() == new_performance(Overflow(), "events").summary() and restored_kp.rows() == []
