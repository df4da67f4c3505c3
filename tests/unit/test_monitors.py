from __future__ import annotations

from itertools import accumulate

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import LimitsConfig, MetricsConfig
from daemon.ingest.events import InferenceEvent
from daemon.monitors.traffic import OTHER, CappedCounts, Histogram, KeyStats, Overflow
from daemon.state.routing import OTHER_KEY, KeyTable
from detectors.quantiles import QuantileSketch


def ev(**kw: object) -> InferenceEvent:
    return InferenceEvent(request_id=str(kw.pop("request_id", "r")), model=str(kw.pop("model", "m")), **kw)  # type: ignore[arg-type]


def stats(**limits: int) -> tuple[KeyStats, Overflow]:
    overflow = Overflow()
    return KeyStats(MetricsConfig(), LimitsConfig(**limits), overflow), overflow


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=20, allow_nan=False), max_size=200))
def test_histogram_matches_direct_count(values: list[float]) -> None:
    bounds = (0.1, 0.5, 1.0, 5.0)
    h = Histogram(bounds)
    h.observe_many(np.asarray(values, dtype=np.float64))
    cum = list(accumulate(h.counts))
    for i, b in enumerate(bounds):
        # Prometheus `le` semantics: a value equal to the bound is inside the bucket.
        assert cum[i] == sum(1 for v in values if v <= b)
    assert cum[-1] == len(values)
    assert h.sum == pytest.approx(sum(values))


def test_histogram_value_on_bound_is_inside() -> None:
    h = Histogram((1.0, 2.0))
    h.observe(1.0)
    h.observe_many(np.array([2.0, 2.5]))
    assert h.counts == [1, 1, 1]


def test_keystats_counts_errors_latency_classes_llm() -> None:
    s, _ = stats()
    events = [
        ev(latency_ms=10, status="error", error_type="timeout", prediction=True),
        ev(latency_ms=20, status="error", prediction=False),
        ev(latency_ms=30, prediction="cat", ttft_ms=100, tokens_in=3, tokens_out=7),
        ev(prediction=2.0, tokens_out=5),
        ev(prediction=0.37),  # regression output: not a class
        ev(probabilities={"a": 0.2, "b": 0.8}),
    ]
    s.update(events, [1.0, 5.0, None, 3.0, None, 2.0])
    assert s.events == 6
    assert s.errors.counts == {"timeout": 1, "unknown": 1}
    assert sum(s.latency.counts) == 3 and s.latency.sum == pytest.approx(0.06)
    assert s.classes.counts == {"true": 1, "false": 1, "cat": 1, "2": 1, "b": 1}
    assert sum(s.ttft.counts) == 1 and (s.tokens_in, s.tokens_out) == (3, 12)
    assert sum(s.score.counts) == 1 and s.score.sum == pytest.approx(0.8)
    assert s.last_event_timestamp == 5.0
    summary = s.summary(("m", "1", "default"))
    assert summary.error_rate == pytest.approx(2 / 6)
    assert summary.latency_seconds["p50"] == pytest.approx(0.02, rel=0.02)


def test_feature_missing_counts_from_first_sighting() -> None:
    s, _ = stats()
    s.update([ev(), ev(features={"a": 1.0})], [None, None])  # event 0 predates "a"
    s.update(
        [
            ev(features={"a": None, "b": "x"}),  # a null, b first seen
            ev(features={"b": "y"}),  # a absent
            ev(),  # both absent
            ev(features={"a": 2.0, "b": None}),
        ],
        [None] * 4,
    )
    missing = {name: fs.missing(s.events) for name, fs in s.features.items()}
    assert missing == {"a": 3, "b": 2}


def test_capped_counts_fold_into_other() -> None:
    overflow = Overflow()
    c = CappedCounts(2, "class", overflow)
    for name in ["a", "b", "c", "a", "d", "x" * 200]:
        c.add(name)
    assert c.counts == {"a": 2, "b": 1, OTHER: 3}
    assert overflow.counts == {"class": 3}


def test_feature_cap_and_long_names() -> None:
    s, overflow = stats(max_features=2)
    s.update([ev(features={"a": 1.0, "b": 2.0, "c": 3.0, "z" * 300: 1.0})] * 3, [None] * 3)
    assert set(s.features) == {"a", "b"}
    assert overflow.counts["feature"] == 6


def test_key_table_caps_keys() -> None:
    overflow = Overflow()
    table: KeyTable[list[int]] = KeyTable(2, lambda key: [], overflow)
    assert table.route(("a", "1", "x"), 5)[0] == ("a", "1", "x")
    assert table.route(("b", "1", "x"), 1)[0] == ("b", "1", "x")
    assert table.route(("c", "1", "x"), 4)[0] == OTHER_KEY
    assert table.route(("a", "1", "x"), 1)[0] == ("a", "1", "x")
    assert table.route(("d", "1", "x"), 2)[0] == OTHER_KEY
    assert len(table) == 3 and overflow.counts == {"key": 6}


def test_quantile_sketch_within_relative_accuracy() -> None:
    rng = np.random.default_rng(7)
    x = rng.lognormal(-3.5, 0.8, 50_000)
    s = QuantileSketch(relative_accuracy=0.01)
    for chunk in np.array_split(x, 17):
        s.update_many(chunk)
    for q in (0.5, 0.9, 0.99):
        assert s.quantile(q) == pytest.approx(np.quantile(x, q), rel=0.02)
    clone = QuantileSketch()
    clone.restore(s.snapshot())
    assert clone.n == s.n and clone.quantile(0.99) == s.quantile(0.99)


def test_quantile_sketch_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="relative_accuracy"):
        QuantileSketch(relative_accuracy=1.5)
    assert np.isnan(QuantileSketch().quantile(0.5))


def test_small_and_large_batches_give_the_same_state() -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(-3, 1, 500).tolist()
    h_small, h_large = Histogram((0.01, 0.05, 0.1)), Histogram((0.01, 0.05, 0.1))
    s_small, s_large = QuantileSketch(), QuantileSketch()
    for i in range(0, len(values), 5):
        h_small.observe_many(values[i : i + 5])
        s_small.update_many(values[i : i + 5])
    h_large.observe_many(values)
    s_large.update_many(np.asarray(values))
    assert h_small.counts == h_large.counts and h_small.sum == pytest.approx(h_large.sum)
    assert s_small.snapshot() == s_large.snapshot()
