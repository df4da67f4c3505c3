"""Event-time order across partitions: the aligner's choice of partitions to pause, and the
pipeline's order within a batch read from several partitions."""

from __future__ import annotations

import json

import structlog

from daemon.config import from_mapping
from daemon.export.exposition import LoopStats, MetricsExposition
from daemon.ingest.align import TimeAligner
from daemon.ingest.sources import Chunk, RawRecord, chunks_of
from daemon.runtime.app import build_pipeline
from tests.integration.support import parse, total


def _chunk(topic: str, partition: int, times: list[float]) -> Chunk:
    n = len(times)
    return Chunk(topic, partition, list(range(n)), times, [None] * n, [b"{}"] * n)


def _released(out: list[Chunk]) -> list[tuple[str, int, float]]:
    return [(c.topic, c.partition, t) for c in out for t in c.timestamps or ()]


def test_records_wait_until_every_partition_with_records_left_has_caught_up() -> None:
    a = TimeAligner(["events", "labels"], max_skew_s=1.0)
    parts = [("events", 0), ("events", 1), ("labels", 0)]
    lag = dict.fromkeys(parts, 5)
    passed = a.add([_chunk("events", 0, [10.0, 11.0]), _chunk("events", 1, [14.0, 100.0]), _chunk("other", 0, [1.0])])
    assert _released(passed) == [("other", 0, 1.0)]  # not aligned: passes at once
    # labels-0 may hold the oldest records: nothing goes, and the partitions read are paused.
    out, ahead = a.release(parts, lag, ())
    assert out == [] and ahead == {("events", 0), ("events", 1)}
    a.add([_chunk("labels", 0, [10.5, 12.0])])
    out, ahead = a.release(parts, lag, ())  # the floor is 11.0, events-0's newest
    assert _released(out) == [("events", 0, 10.0), ("events", 0, 11.0), ("labels", 0, 10.5)]
    assert ahead == {("events", 1)}  # 100 is more than 1 s past the floor
    # A partition paused for another reason (state not restored) cannot deliver: it holds nobody.
    out, ahead = a.release(parts, lag, {("events", 0)})
    assert _released(out) == [("labels", 0, 12.0)] and ahead == {("events", 1)}
    # A partition with nothing left to read holds nobody back: live traffic is never held.
    out, ahead = a.release(parts, {**lag, ("events", 0): 0, ("labels", 0): 0}, ())
    assert _released(out) == [("events", 1, 14.0), ("events", 1, 100.0)] and ahead == set()
    assert a.buffered == {}


def test_a_partition_not_read_yet_holds_the_others_for_a_while() -> None:
    now = [0.0]
    a = TimeAligner(["events"], max_skew_s=1.0, clock=lambda: now[0])
    parts = [("events", 0), ("events", 1)]
    a.add([_chunk("events", 0, [10.0])])
    assert a.release(parts, {}, ()) == ([], {("events", 0)})  # events-1 may hold older records
    now[0] = 6.0  # it said nothing for too long
    assert _released(a.release(parts, {}, ())[0]) == [("events", 0, 10.0)]
    # Records without times (an old message format) take no part; forgotten partitions lose their buffer.
    b = TimeAligner(["events"], max_skew_s=1.0)
    b.add([Chunk("events", 1, [0], None, [None], [b"{}"]), _chunk("events", 0, [5.0])])
    b.add([_chunk("events", 2, [1.0])])
    b.forget([("events", 2)])
    assert [(c.partition, len(c)) for c in b.release(parts, {}, ())[0]] == [(1, 1), (0, 1)]
    assert b.buffered == {}


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


def test_a_model_seen_on_a_second_partition_is_counted_and_logged_never_split() -> None:
    config = from_mapping({})
    pipeline = build_pipeline(config)
    records = [
        RawRecord(
            "events", i % 3, i, 1_764_000_000.0 + i, None, json.dumps({"request_id": f"r{i}", "model": m}).encode()
        )
        for i, m in enumerate(["a", "a", "a", "b", "b", "b", "a"])
    ]
    with structlog.testing.capture_logs() as logs:
        pipeline.process(chunks_of(records))
    s = parse(MetricsExposition(pipeline, config.metrics, LoopStats.idle).render().decode())
    # a's home is partition 0 (first seen there): its events on 1 and 2 are counted; b's home is 0 too.
    assert total(s, "inferwatch_events_unkeyed_total", model="a") == 2
    assert total(s, "inferwatch_events_unkeyed_total", model="b") == 2
    assert total(s, "inferwatch_events_total", model="a") == 4  # one series, whole
    lines = [x for x in logs if x["event"] == "model_on_several_partitions"]
    assert {x["model"] for x in lines} == {"a", "b"} and all("repartition" in x["hint"] for x in lines)
