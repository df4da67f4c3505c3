"""Event-time order across partitions: the aligner's choice of partitions to pause, and the
pipeline's order within a batch read from several partitions."""

from __future__ import annotations

import json

from daemon.config import from_mapping
from daemon.ingest.align import TimeAligner
from daemon.ingest.sources import Chunk, RawRecord, chunks_of
from daemon.runtime.app import build_pipeline


def _chunk(topic: str, partition: int, times: list[float]) -> Chunk:
    n = len(times)
    return Chunk(topic, partition, list(range(n)), times, [None] * n, [b"{}"] * n)


def test_a_partition_ahead_of_the_slowest_pending_one_is_paused_until_it_catches_up() -> None:
    a = TimeAligner(["events", "labels"], max_skew_s=1.0)
    parts = [("events", 0), ("events", 1), ("labels", 0)]
    a.observe([_chunk("events", 0, [10.0, 11.0]), _chunk("events", 1, [100.0]), _chunk("labels", 0, [11.5])])
    lag = dict.fromkeys(parts, 5)
    assert a.ahead(parts, lag, ()) == {("events", 1)}  # 11.5 is within 1 s of 11.0
    a.observe([_chunk("labels", 0, [99.8])])  # labels read ahead too
    assert a.ahead(parts, lag, ()) == {("events", 1), ("labels", 0)}
    # A partition paused for another reason (state not restored) cannot deliver: it holds nobody.
    assert a.ahead(parts, lag, {("events", 0)}) == set()
    a.observe([_chunk("events", 0, [99.5])])  # the slowest catches up: nobody is ahead
    assert a.ahead(parts, lag, ()) == set()
    # A partition with nothing left to read holds nobody back: live traffic is never paused.
    a.observe([_chunk("labels", 0, [200.0])])
    assert a.ahead(parts, lag, ()) == {("labels", 0)}
    assert a.ahead(parts, {**lag, ("events", 0): 0, ("events", 1): 0}, ()) == set()


def test_a_partition_not_read_yet_holds_the_others_for_a_while() -> None:
    now = [0.0]
    a = TimeAligner(["events"], max_skew_s=1.0, clock=lambda: now[0])
    parts = [("events", 0), ("events", 1), ("other", 0)]
    a.observe([_chunk("events", 0, [10.0]), _chunk("other", 0, [0.0])])
    assert a.ahead(parts, {}, ()) == {("events", 0)}  # events-1 may hold older records
    assert a.ahead(parts, {("events", 1): 0}, ()) == set()  # it has none
    now[0] = 6.0
    assert a.ahead(parts, {}, ()) == set()  # it said nothing for too long
    # Records without times (an old message format) take no part.
    b = TimeAligner(["events"], max_skew_s=1.0)
    b.observe([_chunk("events", 0, [10.0]), Chunk("events", 1, [0], None, [None], [b"{}"])])
    assert b.ahead(parts[:2], {}, ()) == set()


def test_a_batch_from_several_partitions_reaches_drift_in_event_time_order() -> None:
    # Two partitions of one model, a 3 sd shift at t=1000: in offset order per partition, drift
    # would see the shift twice (partition 0's new data, then partition 1's old data, then new).
    config = from_mapping({"drift": {"reference_events": 200, "window_events": 100}})
    alerts: list[object] = []
    pipeline = build_pipeline(config, alert_sink=alerts.extend)
    records = []
    for p in (0, 1):
        for i in range(1_000):
            t = 1_764_000_000.0 + i
            x = (3.0 if i >= 500 else 0.0) + ((i * 7919 + p * 104729) % 1000) / 1000.0
            body = {"request_id": f"{p}-{i}", "model": "m", "timestamp": t, "features": {"x": x}}
            records.append(RawRecord("events", p, i, t, None, json.dumps(body).encode()))
    pipeline.process(chunks_of(records))
    assert [a.stream for a in alerts] == ["feature:x"]  # type: ignore[attr-defined]
