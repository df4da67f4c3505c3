"""Latency and throughput of a model, measured over plain callables (MLPerf scenarios, Triton-style windows).

`run(feed)` is one inference on a feed built beforehand; nothing here knows the ML runtime. The timed
region of every query is `t0 = clock(); run(feed); t1 = clock()`, the same as a bare loop's. Latencies
are in seconds; percentiles use numpy's default linear interpolation between order statistics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import cycle
from time import perf_counter
from typing import Any

import numpy as np

from daemon.config import ServerConfig, SingleStreamConfig

Run = Callable[[Any], Any]
Clock = Callable[[], float]

# MLPerf's minimum query count for a p99 at 99% confidence.
MIN_P99_QUERIES = 662
# Triton perf_analyzer: a run is stable when this many last windows agree.
STABLE_WINDOWS = 3
QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True, slots=True)
class SingleStreamResult:
    """One query at a time; quantiles over the last windows that hold `queries` latencies."""

    queries: int
    total_queries: int
    p50: float
    p90: float
    p99: float
    mean: float
    stable: bool
    windows: int
    window_p50s: tuple[float, ...]
    duration_seconds: float
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "window_p50s": list(self.window_p50s)}


@dataclass(frozen=True, slots=True)
class OfflineResult:
    """Back-to-back calls on one batch: throughput in samples per second."""

    batch_size: int
    batches: int
    samples_per_second: float
    duration_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ServerResult:
    """Poisson arrivals; latency includes queueing. `met`: p99 within the bound; `valid`: enough queries."""

    queries: int
    target_qps: float
    achieved_qps: float
    p50: float
    p90: float
    p99: float
    mean: float
    latency_bound_seconds: float
    met: bool
    valid: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def warm_up(run: Run, feeds: Sequence[Any], queries: int) -> None:
    """`queries` untimed inferences, cycling through `feeds`."""
    _check_feeds(feeds)
    for _, feed in zip(range(queries), cycle(feeds), strict=False):
        run(feed)


def single_stream(
    run: Run, feeds: Sequence[Any], cfg: SingleStreamConfig, clock: Clock = perf_counter
) -> SingleStreamResult:
    """MLPerf SingleStream in windows of `cfg.window_seconds` (at least one query each), until stable or a limit.

    Stable: the last 3 window p50s within `cfg.stability_tolerance`, at least `cfg.min_queries` counted and
    `cfg.min_duration_seconds` elapsed. Unstable: the p50s still disagree after `cfg.max_windows` windows and
    `cfg.min_queries` queries, or `cfg.max_duration_seconds` elapsed first. The quantiles count the last
    k >= 3 windows, k the fewest that hold `cfg.min_queries` latencies (all windows when none do).
    """
    _check_feeds(feeds)
    it = cycle(feeds)
    windows: list[list[float]] = []
    p50s: list[float] = []
    start = now = clock()
    deadline = start + cfg.max_duration_seconds
    while True:
        lat: list[float] = []
        append = lat.append
        end = min(now + cfg.window_seconds, deadline)
        for feed in it:
            t0 = clock()
            run(feed)
            now = clock()
            append(now - t0)
            if now >= end:
                break
        windows.append(lat)
        p50s.append(float(np.median(lat)))
        k = _tail_windows([len(w) for w in windows], cfg.min_queries)
        counted = sum(len(w) for w in windows[-k:])
        spread = _spread(p50s[-STABLE_WINDOWS:]) if len(p50s) >= STABLE_WINDOWS else math.inf
        tol = cfg.stability_tolerance
        if spread <= tol and counted >= cfg.min_queries and now - start >= cfg.min_duration_seconds:
            reason = None
            break
        if (len(windows) >= cfg.max_windows and counted >= cfg.min_queries and spread > tol) or now >= deadline:
            reason = _why_unstable(counted, cfg.min_queries, len(windows), spread, tol)
            break
    latencies = np.concatenate([np.asarray(w) for w in windows[-k:]])
    p50, p90, p99 = _quantiles(latencies)
    return SingleStreamResult(
        queries=counted,
        total_queries=sum(len(w) for w in windows),
        p50=p50,
        p90=p90,
        p99=p99,
        mean=float(latencies.mean()),
        stable=reason is None,
        windows=len(windows),
        window_p50s=tuple(p50s),
        duration_seconds=now - start,
        reason=reason,
    )


def offline(
    run: Run, batch_feed: Any, batch_size: int, duration_seconds: float, clock: Clock = perf_counter
) -> OfflineResult:
    """MLPerf Offline: 2 warm-up calls, then calls on `batch_feed` for >= `duration_seconds` and >= 5 calls."""
    if duration_seconds <= 0:
        raise ValueError(f"duration_seconds must be > 0, got {duration_seconds}")
    run(batch_feed)
    run(batch_feed)
    batches = 0
    start = clock()
    end = start + duration_seconds
    while True:
        run(batch_feed)
        batches += 1
        now = clock()
        if batches >= 5 and now >= end:
            break
    elapsed = now - start
    return OfflineResult(batch_size, batches, batches * batch_size / elapsed, elapsed)


def server(
    run: Run,
    feeds: Sequence[Any],
    cfg: ServerConfig,
    seed: int = 0,
    clock: Clock = perf_counter,
    sleep: Callable[[float], Any] = time.sleep,
) -> ServerResult:
    """MLPerf Server with one query in flight: Poisson arrivals at `cfg.target_qps`, `cfg.queries` queries.

    A query starts at its arrival or when the previous one completes, whichever is later; its latency runs
    from arrival to completion, so queueing (and any oversleep) counts.
    """
    _check_feeds(feeds)
    gaps = np.random.default_rng(seed).exponential(1.0 / cfg.target_qps, cfg.queries)
    latencies: list[float] = []
    append = latencies.append
    start = done = clock()
    for offset, feed in zip(np.cumsum(gaps).tolist(), cycle(feeds), strict=False):
        arrival = start + offset
        now = clock()
        if now < arrival:
            sleep(arrival - now)
        run(feed)
        done = clock()
        append(done - arrival)
    p50, p90, p99 = _quantiles(np.asarray(latencies))
    bound = cfg.latency_bound_ms / 1000.0
    return ServerResult(
        queries=cfg.queries,
        target_qps=cfg.target_qps,
        achieved_qps=cfg.queries / (done - start),
        p50=p50,
        p90=p90,
        p99=p99,
        mean=float(np.mean(latencies)),
        latency_bound_seconds=bound,
        met=p99 <= bound,
        valid=cfg.queries >= MIN_P99_QUERIES,
    )


def interleaved(
    run_a: Run,
    feeds_a: Sequence[Any],
    run_b: Run,
    feeds_b: Sequence[Any],
    queries: int,
    clock: Clock = perf_counter,
) -> tuple[np.ndarray, np.ndarray]:
    """Paired latencies of two models on the same inputs (feeds_a[i] and feeds_b[i] are one sample).

    Pairs alternate ABBA (even pairs a then b, odd pairs b then a) so neither model always runs second.
    """
    _check_feeds(feeds_a)
    if len(feeds_a) != len(feeds_b):
        raise ValueError(f"feeds differ in length: {len(feeds_a)} != {len(feeds_b)}")
    lat_a: list[float] = []
    lat_b: list[float] = []
    pairs = cycle(zip(feeds_a, feeds_b, strict=True))
    for i, (fa, fb) in zip(range(queries), pairs, strict=False):
        if i % 2 == 0:
            t0 = clock()
            run_a(fa)
            t1 = clock()
            run_b(fb)
            t2 = clock()
            lat_a.append(t1 - t0)
            lat_b.append(t2 - t1)
        else:
            t0 = clock()
            run_b(fb)
            t1 = clock()
            run_a(fa)
            t2 = clock()
            lat_b.append(t1 - t0)
            lat_a.append(t2 - t1)
    return np.asarray(lat_a, dtype=np.float64), np.asarray(lat_b, dtype=np.float64)


def _check_feeds(feeds: Sequence[Any]) -> None:
    if len(feeds) == 0:
        raise ValueError("no feeds to run")


def _tail_windows(sizes: Sequence[int], min_queries: int) -> int:
    """The fewest last windows, at least 3, holding `min_queries` latencies; all windows when none do."""
    total = 0
    for k in range(1, len(sizes) + 1):
        total += sizes[-k]
        if k >= STABLE_WINDOWS and total >= min_queries:
            return k
    return len(sizes)


def _spread(values: Sequence[float]) -> float:
    """(max - min) / min."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return 0.0
    return (hi - lo) / lo if lo > 0 else math.inf


def _why_unstable(counted: int, min_queries: int, windows: int, spread: float, tol: float) -> str:
    if counted < min_queries:
        return f"max_duration_seconds reached with {counted} queries < {min_queries}"
    if windows < STABLE_WINDOWS:
        return f"max_duration_seconds reached after {windows} windows < {STABLE_WINDOWS}"
    if spread > tol:
        return f"last {STABLE_WINDOWS} windows' p50 spread {spread:.1%} > {tol:.1%}"
    return "max_duration_seconds reached before min_duration_seconds"


def _quantiles(latencies: np.ndarray) -> tuple[float, float, float]:
    p50, p90, p99 = np.quantile(latencies, QUANTILES).tolist()
    return p50, p90, p99
