"""The Source protocol and the JSONL file source that `replay` uses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, NamedTuple, Protocol

TopicPartition = tuple[str, int]


class RawRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    # Record time in unix seconds; None when the source has none (a file).
    timestamp: float | None
    key: bytes | None
    value: bytes | None


class Source(Protocol):
    """Yields batches of raw records and takes back the offsets that are safe to commit."""

    def poll(self, timeout_s: float) -> Sequence[RawRecord]: ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> bool:
        """Commit next-offsets (last processed + 1). False when the commit did not go through."""
        ...

    def lag(self) -> Mapping[TopicPartition, int]:
        """Records behind the high watermark, per assigned partition."""
        ...

    def close(self) -> None: ...


class JsonlSource:
    """A JSONL file as one partition: the offset of a record is its 0-based line number."""

    def __init__(self, path: str | Path, batch_size: int = 2000) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self._file: IO[bytes] | None = self.path.open("rb")
        self._offset = 0
        self.exhausted = False

    def poll(self, timeout_s: float = 0.0) -> list[RawRecord]:
        if self._file is None:
            return []
        topic = self.path.name
        records: list[RawRecord] = []
        for line in self._file:
            records.append(RawRecord(topic, 0, self._offset, None, None, line.rstrip(b"\r\n")))
            self._offset += 1
            if len(records) >= self.batch_size:
                return records
        self.exhausted = True
        self.close()
        return records

    def commit(self, offsets: Mapping[TopicPartition, int]) -> bool:
        return True

    def lag(self) -> dict[TopicPartition, int]:
        return {}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
