"""The Source protocol, a poll's records as columns (`Chunk`), and the JSONL file source of `replay`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import IO, NamedTuple, Protocol

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
        o = self.origins[i] if self.origins is not None else None
        if o is not None:
            return RawRecord(o[0], o[1], o[2], ts, key, self.values[i])
        return RawRecord(self.topic, self.partition, self.offsets[i], ts, key, self.values[i])

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
        values = [line.rstrip(b"\r\n") for line in lines]
        return [Chunk(self.path.name, 0, range(start, self._offset), None, None, values)]

    def commit(self, offsets: Mapping[TopicPartition, int]) -> bool:
        return True

    def lag(self) -> dict[TopicPartition, int]:
        return {}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
