"""Traffic (the columnar per-key counters, histograms, latency sketch, capped names and feature
completeness of a partition), the capped names themselves, the latency sketch's buckets and the key cap."""

from __future__ import annotations

import json
import math
from itertools import accumulate
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import Config, LimitsConfig, from_mapping
from daemon.ingest.batch import Key
from daemon.ingest.events import InferenceEvent
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.monitors.names import MAX_LABEL_VALUE_CHARS, OTHER, Overflow, RowNames
from daemon.monitors.traffic import Histograms
from daemon.runtime.app import build_pipeline
from daemon.state.routing import OTHER_KEY
from detectors.quantiles import LogBuckets
from tests.unit.state_harness import FedTraffic

KEY: Key = ("m", "unknown", "default")


def ev(**kw: Any) -> InferenceEvent:
    return InferenceEvent(request_id=str(kw.pop("request_id", "r")), model=str(kw.pop("model", "m")), **kw)


class Fed(FedTraffic):
    def row(self, key: Key = KEY) -> int:
        return self.rows[key]


def nearest_rank(values: Any, q: float) -> float:
    """The exact q-quantile by nearest rank, ⌈q·n⌉ (the definition LogBuckets.quantile approximates)."""
    s = np.sort(np.asarray(values, dtype=np.float64))
    return float(s[max(1, math.ceil(q * len(s))) - 1])


def within_1pct(estimate: float | None, exact: float) -> bool:
    """The sketch's guarantee (relative accuracy 1%), with room for float rounding and the report's
    rounding to the microsecond."""
    return estimate is not None and abs(estimate - exact) <= 0.01 * exact * (1 + 1e-9) + 5e-7


# -- histograms ------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.none() | st.floats(min_value=0, max_value=20, allow_nan=False)),
        max_size=200,
    ),
    st.integers(1, 50),
)
def test_histograms_match_a_direct_count_per_row(observations: list[tuple[int, float | None]], chunk: int) -> None:
    bounds = (0.1, 0.5, 1.0, 5.0)
    h = Histograms(bounds)
    h.resize(3)
    for i in range(0, len(observations), chunk):
        part = observations[i : i + chunk]
        rows = np.array([r for r, _ in part], dtype=np.int64)
        values = np.array([math.nan if v is None else v for _, v in part], dtype=np.float64)  # NaN: no value
        h.observe(rows, values)
    for row in range(3):
        mine = [v for r, v in observations if r == row and v is not None]
        cum = list(accumulate(h.counts[row].tolist()))
        for i, b in enumerate(bounds):
            # Prometheus `le` semantics: a value equal to the bound is inside the bucket.
            assert cum[i] == sum(1 for v in mine if v <= b)
        assert cum[-1] == len(mine)
        assert h.sums[row] == pytest.approx(sum(mine))


def test_histogram_value_on_bound_is_inside() -> None:
    h = Histograms.single((1.0, 2.0))
    h.observe_one(1.0)
    h.observe(np.zeros(3, dtype=np.int64), np.array([2.0, 2.5, math.nan]))
    assert h.counts.tolist() == [[1, 1, 1]]
    assert h.sums.tolist() == [5.5]


# -- Traffic ---------------------------------------------------------------------------------


def test_traffic_counts_errors_latency_classes_llm() -> None:
    f = Fed()
    f.update(
        [
            ev(latency_ms=10, status="error", error_type="timeout", prediction=True),
            ev(latency_ms=20, status="error", prediction=False),
            ev(latency_ms=30, prediction="cat", ttft_ms=100, tokens_in=3, tokens_out=7),
            ev(prediction=2.0, tokens_out=5),
            ev(prediction=0.37),  # regression output: not a class
            ev(probabilities={"a": 0.2, "b": 0.8}),  # no prediction: the most probable class is counted
        ],
        [1.0, 5.0, None, 3.0, None, 2.0],  # record times: the events have none of their own
    )
    t, row = f.traffic, f.row()
    assert t.events[row] == 6
    assert t.counts(row, "errors") == {"timeout": 1, "unknown": 1}
    assert t.latency.counts[row].sum() == 3 and t.latency.sums[row] == pytest.approx(0.06)
    # One definition of a class: True and False are the classes "1" and "0", 2.0 is "2".
    assert t.counts(row, "classes") == {"1": 1, "0": 1, "cat": 1, "2": 1, "b": 1}
    assert t.ttft.counts[row].sum() == 1 and t.ttft.sums[row] == pytest.approx(0.1)
    assert t.tokens[row].tolist() == [3, 12]
    # No score given: the top class probability is the score.
    assert t.score.counts[row].sum() == 1 and t.score.sums[row] == pytest.approx(0.8)
    summary = t.summary(row, KEY)
    assert (summary.events, summary.errors) == (6, 2)
    assert summary.error_rate == pytest.approx(2 / 6)
    assert summary.last_event_timestamp == 5.0
    assert summary.errors_by_type == {"timeout": 1, "unknown": 1}
    # Nearest rank over 10, 20, 30 ms: p50 is the 2nd, p95 and p99 the 3rd.
    assert within_1pct(summary.latency_seconds["p50"], 0.02)
    assert within_1pct(summary.latency_seconds["p99"], 0.03)


