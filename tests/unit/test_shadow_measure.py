"""Shadow timing: single-stream windows and stopping, offline throughput, server queueing, ABBA pairs.

A fake clock makes latencies exact: `run` advances it by the query's latency. Latencies are
multiples of powers of two, so sums of them are exact in binary floating point.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from daemon.config import ServerConfig, SingleStreamConfig
from daemon.shadow.measure import interleaved, offline, server, single_stream, warm_up


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def runner(self, latency: Callable[[Any], float]) -> Callable[[Any], None]:
        def run(feed: Any) -> None:
            self.now += latency(feed)

        return run


def test_quantiles_come_from_the_counted_windows() -> None:
    # 100 feeds whose latencies are 1..100 / 4096 s; a window is exactly one pass over them.
    t = FakeTime()
    feeds = [j / 4096 for j in range(1, 101)]
    cfg = SingleStreamConfig(min_queries=300, min_duration_seconds=0, window_seconds=sum(feeds))
    r = single_stream(t.runner(lambda f: f), feeds, cfg, clock=t.clock)
    assert r.stable and r.reason is None
    assert (r.windows, r.queries, r.total_queries) == (3, 300, 300)
    assert r.p50 == 50.5 / 4096
    expected = np.quantile(np.array(feeds * 3), [0.5, 0.9, 0.99])
    assert (r.p50, r.p90, r.p99) == tuple(expected)
    assert r.mean == pytest.approx(50.5 / 4096)
    assert r.window_p50s == (50.5 / 4096,) * 3
    assert r.duration_seconds == 3 * sum(feeds)


def test_constant_latency_is_stable_once_enough_queries_and_time() -> None:
    # 64 queries per 0.25 s window: 3 windows hold 192 < 200 queries, so 4 are counted; 1 s minimum.
    t = FakeTime()
    cfg = SingleStreamConfig(min_queries=200, min_duration_seconds=1.0, window_seconds=0.25)
    r = single_stream(t.runner(lambda f: 1 / 256), [0], cfg, clock=t.clock)
    assert r.stable
    assert (r.windows, r.queries, r.total_queries) == (4, 256, 256)
    assert r.queries >= cfg.min_queries
    assert r.p50 == r.p99 == 1 / 256
    assert r.duration_seconds == 1.0


def test_min_duration_keeps_a_stable_run_going() -> None:
    t = FakeTime()
    cfg = SingleStreamConfig(min_queries=10, min_duration_seconds=2.0, window_seconds=0.25, max_windows=3)
    r = single_stream(t.runner(lambda f: 1 / 256), [0], cfg, clock=t.clock)
    assert r.stable and r.windows == 8 and r.duration_seconds == 2.0
    # Only the last 3 windows are counted: they already hold min_queries.
    assert (r.queries, r.total_queries) == (192, 512)


def test_alternating_windows_are_flagged_unstable() -> None:
    # Even seconds run at 1/128 s a query, odd ones at 1/64 s: window p50s alternate 2x.
    t = FakeTime()
    cfg = SingleStreamConfig(min_queries=100, min_duration_seconds=0, window_seconds=1.0, max_windows=5)
    r = single_stream(t.runner(lambda f: 1 / 128 if int(t.now) % 2 == 0 else 1 / 64), [0], cfg, clock=t.clock)
    assert not r.stable
    assert r.windows == 5
    assert r.window_p50s == (1 / 128, 1 / 64, 1 / 128, 1 / 64, 1 / 128)
    assert r.reason == "last 3 windows' p50 spread 100.0% > 10.0%"
    assert r.to_dict()["window_p50s"] == list(r.window_p50s)


def test_a_slow_model_stops_at_max_duration() -> None:
    # 0.75 s a query, 0.5 s windows: one query per window; 8 queries fit in 6 s.
    t = FakeTime()
    cfg = SingleStreamConfig(window_seconds=0.5, max_duration_seconds=6.0)
    r = single_stream(t.runner(lambda f: 0.75), [0], cfg, clock=t.clock)
    assert not r.stable
    assert r.windows == r.total_queries == r.queries == 8
    assert r.duration_seconds == 6.0
    assert r.reason == "max_duration_seconds reached with 8 queries < 662"


def test_single_stream_with_the_real_clock() -> None:
    cfg = SingleStreamConfig(min_queries=20, min_duration_seconds=0.05, window_seconds=0.02, max_duration_seconds=2)
    r = single_stream(lambda f: time.sleep(f), [0.001], cfg)
    assert r.total_queries >= 20
    assert 0.001 <= r.p50 <= r.p90 <= r.p99


def test_warm_up_cycles_through_feeds() -> None:
    seen: list[int] = []
    warm_up(seen.append, [1, 2, 3], 7)
    assert seen == [1, 2, 3, 1, 2, 3, 1]
    with pytest.raises(ValueError, match="no feeds"):
        warm_up(seen.append, [], 1)


def test_offline_throughput_is_exact() -> None:
    t = FakeTime()
    calls: list[Any] = []

    def run(feed: Any) -> None:
        calls.append(feed)
        t.now += 0.25

    r = offline(run, "batch", 8, 2.0, clock=t.clock)
    assert (r.batch_size, r.batches, r.duration_seconds, r.samples_per_second) == (8, 8, 2.0, 32.0)
    assert len(calls) == 8 + 2  # two warm-up calls, untimed
    short = offline(run, "batch", 8, 0.1, clock=t.clock)
    assert (short.batches, short.duration_seconds, short.samples_per_second) == (5, 1.25, 32.0)


def _expected_server_latencies(qps: float, n: int, service: float, seed: int = 0) -> np.ndarray:
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1 / qps, n))
    done, out = 0.0, []
    for a in arrivals:
        done = max(a, done) + service
        out.append(done - a)
    return np.array(out)


def test_server_queueing_shows_in_latency() -> None:
    # 10 ms a query at 1,000 qps: the queue grows and latency far exceeds the service time.
    t = FakeTime()
    cfg = ServerConfig(target_qps=1_000, latency_bound_ms=50, queries=200)
    r = server(t.runner(lambda f: 0.01), [0], cfg, clock=t.clock, sleep=t.sleep)
    expected = _expected_server_latencies(1_000, 200, 0.01)
    assert r.p99 == pytest.approx(np.quantile(expected, 0.99))
    assert r.p50 == pytest.approx(np.quantile(expected, 0.5))
    assert r.mean == pytest.approx(np.mean(expected))
    assert r.p50 > 0.5  # about 100 queries queued ahead
    assert r.achieved_qps == pytest.approx(100.0, rel=0.01)
    assert not r.met and not r.valid
    assert r.latency_bound_seconds == 0.05


def test_server_idle_between_arrivals_meets_the_bound() -> None:
    t = FakeTime()
    cfg = ServerConfig(target_qps=10, latency_bound_ms=50, queries=700)
    r = server(t.runner(lambda f: 0.001), [0], cfg, clock=t.clock, sleep=t.sleep)
    expected = _expected_server_latencies(10, 700, 0.001)
    assert r.p99 == pytest.approx(np.quantile(expected, 0.99))
    assert r.p50 == pytest.approx(0.001)
    assert r.met and r.valid
    assert len(t.sleeps) > 600  # it sleeps while idle rather than spinning
    assert r.achieved_qps == pytest.approx(10, rel=0.1)


def test_interleaved_runs_abba_on_the_same_samples() -> None:
    t = FakeTime()
    calls: list[str] = []

    def model(name: str, latency: float) -> Callable[[Any], None]:
        def run(feed: Any) -> None:
            calls.append(f"{name}:{feed}")
            t.now += latency

        return run

    lat_a, lat_b = interleaved(model("a", 1.0), ["x0", "x1", "x2"], model("b", 2.0), ["y0", "y1", "y2"], 5, t.clock)
    assert calls == [
        "a:x0", "b:y0",
        "b:y1", "a:x1",
        "a:x2", "b:y2",
        "b:y0", "a:x0",
        "a:x1", "b:y1",
    ]  # fmt: skip
    assert lat_a.dtype == lat_b.dtype == np.float64
    assert lat_a.tolist() == [1.0] * 5 and lat_b.tolist() == [2.0] * 5
    with pytest.raises(ValueError, match="differ in length"):
        interleaved(model("a", 1), [1, 2], model("b", 1), [1], 2, t.clock)
