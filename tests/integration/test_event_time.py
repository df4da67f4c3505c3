"""Event-time order across partitions, against the real broker: a backlog of two partitions, each
written whole before the other, reads in time order; a labels topic an hour ahead of its events
joins."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

from daemon.config import KafkaConfig
from daemon.dev.broker import TansuBroker
from daemon.dev.generator import TrafficGenerator, TrafficSpec
from daemon.ingest.kafka import KafkaSource
from daemon.runtime.logs import SampledLog
from tests.integration.support import running_daemon, total

PER_PARTITION = 1_500
STEP_S = 0.1  # 150 s of event time per partition
T0 = 1_764_000_000.0


def _read_order(bootstrap: str, topic: str, skew_ms: int, client: str) -> list[list[tuple[int, float]]]:
    """(partition, record time) of what each poll returned."""
    config = KafkaConfig(
        bootstrap_servers=(bootstrap,),
        topics=(topic,),
        group_id=f"g-{topic}-{client}",
        client=client,
        max_poll_records=100,
        max_time_skew_ms=skew_ms,
        consumer_process=False,
    )
    source = KafkaSource(config, {}, SampledLog(60))
    polls: list[list[tuple[int, float]]] = []
    deadline = time.monotonic() + 60
    try:
        while sum(map(len, polls)) < 2 * PER_PARTITION and time.monotonic() < deadline:
            polls.append([(c.partition, t) for c in source.poll(0.2) for t in c.timestamps or () if t is not None])
    finally:
        source.close()
    return polls


def _lateness(polls: list[list[tuple[int, float]]]) -> float:
    """How far behind the newest time of the polls before the records of each poll came, at worst
    (the pipeline folds each poll in time order)."""
    newest, worst = -1.0, 0.0
    for poll in polls:
        if poll:
            worst = max(worst, newest - min(t for _, t in poll))
            newest = max(newest, max(t for _, t in poll))
    return worst


def test_a_backlog_of_two_partitions_reads_in_time_order_within_the_skew() -> None:
    with TansuBroker() as broker:
        broker.create_topics(["aligned", "unaligned"], partitions=2)
        producer = KafkaProducer(bootstrap_servers=[broker.bootstrap], linger_ms=20, acks="all")
        for topic in ("aligned", "unaligned"):
            for p in (0, 1):  # partition 0's 150 s, then partition 1's
                for i in range(PER_PARTITION):
                    ts = int((T0 + i * STEP_S) * 1000)
                    producer.send(topic, value=b"{}", partition=p, timestamp_ms=ts)
        producer.flush()
        producer.close()

        for client in ("kafka-python", "confluent"):
            aligned = _read_order(broker.bootstrap, "aligned", 1_000, client)
            read = sorted(r for poll in aligned for r in poll)
            assert read == sorted((p, T0 + i * STEP_S) for p in (0, 1) for i in range(PER_PARTITION)), client
            assert _lateness(aligned) == 0.0, client  # in time order: no poll older than the ones before

        # The same backlog read by a plain consumer comes partition by partition.
        plain = KafkaConsumer("unaligned", bootstrap_servers=[broker.bootstrap], auto_offset_reset="earliest")
        unaligned: list[list[tuple[int, float]]] = []
        deadline = time.monotonic() + 60
        while sum(map(len, unaligned)) < 2 * PER_PARTITION and time.monotonic() < deadline:
            polled = plain.poll(timeout_ms=200, max_records=100).items()
            unaligned.append([(tp.partition, r.timestamp / 1000.0) for tp, records in polled for r in records])
        plain.close()
        assert sum(map(len, unaligned)) == 2 * PER_PARTITION
        print(f"lateness: aligned {_lateness(aligned):.1f} s, plain consumer {_lateness(unaligned):.1f} s")
        assert _lateness(unaligned) > 100


def test_labels_an_hour_ahead_of_their_events_join_with_default_settings(tmp_path: Path, unique: str) -> None:
    """Ground truth that comes an hour after each prediction, both topics a backlog, the labels
    written first: read in event-time order, every label finds its prediction waiting. (Read as
    fetched, labels run ahead and wait for predictions, labels.hold_seconds of wall time, 60 s by
    default: a backlog longer than that to read loses them.)"""
    events_topic, labels_topic = f"ahead-events-{unique}", f"ahead-labels-{unique}"
    spec = TrafficSpec(rate=4, duration_s=2 * 3600, seed=11, start_time=T0)  # 28,800 events over 2 h
    generator = TrafficGenerator(spec)
    events = list(generator.events())
    labels = [{**generator.label(e), "timestamp": e["timestamp"] + 3600} for e in events]
    with TansuBroker() as broker:
        broker.create_topics([events_topic, labels_topic], partitions=2)
        producer = KafkaProducer(bootstrap_servers=[broker.bootstrap], linger_ms=20, acks="all")
        for topic, docs in ((labels_topic, labels), (events_topic, events)):
            for d in docs:
                ts = int(d["timestamp"] * 1000)
                producer.send(topic, key=d["model"].encode(), value=json.dumps(d).encode(), timestamp_ms=ts)
        producer.flush()
        producer.close()
        config = {
            "source": {"kafka": {"bootstrap_servers": [broker.bootstrap], "topics": [events_topic]}},
            "labels": {"topic": labels_topic},
        }
        held = 0.0
        with running_daemon(tmp_path, config) as d:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                s = d.scrape()
                held = max(held, total(s, "inferwatch_label_join_entries", store="held_labels"))
                if total(s, "inferwatch_labels_total") >= len(labels):
                    break
                time.sleep(0.1)
            outcomes = {o: total(d.scrape(), "inferwatch_labels_total", outcome=o) for o in ("joined", "unmatched")}
    print(f"labels: {outcomes}, at most {held:.0f} held waiting for their prediction")
    assert outcomes["joined"] >= 0.99 * len(labels), outcomes
    # The order, not the hold, does it: labels never wait for predictions in numbers.
    assert held <= 0.01 * len(labels), held