def test_traffic_of_a_key_without_figures() -> None:
    f = Fed()
    f.update([ev()])
    summary = f.traffic.summary(f.row(), KEY)
    assert summary.latency_seconds == {"p50": None, "p95": None, "p99": None}
    assert summary.last_event_timestamp is None and summary.error_rate == 0.0
    assert f.traffic.counts(f.row(), "classes") == {} and f.traffic.missing(f.row()) == {}


def test_keys_of_one_batch_keep_their_own_figures() -> None:
    f = Fed()
    f.update(
        [
            ev(model="a", latency_ms=10, prediction="x", status="error", error_type="oom"),
            ev(model="b", latency_ms=1000, prediction="y"),
            ev(model="a", latency_ms=30, prediction="x"),
            ev(model="b", prediction=True, status="error"),
        ],
        [7.0, 3.0, 2.0, 9.0],
    )
    t = f.traffic
    a, b = f.row(("a", "unknown", "default")), f.row(("b", "unknown", "default"))
    assert (t.events[a], t.events[b]) == (2, 2)
    assert t.counts(a, "classes") == {"x": 2} and t.counts(b, "classes") == {"y": 1, "1": 1}
    assert t.counts(a, "errors") == {"oom": 1} and t.counts(b, "errors") == {"unknown": 1}
    assert t.latency.sums[a] == pytest.approx(0.04) and t.latency.sums[b] == pytest.approx(1.0)
    assert (t.last_time[a], t.last_time[b]) == (7.0, 9.0)  # the newest, not the last
    assert within_1pct(t.summary(b, ("b", "unknown", "default")).latency_seconds["p50"], 1.0)


def test_feature_missing_counts_from_first_sighting() -> None:
    f = Fed()
    f.update([ev(), ev(features={"a": 1.0})])  # event 0 predates "a"
    f.update(
        [
            ev(features={"a": None, "b": "x"}),  # a null, b first seen (null or not: named)
            ev(features={"b": "y"}),  # a absent
            ev(),  # both absent
            ev(features={"a": 2.0, "b": None}),
        ]
    )
    assert f.traffic.missing(f.row()) == {"a": 3, "b": 2}


def test_feature_first_sighting_counts_each_keys_own_events() -> None:
    """Through the pipeline: PartitionState ranks each event among its key's events of the batch."""
    pipeline = build_pipeline(from_mapping({"limits": {"feature_admission_events": 1}}))
    events: list[dict[str, Any]] = [
        {"model": "a"},
        {"model": "b", "features": {"f": None}},  # f first named by b here: b's 1st event
        {"model": "a"},
        {"model": "a", "features": {"f": 1.0}},  # f first named by a here: a's 3rd event
        {"model": "b"},
        {"model": "a", "features": {"f": "x"}},
        {"model": "b", "features": {"f": True}},
    ]
    records = [
        RawRecord("t", 0, i, None, None, json.dumps({"request_id": f"r{i}", **e}).encode())
        for i, e in enumerate(events)
    ]
    pipeline.process(chunks_of(records))
    state = pipeline.partitions[0]
    missing = {key[0]: state.traffic.missing(row) for row, key in enumerate(state.keys)}
    # a: 4 events, 2 before f was named, 2 with it. b: 3 events, all since, 1 with it (null, absent, True).
    assert missing == {"a": {"f": 0}, "b": {"f": 2}}


