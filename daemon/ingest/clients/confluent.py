"""The confluent-kafka (librdkafka) consumer client, optional: `source.kafka.client: confluent`.

What differs from kafka-python, and why it matters here:
- records are fetched and decoded in C; this module only lays them out as chunks;
- heartbeats run on librdkafka's thread, whatever the loop does;
- static membership: with `group_instance_id` (the pod's name), a restarted replica takes its
  partitions back without a rebalance, and no other member is disturbed;
- cooperative rebalancing (where state is not co-partitioned across topics): a rebalance moves
  only the partitions that change owner; the others keep being consumed.

librdkafka sets a partition's start offset when it is assigned, so a seek made inside the assign
callback (a checkpoint's offset) is carried into the assignment instead.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

import structlog
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as CTP
from kafka.errors import KafkaError as ClientError

from daemon.config import KafkaConfig
from daemon.ingest.clients import Assigned, Revoked
from daemon.ingest.clients.kafka_python import FETCH_MAX_BYTES, FETCH_MAX_WAIT_MS
from daemon.ingest.sources import Chunk, TopicPartition
from daemon.runtime.logs import SampledLog

log = structlog.get_logger(__name__)


# librdkafka reports a broker away (and each failed fetch) again and again: one line per kind
# this often, with the count of those left out.
ERROR_LOG_EVERY_S = 10.0
# Asking the broker where a partition starts (for lag): how long at most, and how long to wait
# before asking again when it did not answer.
START_QUERY_S = 1.0
START_RETRY_S = 5.0


def _failed(exc: BaseException) -> ClientError:
    return ClientError(f"confluent-kafka: {exc}")


class ConfluentClient:
    def __init__(
        self,
        config: KafkaConfig,
        topics: Sequence[str],
        on_assigned: Assigned,
        on_revoked: Revoked,
        *,
        cooperative: bool,
    ) -> None:
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self.cooperative = cooperative
        self.max_records = config.max_poll_records
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        # While the assign callback runs: the start offset of each partition it brings.
        self._starting: dict[TopicPartition, int] | None = None
        self._closing = False
        self._sampled = SampledLog(ERROR_LOG_EVERY_S)
        self.commit_timeout_s = config.commit_timeout_ms / 1000.0
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="kafka-commit")
        self._committing: Future[Any] | None = None
        # Committed offsets of assigned partitions that have delivered no record yet (for lag).
        self._start: dict[TopicPartition, int] = {}
        self._start_retry = 0.0
        self.reset = config.auto_offset_reset
        settings: dict[str, Any] = {
            "bootstrap.servers": ",".join(config.bootstrap_servers),
            "group.id": config.group_id,
            "client.id": config.client_id,
            "enable.auto.commit": False,
            "auto.offset.reset": config.auto_offset_reset,
            "session.timeout.ms": config.session_timeout_ms,
            "heartbeat.interval.ms": max(config.session_timeout_ms // 3, 100),
            "max.poll.interval.ms": config.max_poll_interval_ms,
            "fetch.wait.max.ms": FETCH_MAX_WAIT_MS,
            "fetch.max.bytes": FETCH_MAX_BYTES,
            # The prefetch queue, per consumer (librdkafka's default is 64 MiB).
            "queued.max.messages.kbytes": FETCH_MAX_BYTES // 1024,
            # Once that queue is full, librdkafka waits this long before fetching again (1 s by
            # default): a pipeline that drains it in bursts then waited for data, a tenth of the speed.
            "fetch.queue.backoff.ms": FETCH_MAX_WAIT_MS,
            "partition.assignment.strategy": "cooperative-sticky" if cooperative else "range",
            "error_cb": self._error,
            # librdkafka logs through Python's logging (structlog formats it) instead of stderr.
            "logger": _Logger(),
        }
        if config.group_instance_id:
            settings["group.instance.id"] = config.group_instance_id
        try:
            self._consumer = Consumer(settings)
            # librdkafka takes entries starting with ^ as patterns itself (daemon/ingest/topics.py).
            self._consumer.subscribe(list(topics), on_assign=self._assign, on_revoke=self._revoke, on_lost=self._lose)
        except (KafkaException, ValueError) as exc:
            raise _failed(exc) from None

    def _error(self, err: KafkaError) -> None:
        # Transport errors (broker away) are retried by librdkafka; the loop sees them as lag.
        self._sampled.warning(log, f"client/{err.name()}", "kafka_client_error", error=err.str(), code=err.name())

    # -- rebalance callbacks (inside poll) ---------------------------------------------------

    def _assign(self, consumer: Consumer, parts: list[CTP]) -> None:
        tps = [(p.topic, p.partition) for p in parts]
        self._starting = dict.fromkeys(tps, OFFSET_INVALID)  # OFFSET_INVALID: the committed offset
        try:
            if not self._closing:
                self._on_assigned(tps)
        finally:
            starting, self._starting = self._starting, None
        todo = [CTP(t, p, off) for (t, p), off in starting.items()]
        for tp, off in starting.items():
            self._start.pop(tp, None)
            if off >= 0:
                self._start[tp] = off
        if self.cooperative:
            consumer.incremental_assign(todo)
            self._assigned |= set(tps)
        else:
            consumer.assign(todo)
            self._assigned = set(tps)
        pause = [CTP(*tp) for tp in tps if tp in self._paused]
        if pause:
            consumer.pause(pause)

    def _lose(self, consumer: Consumer, parts: list[CTP]) -> None:
        self._revoke(consumer, parts, lost=True)

    def _revoke(self, consumer: Consumer, parts: list[CTP], lost: bool = False) -> None:
        tps = [(p.topic, p.partition) for p in parts]
        if not self._closing:
            self._on_revoked(tps, lost)
        if self.cooperative:
            consumer.incremental_unassign(parts)
        else:
            consumer.unassign()
        self._assigned -= set(tps)
        self._paused -= set(tps)
        for tp in tps:
            self._start.pop(tp, None)

    # -- the protocol --------------------------------------------------------------------------

    def poll(self, timeout_s: float) -> list[Chunk]:
        try:
            messages = self._consumer.consume(self.max_records, timeout_s)
        except (KafkaException, RuntimeError) as exc:
            raise _failed(exc) from None
        return _chunks(messages, self._sampled)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def pause(self, tps: Collection[TopicPartition]) -> None:
        self._paused |= set(tps)
        live = [CTP(*tp) for tp in tps if tp in self._assigned]
        if live:
            self._consumer.pause(live)

    def resume(self, tps: Collection[TopicPartition]) -> None:
        self._paused -= set(tps)
        live = [CTP(*tp) for tp in tps if tp in self._assigned]
        if live:
            self._consumer.resume(live)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if self._starting is not None and tp in self._starting:
            self._starting[tp] = offset
            return
        self._start[tp] = offset
        try:
            self._consumer.seek(CTP(tp[0], tp[1], offset))
        except KafkaException:
            # Not fetching yet (librdkafka: "erroneous state"): assign it again at the offset.
            self._reassign(tp, offset)

    def _reassign(self, tp: TopicPartition, offset: int) -> None:
        try:
            if self.cooperative:
                self._consumer.incremental_unassign([CTP(*tp)])
                self._consumer.incremental_assign([CTP(tp[0], tp[1], offset)])
            else:  # eager: assign() replaces the whole assignment; the others keep their positions
                others = self._consumer.position([CTP(*o) for o in self._assigned if o != tp])
                for o in others:
                    if o.offset < 0:
                        o.offset = self._start.get((o.topic, o.partition), OFFSET_INVALID)
                self._consumer.assign([*others, CTP(tp[0], tp[1], offset)])
            if tp in self._paused:
                self._consumer.pause([CTP(*tp)])
        except KafkaException as exc:
            raise _failed(exc) from None

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """librdkafka's synchronous commit has no timeout (a hung broker holds it for minutes): it
        runs on a thread of its own, waited for commit_timeout_ms; while one is still waiting, a
        new commit fails at once (and is retried later, as any failed commit)."""
        if self._committing is not None and not self._committing.done():
            raise ClientError("the previous commit is still waiting for the broker")
        todo = [CTP(t, p, off) for (t, p), off in offsets.items()]
        self._committing = self._committer.submit(self._consumer.commit, offsets=todo, asynchronous=False)
        try:
            done = self._committing.result(timeout=self.commit_timeout_s)
        except TimeoutError:
            raise ClientError(f"commit not acknowledged within {self.commit_timeout_s:g} s") from None
        except KafkaException as exc:
            raise _failed(exc) from None
        failed = [f"{p.topic}-{p.partition}: {p.error}" for p in done or () if p.error is not None]
        if failed:
            raise ClientError("commit failed for " + ", ".join(failed))

    def unread(self) -> dict[TopicPartition, int]:
        if not self._assigned:
            return {}
        out: dict[TopicPartition, int] = {}
        try:
            positions = self._consumer.position([CTP(*tp) for tp in self._assigned])
        except KafkaException:
            return out
        for p in positions:
            tp = (p.topic, p.partition)
            try:
                # cached: the watermarks of the last fetch response, no request.
                low, high = self._consumer.get_watermark_offsets(p, cached=True)
            except KafkaException:
                continue
            # librdkafka knows a position once a record came: before, where the partition starts.
            pos = p.offset if p.offset >= 0 else self._start_of(tp, low, high)
            if pos is not None and high >= 0:
                out[tp] = max(high - pos, 0)
        return out

    def _start_of(self, tp: TopicPartition, low: int, high: int) -> int | None:
        """Where an assigned partition that has delivered no record starts: its committed offset
        (asked once, then remembered), else where auto_offset_reset puts it."""
        if tp not in self._start:
            if time.monotonic() < self._start_retry:
                return None
            try:
                (got,) = self._consumer.committed([CTP(*tp)], timeout=START_QUERY_S)
            except KafkaException:
                self._start_retry = time.monotonic() + START_RETRY_S
                return None
            self._start[tp] = got.offset
        start = self._start[tp]
        if start >= 0:
            return start
        return (low if self.reset == "earliest" else high) if low >= 0 else None

    def close(self) -> None:
        self._closing = True
        self._committer.shutdown(wait=False)
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            raise _failed(exc) from None


def _chunks(messages: list[Message], sampled: SampledLog) -> list[Chunk]:
    """A consume() result as chunks: one per topic-partition, records in offset order."""
    runs: dict[
        tuple[str, int], tuple[list[int], list[float | None], list[bytes | None], list[bytes | None], list[Any]]
    ] = {}
    for m in messages:
        err = m.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                where = f"{m.topic()}-{m.partition()}"
                sampled.warning(
                    log, f"fetch/{where}/{err.name()}", "kafka_fetch_error", error=err.str(), partition=where
                )
            continue
        # A record without an error has its topic, partition and offset.
        tp: Any = (m.topic(), m.partition())
        run = runs.get(tp)
        if run is None:
            run = runs[tp] = ([], [], [], [], [])
        kind, ms = m.timestamp()
        run[0].append(cast(int, m.offset()))
        run[1].append(ms / 1000.0 if kind and ms >= 0 else None)
        run[2].append(m.key())
        run[3].append(m.value())
        run[4].append(m.headers())
    return [Chunk(t, p, *cols[:4], headers=cols[4]) for (t, p), cols in runs.items()]


class _Logger:
    """librdkafka's log lines as structlog events (the `logger` setting wants .log())."""

    def log(self, level: int, fmt: str, *args: Any) -> None:
        log.log(level, "librdkafka", message=fmt % args if args else fmt)
