"""Kafka source: consumer group, manual commits, lag from the high watermark; and the dead-letter copy.

Values stay bytes here: parsing happens in the pipeline, because a deserializer exception would
escape `poll()` and lose the good records around it (docs/operations.md, Kafka consumer). The
consumer itself is a client of `source.kafka.client`'s library (daemon/ingest/clients).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping

import structlog
from kafka import KafkaProducer
from kafka.errors import KafkaError

from daemon.config import KafkaConfig
from daemon.ingest import repartition
from daemon.ingest import topics as topic_entries
from daemon.ingest.align import TimeAligner
from daemon.ingest.clients import open_client
from daemon.ingest.decode import DecodeFailure
from daemon.ingest.repartition import Repartitioner
from daemon.ingest.sources import Chunk, RawRecord, TopicPartition
from daemon.runtime.logs import SampledLog

log = structlog.get_logger(__name__)


class KafkaSource:
    """Polls batches and commits explicit offsets; survives broker outages without a restart.

    `before_revoke` is called with the partitions about to be taken away, while their offsets
    are still ours to commit (the app flushes its sinks and commits there), or lost (True: the
    group gave them away already, nothing of theirs may be committed).

    With `repartition`, the source also runs the stateless stage (daemon/ingest/repartition.py):
    what it polls from the input topics it writes to the repartition topic and commits itself;
    its caller sees the repartition topic only (its chunks, partitions, callbacks and commits).
    """

    def __init__(
        self, config: KafkaConfig, errors: dict[str, int], sampled: SampledLog, extra_topics: tuple[str, ...] = ()
    ) -> None:
        self.config = config
        self.errors = errors
        self._sampled = sampled
        self.before_revoke: Callable[[list[TopicPartition], bool], None] | None = None
        # Called with newly assigned partitions, where seek() may move them (a checkpoint's offsets).
        self.after_assign: Callable[[list[TopicPartition]], None] | None = None
        topics = list(dict.fromkeys([*config.topics, *extra_topics]))
        self._aligner = TimeAligner(topics, config.max_time_skew_ms / 1000.0)
        self._forwarder: Repartitioner | None = None
        self.repartition_topic: str | None = None
        if config.repartition:
            self.repartition_topic = repartition.topic_name(config.group_id)
            repartition.ensure_topic(config.bootstrap_servers, self.repartition_topic, topics)
            self._forwarder = Repartitioner(
                config.bootstrap_servers, self.repartition_topic, extra_topics, config.commit_timeout_ms / 1000.0
            )
            topics.append(self.repartition_topic)
        # Paused because the caller asked (state not restored yet), and because they run ahead.
        self._held: set[TopicPartition] = set()
        self._ahead: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        # State is kept per partition number: with one stateful topic (the repartition topic, or a
        # single input without labels) any assignor will do, else partition i of every topic must
        # go to one member (the labels join, several inputs, a pattern's topics), which only range
        # guarantees.
        single = self.repartition_topic is not None or (len(topics) == 1 and not topic_entries.is_pattern(topics[0]))
        self._client = open_client(
            config, topics, self._on_assigned, self.on_revoked, cooperative=config.cooperative and single
        )

    def _error(self, operation: str, exc: BaseException) -> None:
        self.errors[operation] = self.errors.get(operation, 0) + 1
        self._sampled.warning(log, f"kafka_{operation}", "kafka_error", operation=operation, error=repr(exc))

    def poll(self, timeout_s: float) -> list[Chunk]:
        try:
            polled = self._client.poll(timeout_s)
        except KafkaError as exc:
            self._error("poll", exc)
            return []
        out = self._align(polled)
        if self._forwarder is None:
            return out
        assert self.repartition_topic is not None
        inputs, state = repartition.stages(out, self.repartition_topic)
        if inputs:
            self._forward(inputs)
        return state

    def _forward(self, inputs: list[Chunk]) -> None:
        """The stateless stage: re-key, wait for the broker, commit the input. On failure, read the
        records again (the stateful stage drops those that did get through)."""
        assert self._forwarder is not None
        try:
            done = self._forwarder.forward(inputs)
        except KafkaError as exc:
            self._error("repartition", exc)
            for c in inputs:
                self.seek((c.topic, c.partition), c.offsets[0])
            return
        self.commit(done)

    def stateful(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        """The partitions whose records change state: the repartition topic's, when there is one."""
        if self.repartition_topic is None:
            return tps
        return [tp for tp in tps if tp[0] == self.repartition_topic]

    def _align(self, polled: list[Chunk]) -> list[Chunk]:
        """What the poll read, in event-time order across partitions (daemon/ingest/align.py)."""
        out = self._aligner.add(polled)
        released, ahead = self._aligner.release(list(self._client.assignment()), self._client.unread(), self._held)
        if ahead != self._ahead:
            self._ahead = ahead
            self._apply_pauses()
        return out + released

    def _apply_pauses(self) -> None:
        want = self._held | self._ahead
        self._client.pause(want - self._paused)
        self._client.resume(self._paused - want)
        self._paused = want

    def commit(self, offsets: Mapping[TopicPartition, int]) -> bool:
        """Commit next-offsets of partitions still assigned. False when the broker refused."""
        assigned = self._client.assignment()
        todo = {tp: off for tp, off in offsets.items() if tp in assigned}
        if not todo:
            return True
        try:
            self._client.commit(todo)
        except KafkaError as exc:
            self._error("commit", exc)
            return False
        return True

    def _on_assigned(self, partitions: list[TopicPartition]) -> None:
        log.info("partitions_assigned", partitions=sorted(f"{t}-{p}" for t, p in partitions))
        if self.after_assign is not None:
            self.after_assign(self.stateful(partitions))

    def on_revoked(self, partitions: list[TopicPartition], lost: bool) -> None:
        log.info("partitions_revoked", partitions=sorted(f"{t}-{p}" for t, p in partitions), lost=lost)
        # The clients forget a revoked partition's pause; so does this source.
        gone = set(partitions)
        self._held -= gone
        self._ahead -= gone
        self._paused -= gone
        self._aligner.forget(gone)
        if self.before_revoke is not None:
            self.before_revoke(self.stateful(partitions), lost)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._client.seek(tp, offset)
        except KafkaError as exc:
            self._error("seek", exc)
        self._aligner.forget([tp])

    def pause(self, tps: list[TopicPartition]) -> None:
        """Fetch nothing from `tps` until `resume` (their state is not restored yet). Partitions
        paused for running ahead stay paused until they no longer do."""
        self._held |= set(tps)
        self._apply_pauses()

    def resume(self, tps: list[TopicPartition]) -> None:
        self._held -= set(tps)
        self._apply_pauses()

    def lag(self) -> dict[TopicPartition, int]:
        """Records not processed yet: not read, or read and waiting for their turn."""
        out = self._client.unread()
        for tp, c in self._aligner.buffered.items():
            out[tp] = out.get(tp, 0) + len(c)
        return out

    def close(self) -> None:
        if self._forwarder is not None:
            self._forwarder.close()
        try:
            self._client.close()
        except KafkaError as exc:
            self._error("close", exc)