def test_capped_names_fold_into_other() -> None:
    f = Fed(LimitsConfig(max_classes=2, max_error_types=1))
    f.update([ev(prediction=p) for p in ["a", "b", "c", "a", "d", "x" * 200]])
    f.update([ev(prediction=OTHER), ev(prediction="b")])  # a class named like OTHER has no column of its own
    f.update([ev(status="error", error_type=e) for e in ["oom", "timeout", "oom", None]])
    t = f.traffic
    assert t.counts(f.row(), "classes") == {"a": 2, "b": 2, OTHER: 4}
    assert t.counts(f.row(), "errors") == {"oom": 2, OTHER: 2}  # no error_type: "unknown", past the cap
    assert f.overflow.counts == {"class": 4, "error_type": 2}


def test_row_names_keep_each_rows_first_names_in_order() -> None:
    overflow = Overflow()
    names = RowNames(2, "class", overflow)
    names.add_rows(2)
    vocab = ["p", "q", "r", "s" * (MAX_LABEL_VALUE_CHARS + 1), "t" * MAX_LABEL_VALUE_CHARS]
    rows = np.array([0, 1, 0, 1, 0, 1, 1], dtype=np.int64)
    codes = np.array([2, 0, 0, 3, 1, 4, -1], dtype=np.int64)  # -1: no name
    cols, taken = names.columns(rows, codes, vocab)
    # Row 0 sees r, p, q: keeps r and p. Row 1 sees p, then a name too long, then one just short enough.
    assert names.names == [["r", "p"], ["p", "t" * MAX_LABEL_VALUE_CHARS]]
    assert cols.tolist() == [0, 0, 1, 2, 2, 1, -1]
    assert sorted(taken) == [(0, 0, 0), (0, 1, 2), (1, 0, 1), (1, 1, 5)]  # (row, column, first event)
    assert overflow.counts == {"class": 2}
    # Known pairs resolve without taking anything; a new name in a full row folds.
    cols, taken = names.columns(np.array([1, 0, 0]), np.array([0, 1, 2]), ["t" * MAX_LABEL_VALUE_CHARS, "p", "z"])
    assert cols.tolist() == [1, 1, 2] and taken == []
    assert overflow.counts == {"class": 3}


def test_feature_cap_and_long_names() -> None:
    f = Fed(LimitsConfig(max_features=2))
    f.update([ev(features={"a": 1.0, "b": 2.0, "c": 3.0, "z" * 300: 1.0})] * 3)
    assert f.traffic.feature_names.names == [["a", "b"]]
    assert f.overflow.counts["feature"] == 6
    assert f.traffic.missing(f.row()) == {"a": 0, "b": 0}


def test_feature_cap_keeps_each_keys_first_names() -> None:
    f = Fed(LimitsConfig(max_features=1))
    f.update(
        [
            ev(model="a", features={"x": 1.0}),
            ev(model="b", features={"y": 1.0}),  # b's first feature
            ev(model="b", features={"x": 1.0}),  # b's second: past the cap
        ]
    )
    assert f.traffic.feature_names.names == [["x"], ["y"]]


def test_key_cap_folds_new_keys_into_the_overflow_key() -> None:
    config = Config.model_validate({"limits": {"max_keys": 2}})
    pipeline = build_pipeline(config)
    offset = 0
    for model, n in [("a", 5), ("b", 1), ("c", 4), ("a", 1), ("d", 2)]:
        records = []
        for _ in range(n):
            body = {"request_id": f"r{offset}", "model": model}
            records.append(RawRecord("t", 0, offset, None, None, json.dumps(body).encode()))
            offset += 1
        pipeline.process(chunks_of(records))
    state = pipeline.partitions[0]
    events = {key: int(state.traffic.events[row]) for row, key in enumerate(state.keys)}
    assert events == {("a", "unknown", "default"): 6, ("b", "unknown", "default"): 1, OTHER_KEY: 6}
    assert pipeline.overflow.counts == {"key": 6}
    assert len(pipeline.router) == 2


# -- the latency sketch ----------------------------------------------------------------------


