"""Re-keying by model through an internal topic, as Kafka Streams repartitions: any keying works.

The state of a model must live in one place. When producers do not key by model
(`source.kafka.repartition: true`), the source does two stages on one consumer:

- the stateless stage reads the input topics (and the labels topic), reads each record's `model`,
  and writes the record unchanged (value and time) to `<group_id>-inferwatch-repartition`, on the
  partition its model hashes to; once the broker has acknowledged a poll's records, it commits
  their input offsets. Events and labels of a model land on the same partition, so the label
  join is co-partitioned whatever the producers' keys.
- the stateful stage (the pipeline, checkpoints) reads the repartition topic only: each of its
  partitions is a set of models, whole.

A record's key on the repartition topic says what it was and where it came from:
`<E|L><topic>\\0<partition>\\0<offset>\\0<model>` (event or label). Its origin serves the dead-letter
copy, and makes the hand-off exact: a crash between the broker's acknowledgement and the input
commit writes a poll's records again, and the stateful stage drops every record whose origin it
has already seen (each partition's state keeps the newest input offset seen per input partition,
checkpointed with it). Within a repartition partition the records of one input partition arrive
in offset order: the producer keeps one request in flight.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Iterable, Sequence
from typing import Any, NamedTuple

import msgspec
import structlog
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2

from daemon.ingest.sources import Chunk, TopicPartition

log = structlog.get_logger(__name__)

EVENT, LABEL = b"E", b"L"


def topic_name(group_id: str) -> str:
    return f"{group_id}-inferwatch-repartition"


class _Model(msgspec.Struct):
    model: str


_model = msgspec.json.Decoder(_Model).decode


def model_of(value: bytes | None) -> bytes:
    """The record's model, as bytes; b"" when it has none (the stateful stage counts it invalid)."""
    if value is None:
        return b""
    try:
        return _model(value).model.encode()
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return b""


def partition_of(model: bytes, partitions: int) -> int:
    return int((murmur2(model) & 0x7FFFFFFF) % partitions)


def key(kind: bytes, topic: str, partition: int, offset: int, model: bytes) -> bytes:
    return b"%s%s\0%d\0%d\0%s" % (kind, topic.encode(), partition, offset, model)


class Origin(NamedTuple):
    label: bool
    topic: str
    partition: int
    offset: int


def origin(k: bytes | None) -> Origin | None:
    """Where a repartitioned record came from; None for a key this stage did not write."""
    if not k or k[:1] not in (EVENT, LABEL):
        return None
    parts = k[1:].split(b"\0", 3)
    if len(parts) != 4:
        return None
    try:
        return Origin(k[:1] == LABEL, parts[0].decode(), int(parts[1]), int(parts[2]))
    except (UnicodeDecodeError, ValueError):
        return None


class Unwrapped(NamedTuple):
    """A repartition chunk split back: its events and its labels (records in the chunk's offsets,
    with their origins), and how many records were dropped as already seen."""

    events: Chunk | None
    labels: Chunk | None
    duplicates: int


def unwrap(chunk: Chunk, seen: dict[str, int]) -> Unwrapped:
    """Split a repartition chunk into events and labels, dropping records whose origin `seen` (the
    newest input offset seen per input partition, "topic/partition") already covers; updates it."""
    keep: tuple[list[int], list[int]] = ([], [])
    origins: tuple[list[Any], list[Any]] = ([], [])
    duplicates = 0
    keys = chunk.keys or [None] * len(chunk)
    for i, k in enumerate(keys):
        o = origin(k)
        if o is None:  # not ours: an event without origin (seen by nobody else either)
            keep[0].append(i)
            origins[0].append(None)
            continue
        where = f"{o.topic}/{o.partition}"
        if o.offset <= seen.get(where, -1):
            duplicates += 1
            continue
        seen[where] = o.offset
        keep[o.label].append(i)
        origins[o.label].append((o.topic, o.partition, o.offset))
    return Unwrapped(_take(chunk, keep[0], origins[0]), _take(chunk, keep[1], origins[1], labels=True), duplicates)


