"""The kafka-python 2.2 consumer client (the default)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import structlog
from kafka import KafkaConsumer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KafkaTP

from daemon.config import KafkaConfig
from daemon.ingest import topics as topic_entries
from daemon.ingest.clients import Assigned, Revoked
from daemon.ingest.sources import Chunk, TopicPartition

log = structlog.get_logger(__name__)

# A fetch that finds nothing new waits this long at the broker (kafka-python: 500 ms). The
# event-time order holds records back until the slowest partition has delivered; a 500 ms long
# poll on a caught-up partition then stalled a backlog (45% of raw consume end to end, against
# 75% before the order; 100 ms: see docs/benchmarks.md).
FETCH_MAX_WAIT_MS = 100
# What the consumer prefetches is bounded by this per broker: backpressure comes from polling
# only once a batch is processed.
FETCH_MAX_BYTES = 16 * 1024 * 1024


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, on_assigned: Assigned, on_revoked: Revoked) -> None:
        self._assigned = on_assigned
        self._revoked = on_revoked

    def on_partitions_revoked(self, revoked: list[KafkaTP]) -> None:
        # kafka-python cannot tell a revoke from a loss: its commits fail after a loss, and count.
        self._revoked([(tp.topic, tp.partition) for tp in revoked], False)

    def on_partitions_assigned(self, assigned: list[KafkaTP]) -> None:
        self._assigned([(tp.topic, tp.partition) for tp in assigned])


class KafkaPythonClient:
    def __init__(self, config: KafkaConfig, topics: Sequence[str], on_assigned: Assigned, on_revoked: Revoked) -> None:
        self.commit_timeout_ms = config.commit_timeout_ms
        self._consumer = KafkaConsumer(
            bootstrap_servers=list(config.bootstrap_servers),
            group_id=config.group_id,
            client_id=config.client_id,
            enable_auto_commit=False,
            auto_offset_reset=config.auto_offset_reset,
            max_poll_records=config.max_poll_records,
            max_poll_interval_ms=config.max_poll_interval_ms,
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=max(config.session_timeout_ms // 3, 100),
            request_timeout_ms=config.request_timeout_ms,
            # kafka-python 2.2 caps a response frame at 1 MB, below one fetch of two busy
            # partitions (~2 MB): every catch-up then logged InvalidReceiveError and reconnected.
            receive_message_max_bytes=100 * 1024 * 1024,
            fetch_max_bytes=FETCH_MAX_BYTES,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            # Range alone (the partitions of equal-sized topics go together; kafka-python's default
            # also offers round robin, which does not): see open_client's co_partitioned.
            partition_assignment_strategy=(RangePartitionAssignor,),
        )
        listener = _Listener(on_assigned, on_revoked)
        if any(map(topic_entries.is_pattern, topics)):  # names or one pattern, not both
            self._consumer.subscribe(pattern=topic_entries.one_pattern(topics), listener=listener)
        else:
            self._consumer.subscribe(topics=list(topics), listener=listener)

    def poll(self, timeout_s: float) -> list[Chunk]:
        return chunks(self._consumer.poll(timeout_ms=int(timeout_s * 1000)))

    def assignment(self) -> set[TopicPartition]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def pause(self, tps: Collection[TopicPartition]) -> None:
        if tps:
            self._consumer.pause(*(KafkaTP(*tp) for tp in tps))

    def resume(self, tps: Collection[TopicPartition]) -> None:
        if tps:
            self._consumer.resume(*(KafkaTP(*tp) for tp in tps))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._consumer.seek(KafkaTP(*tp), offset)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        todo = {KafkaTP(*tp): OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}
        self._consumer.commit(todo, timeout_ms=self.commit_timeout_ms)

    def unread(self) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        c = self._consumer
        for tp in c.assignment():
            # The high watermark from fetch responses, not end_offsets(): correct on every
            # broker, and free (docs/operations.md, Kafka consumer).
            hw = c.highwater(tp)
            if hw is None:
                continue
            try:
                pos = c.position(tp, timeout_ms=0)
            except Exception:
                continue
            if pos is not None:
                out[(tp.topic, tp.partition)] = max(hw - pos, 0)
        return out

    def close(self) -> None:
        self._consumer.close(autocommit=False)


def chunks(polled: Mapping[Any, Sequence[Any]]) -> list[Chunk]:
    """kafka-python's poll() result as chunks: one per topic-partition, its records as columns."""
    return [
        Chunk(
            tp.topic,
            tp.partition,
            [r.offset for r in records],
            [r.timestamp / 1000.0 if r.timestamp >= 0 else None for r in records],
            [r.key for r in records],
            [r.value for r in records],
            headers=[r.headers for r in records],
        )
        for tp, records in polled.items()
        if records
    ]
