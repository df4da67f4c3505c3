"""Event-time order across partitions, against the real broker: a backlog of two partitions, each
written whole before the other, reads in time order within the configured skew."""

from __future__ import annotations

import time

from kafka import KafkaProducer

from daemon.config import KafkaConfig
from daemon.dev.broker import TansuBroker
from daemon.ingest.kafka import KafkaSource
from daemon.runtime.logs import SampledLog

PER_PARTITION = 1_500
STEP_S = 0.1  # 150 s of event time per partition
T0 = 1_764_000_000.0


def _read_order(bootstrap: str, topic: str, skew_ms: int) -> list[tuple[int, float]]:
    config = KafkaConfig(
        bootstrap_servers=(bootstrap,),
        topics=(topic,),
        group_id=f"g-{topic}",
        max_poll_records=100,
        max_time_skew_ms=skew_ms,
        consumer_process=False,
    )
    source = KafkaSource(config, {}, SampledLog(60))
    read: list[tuple[int, float]] = []
    deadline = time.monotonic() + 60
    try:
        while len(read) < 2 * PER_PARTITION and time.monotonic() < deadline:
            for c in source.poll(0.2):
                assert c.timestamps is not None
                read += [(c.partition, t) for t in c.timestamps if t is not None]
    finally:
        source.close()
    return read


def _lateness(read: list[tuple[int, float]]) -> float:
    """How far behind the newest time read so far the records came, at worst."""
    newest, worst = -1.0, 0.0
    for _, t in read:
        worst = max(worst, newest - t)
        newest = max(newest, t)
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

        aligned = _read_order(broker.bootstrap, "aligned", 1_000)
        assert sorted(aligned) == sorted((p, T0 + i * STEP_S) for p in (0, 1) for i in range(PER_PARTITION))
        # Within the skew plus one poll's span (100 records, 10 s) of the newest read.
        assert _lateness(aligned) <= 1.0 + 100 * STEP_S + 0.01

        # The same backlog with the skew bound off (a huge skew) comes partition by partition.
        unaligned = _read_order(broker.bootstrap, "unaligned", 10**9)
        assert len(unaligned) == 2 * PER_PARTITION
        assert _lateness(unaligned) > 100
