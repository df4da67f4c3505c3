"""The Source protocol, a poll's records as columns (`Chunk`), and the file sources of `replay`:
JSONL (a line a record's value) and records files (a line a whole Kafka record)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import IO, NamedTuple, Protocol

import msgspec

TopicPartition = tuple[str, int]
Headers = Sequence[tuple[str, bytes | None]]


class RawRecord(NamedTuple):
    """One record, for what needs it whole: an invalid record's log line and dead-letter copy."""

    topic: str
    partition: int
    offset: int
    # Record time in unix seconds; None when the source has none (a file).
    timestamp: float | None
    key: bytes | None
    value: bytes | None
    # Its Kafka headers, (name, value) pairs; None when the source has none (a file).
    headers: Headers | None = None


class Chunk(NamedTuple):
    """The records of one topic-partition from one poll, in offset order, as columns.

    A poll yields a list of chunks; nothing makes an object per record until a record turns out
    to be invalid (`record()`).
    """

    topic: str
    partition: int
    offsets: Sequence[int]
    # Record times in unix seconds; None when the source has none (a file).
    timestamps: Sequence[float | None] | None
    keys: Sequence[bytes | None] | None
    values: Sequence[bytes | None]
    # Records that came through the repartition topic (daemon.ingest.repartition): each one's
    # input (topic, partition, offset), or None; and whether they are labels.
    origins: Sequence[tuple[str, int, int] | None] | None = None
    labels: bool = False
    # Each record's Kafka headers, (name, value) pairs; None when the source has none (a file).
    headers: Sequence[Headers | None] | None = None

    def record(self, i: int) -> RawRecord:
        """Record i as the input had it (its origin, when it came through the repartition topic)."""
        ts = self.timestamps[i] if self.timestamps is not None else None
        key = self.keys[i] if self.keys is not None else None
        headers = self.headers[i] if self.headers is not None else None
        o = self.origins[i] if self.origins is not None else None
        if o is not None:
            return RawRecord(o[0], o[1], o[2], ts, key, self.values[i], headers)
        return RawRecord(self.topic, self.partition, self.offsets[i], ts, key, self.values[i], headers)

    def __len__(self) -> int:
        return len(self.values)


def chunks_of(records: Iterable[RawRecord]) -> list[Chunk]:
    """Records as chunks: one per run of records of the same topic-partition."""
    out: list[Chunk] = []
    run: list[RawRecord] = []
    for r in records:
        if run and (r.topic, r.partition) != (run[0].topic, run[0].partition):
            out.append(_chunk(run))
            run = []
        run.append(r)
    if run:
        out.append(_chunk(run))
    return out


def _chunk(run: list[RawRecord]) -> Chunk:
    return Chunk(
        run[0].topic,
        run[0].partition,
        [r.offset for r in run],
        [r.timestamp for r in run],
        [r.key for r in run],
        [r.value for r in run],
        headers=[r.headers for r in run] if any(r.headers is not None for r in run) else None,
    )


class Source(Protocol):
    """Yields chunks of raw records and takes back the offsets that are safe to commit."""

    def poll(self, timeout_s: float) -> list[Chunk]: ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> bool:
        """Commit next-offsets (last processed + 1). False when the commit did not go through."""
        ...

    def lag(self) -> Mapping[TopicPartition, int]:
        """Records behind the high watermark, per assigned partition."""
        ...

    def close(self) -> None: ...


class PartitionedSource(Source, Protocol):
    """A source whose partitions move between replicas (a consumer group), with state following
    them: the Kafka source, in this process or in a child process of its own.

    The callbacks run inside `poll`: `before_revoke` while the partitions' offsets can still be
    committed (or with True once they are lost: not any more), `after_assign` where `seek` and
    `pause` may set where the new ones start.
    """

    before_revoke: Callable[[list[TopicPartition], bool], None] | None
    after_assign: Callable[[list[TopicPartition]], None] | None

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    def pause(self, tps: list[TopicPartition]) -> None: ...

    def resume(self, tps: list[TopicPartition]) -> None: ...


class JsonlSource:
    """A JSONL file as one partition: the offset of a record is its 0-based line number."""

    def __init__(self, path: str | Path, batch_size: int = 2000) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self._file: IO[bytes] | None = self.path.open("rb")
        self._offset = 0
        self.exhausted = False

    def poll(self, timeout_s: float = 0.0) -> list[Chunk]:
        if self._file is None:
            return []
        lines = list(islice(self._file, self.batch_size))
        if len(lines) < self.batch_size:
            self.exhausted = True
            self.close()
        if not lines:
            return []
        start = self._offset
        self._offset += len(lines)
        return self._chunks(start, [line.rstrip(b"\r\n") for line in lines])

    def _chunks(self, start: int, values: list[bytes]) -> list[Chunk]:
        return [Chunk(self.path.name, 0, range(start, start + len(values)), None, None, values)]

    def commit(self, offsets: Mapping[TopicPartition, int]) -> bool:
        return True

    def lag(self) -> dict[TopicPartition, int]:
        return {}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RecordLine(msgspec.Struct, frozen=True):
    """A Kafka record as one line of a records file (`replay --records`, docs/formats.md): for
    formats whose records say what they are outside the value (seldon: the topic and the key;
    cloudevents-inference's binary mode: the headers)."""

    topic: str
    value: str | None  # base64 of the value's bytes; null: a tombstone
    partition: int = 0
    timestamp_ms: float | None = None
    key: str | None = None
    headers: list[tuple[str, str | None]] = []


class RecordsSource(JsonlSource):
    """A records file: a line a Kafka record, in a chunk per topic-partition of each batch; the
    offset of a record is its 0-based line number. A line that is no record goes on as a record of
    the file's own (topic: the file's name), which its format then counts as invalid."""

    _decode = msgspec.json.Decoder(RecordLine).decode

    def _chunks(self, start: int, values: list[bytes]) -> list[Chunk]:
        parts: dict[TopicPartition, list[tuple[int, RecordLine, bytes | None]]] = {}
        for offset, line in enumerate(values, start):
            try:
                r = self._decode(line)
                value = None if r.value is None else base64.b64decode(r.value, validate=True)
            except (msgspec.DecodeError, binascii.Error):
                r, value = RecordLine(self.path.name, None), line
            parts.setdefault((r.topic, r.partition), []).append((offset, r, value))
        return [
            Chunk(
                topic,
                partition,
                [offset for offset, _, _ in rows],
                [None if r.timestamp_ms is None else r.timestamp_ms / 1000.0 for _, r, _ in rows],
                [None if r.key is None else r.key.encode() for _, r, _ in rows],
                [value for _, _, value in rows],
                headers=[[(k, None if v is None else v.encode()) for k, v in r.headers] for _, r, _ in rows],
            )
            for (topic, partition), rows in parts.items()
        ]