def _take(chunk: Chunk, idx: list[int], origins: list[Any], labels: bool = False) -> Chunk | None:
    if not idx:
        return None
    ts = chunk.timestamps
    return Chunk(
        chunk.topic,
        chunk.partition,
        [chunk.offsets[i] for i in idx],
        None if ts is None else [ts[i] for i in idx],
        None,
        [chunk.values[i] for i in idx],
        origins=origins,
        labels=labels,
    )


def ensure_topic(bootstrap_servers: Sequence[str], name: str, inputs: Iterable[str]) -> int:
    """Create the repartition topic with as many partitions as the input's widest topic, if it does
    not exist; return its partition count."""
    admin = KafkaAdminClient(bootstrap_servers=list(bootstrap_servers), client_id="inferwatch-repartition-setup")
    try:
        meta = admin.describe_topics([*inputs])
        counts = [len(t["partitions"]) for t in meta if not t.get("error_code")]
        wanted = max(counts, default=1) or 1
        try:
            admin.create_topics([NewTopic(name, wanted, 1)])
            log.info("repartition_topic_created", topic=name, partitions=wanted)
        except TopicAlreadyExistsError:
            pass
        (topic,) = admin.describe_topics([name])
        have = len(topic["partitions"])
        if have != wanted:
            log.warning("repartition_topic_partitions", topic=name, partitions=have, input_partitions=wanted)
        return have
    finally:
        admin.close()


class Repartitioner:
    """The stateless stage's producer: a poll's input chunks to the repartition topic."""

    def __init__(
        self, bootstrap_servers: Sequence[str], topic: str, labels_topics: Collection[str], timeout_s: float
    ) -> None:
        self.topic = topic
        self.labels_topics = frozenset(labels_topics)
        self.timeout_s = timeout_s
        self._producer = KafkaProducer(
            bootstrap_servers=list(bootstrap_servers),
            acks="all",
            linger_ms=5,
            max_in_flight_requests_per_connection=1,  # a partition's records stay in order
            max_block_ms=int(timeout_s * 1000),
        )
        self._partitions = 0

    def forward(self, chunks: Sequence[Chunk]) -> dict[TopicPartition, int]:
        """Write every record of `chunks` and wait for the broker; return the input offsets to commit.
        Raises KafkaError when the broker did not acknowledge them all: commit nothing then."""
        if not chunks:
            return {}
        if not self._partitions:
            found = self._producer.partitions_for(self.topic)
            if not found:
                raise KafkaError(f"no partitions for {self.topic}")
            self._partitions = len(found)
        n = self._partitions
        send = self._producer.send
        futures = []
        kinds = [LABEL if c.topic in self.labels_topics else EVENT for c in chunks]
        # In time order across the chunks (each chunk's own order kept): the stateful stage reads
        # a model's records as the aligned source released them, oldest first.
        for t, j, i in heapq.merge(*(_times(c, j) for j, c in enumerate(chunks))):
            c = chunks[j]
            value = c.values[i]
            model = model_of(value)
            futures.append(
                send(
                    self.topic,
                    value=value,
                    key=key(kinds[j], c.topic, c.partition, c.offsets[i], model),
                    partition=partition_of(model, n),
                    timestamp_ms=None if t == -math.inf else int(t * 1000),
                )
            )
        self._producer.flush(timeout=self.timeout_s)
        for f in futures:
            if f.failed():
                raise f.exception
            if not f.is_done:
                raise KafkaError("the repartition topic did not acknowledge in time")
        return {(c.topic, c.partition): c.offsets[-1] + 1 for c in chunks}

    def close(self) -> None:
        try:
            self._producer.close(timeout=self.timeout_s)
        except KafkaError as exc:
            log.warning("repartition_close_timed_out", error=repr(exc))


def _times(c: Chunk, j: int) -> list[tuple[float, int, int]]:
    ts = c.timestamps or [None] * len(c)
    return [(-math.inf if t is None else t, j, i) for i, t in enumerate(ts)]


def stages(chunks: Sequence[Chunk], repartition_topic: str) -> tuple[list[Chunk], list[Chunk]]:
    """A poll's chunks as (input chunks for the stateless stage, repartition chunks for the state)."""
    inputs: list[Chunk] = []
    state: list[Chunk] = []
    for c in chunks:
        (state if c.topic == repartition_topic else inputs).append(c)
    return inputs, state