# How long a dead-letter copy waits at the buffer's cap for the broker to acknowledge earlier ones.
CONGESTED_WAIT_S = 1.0


class KafkaDeadLetter:
    """Copies invalid records, with their headers, to a topic with Kafka Connect's error headers.

    At most `max_buffered_bytes` of record values wait for the broker's acknowledgement at once
    (kafka-python ignores buffer_memory). At the cap the loop waits up to CONGESTED_WAIT_S for the
    broker to catch up, as a healthy broker does after a burst of invalid records; if it does not
    (it is away), records are counted as "dropped", not held, and the loop does not wait again
    until the copies in flight have drained to half the cap.
    """

    def __init__(
        self, bootstrap_servers: tuple[str, ...], topic: str, counts: dict[str, int], max_buffered_bytes: int
    ) -> None:
        self.topic = topic
        self.counts = counts
        self.max_buffered_bytes = max_buffered_bytes
        # Callbacks run on the producer's I/O thread.
        self._lock = threading.Lock()
        self.buffered_bytes = 0
        self._congested = False
        # max_block_ms: send() must not stall the loop for kafka-python's default 60 s when the
        # topic's metadata is unavailable; the record is counted as failed instead.
        self._producer = KafkaProducer(
            bootstrap_servers=list(bootstrap_servers), acks="all", linger_ms=5, max_block_ms=1000
        )

    def _done(self, size: int, outcome: str) -> None:
        with self._lock:
            self.buffered_bytes -= size
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
            if self.buffered_bytes <= self.max_buffered_bytes // 2:
                self._congested = False

    def send(self, record: RawRecord, failure: DecodeFailure) -> None:
        # The record's own headers first, as Kafka Connect's dead-letter queue keeps them (one
        # without a value cannot be written by this producer: it is left out).
        own = [(k, v) for k, v in record.headers or () if isinstance(k, str) and isinstance(v, bytes)]
        size = len(record.value or b"") + len(record.key or b"") + sum(len(k) + len(v) for k, v in own)
        if self.buffered_bytes + size > self.max_buffered_bytes and not self._congested:
            with contextlib.suppress(KafkaError):  # a burst: let the broker catch up
                self._producer.flush(timeout=CONGESTED_WAIT_S)
        with self._lock:
            if self.buffered_bytes + size > self.max_buffered_bytes:
                self._congested = True
                self.counts["dropped"] = self.counts.get("dropped", 0) + 1
                return
            self.buffered_bytes += size
        headers = [
            *own,
            ("__connect.errors.topic", record.topic.encode()),
            ("__connect.errors.partition", str(record.partition).encode()),
            ("__connect.errors.offset", str(record.offset).encode()),
            ("__connect.errors.exception.class.name", f"inferwatch.{failure.reason}".encode()),
            ("__connect.errors.exception.message", failure.detail.encode("utf-8", "replace")),
        ]
        try:
            fut = self._producer.send(self.topic, value=record.value, key=record.key, headers=headers)
        except KafkaError:
            self._done(size, "failed")
            return
        fut.add_callback(lambda _md: self._done(size, "sent"))
        fut.add_errback(lambda _exc: self._done(size, "failed"))

    def flush(self, timeout_s: float) -> bool:
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            log.warning("dead_letter_flush_failed", error=repr(exc))
            return False
        return True

    def close(self, timeout_s: float = 5) -> None:
        """Give waiting copies `timeout_s` to be acknowledged, then drop them (the broker may be
        away at shutdown: that must not fail the shutdown)."""
        try:
            self._producer.close(timeout=timeout_s)
        except KafkaError as exc:
            log.warning("dead_letter_close_timed_out", error=repr(exc), buffered_bytes=self.buffered_bytes)