def test_log_buckets_quantiles_within_relative_accuracy() -> None:
    rng = np.random.default_rng(7)
    x = rng.lognormal(-3.5, 0.8, 50_000)
    b = LogBuckets(relative_accuracy=0.01)
    counts = np.zeros(b.n_buckets, dtype=np.int64)
    for chunk in np.array_split(x, 17):
        counts += np.bincount(b.index(chunk), minlength=b.n_buckets)
    assert counts.sum() == len(x)
    for q in (0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0):
        exact = nearest_rank(x, q)
        assert within_1pct(b.quantile(counts, q), exact), q


def test_traffic_sketch_rows_within_relative_accuracy() -> None:
    rng = np.random.default_rng(5)
    f = Fed()
    fast, slow = rng.lognormal(1.0, 0.5, 3000), rng.lognormal(5.0, 1.5, 3000)  # milliseconds
    for i in range(0, 3000, 500):
        events = [ev(model="fast", latency_ms=float(v)) for v in fast[i : i + 500]]
        events += [ev(model="slow", latency_ms=float(v)) for v in slow[i : i + 500]]
        f.update(events[::2] + events[1::2])
    for model, values in (("fast", fast), ("slow", slow)):
        key = (model, "unknown", "default")
        quantiles = f.traffic.summary(f.row(key), key).latency_seconds
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            exact = nearest_rank(values / 1000.0, q)
            assert within_1pct(quantiles[name], exact), (model, name)


def test_log_buckets_clamp_and_reject_bad_parameters() -> None:
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="relative_accuracy"):
            LogBuckets(relative_accuracy=bad)
    with pytest.raises(ValueError, match="min_value"):
        LogBuckets(min_value=2.0, max_value=1.0)
    b = LogBuckets()
    assert np.isnan(b.quantile(np.zeros(b.n_buckets, dtype=np.int64), 0.5))
    assert b.index(np.array([0.0, -5.0, 1e-9])).tolist() == [0, 0, 0]
    assert b.index(np.array([1e9, math.inf])).tolist() == [b.n_buckets - 1] * 2


def mixed_events(n: int, seed: int) -> tuple[list[InferenceEvent], list[float | None]]:
    rng = np.random.default_rng(seed)
    events = [
        ev(
            model=f"m{i % 3}",
            latency_ms=float(rng.lognormal(3, 1)),
            score=float(rng.random()),
            prediction=str(rng.integers(5)),
            status="error" if rng.random() < 0.2 else "ok",
            error_type=str(rng.integers(4)),
            features={f"f{j}": (None if rng.random() < 0.3 else float(rng.random())) for j in rng.integers(0, 8, 3)},
        )
        for i in range(n)
    ]
    return events, [float(t) for t in rng.uniform(0, 100, n)]


def small_and_large(limits: LimitsConfig) -> tuple[Fed, Fed]:
    events, times = mixed_events(500, 3)
    small, large = Fed(limits), Fed(limits)
    for i in range(0, len(events), 5):
        small.update(events[i : i + 5], times[i : i + 5])
    large.update(events, times)
    return small, large


def test_small_and_large_batches_give_the_same_state() -> None:
    small, large = small_and_large(LimitsConfig(max_classes=3, max_error_types=2))
    a, b = small.traffic.snapshot(), large.traffic.snapshot()
    assert small.rows == large.rows and a.keys() == b.keys()
    for name, value in a.items():
        if name in ("first_seen", "present", "feature_names"):
            continue  # compared by name below
        if name.endswith("_sums"):
            np.testing.assert_allclose(value, b[name], rtol=1e-12)
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, b[name])
        elif isinstance(value, dict):  # per histogram: its bound sets, and each row's
            assert value.keys() == b[name].keys()
            for k in value:
                np.testing.assert_array_equal(np.asarray(value[k], dtype=object), np.asarray(b[name][k], dtype=object))
        else:
            assert value == b[name], name
    for row in range(small.traffic.rows):
        assert small.traffic.missing(row) == large.traffic.missing(row)
        assert len(small.traffic.missing(row)) == 8  # every feature, none past the cap
    assert small.overflow.counts == large.overflow.counts
    assert a["sketch"].sum() == 500 and small.overflow.counts["class"] > 0 and small.overflow.counts["error_type"] > 0


def test_small_and_large_batches_keep_the_same_features_under_the_cap() -> None:
    small, large = small_and_large(LimitsConfig(max_features=5))
    assert small.traffic.feature_names.names == large.traffic.feature_names.names
    for row in range(small.traffic.rows):
        assert small.traffic.missing(row) == large.traffic.missing(row)
