"""Invalid records: counted by reason, logged in samples, optionally copied to a dead-letter topic."""

from __future__ import annotations

from typing import Protocol

import structlog

from daemon.ingest.decode import DecodeFailure
from daemon.ingest.plausible import OutOfRange
from daemon.ingest.sources import RawRecord
from daemon.runtime.logs import SampledLog

log = structlog.get_logger(__name__)


class DeadLetterSink(Protocol):
    def send(self, record: RawRecord, failure: DecodeFailure) -> None: ...

    def flush(self, timeout_s: float) -> bool:
        """Block until every record sent so far is durable. False on timeout or failure."""
        ...

    def close(self) -> None: ...


class InvalidRecords:
    """Logs bad input in samples and copies invalid records to the dead-letter sink; the counts are
    the partitions' (`daemon.state.totals`)."""

    def __init__(self, sampled: SampledLog, dead_letter: DeadLetterSink | None = None) -> None:
        self.sampled = sampled
        self.dead_letter = dead_letter

    def record(self, record: RawRecord, failure: DecodeFailure) -> None:
        self.sampled.warning(
            log,
            failure.reason,
            "invalid_record",
            reason=failure.reason,
            detail=failure.detail,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        if self.dead_letter is not None:
            self.dead_letter.send(record, failure)

    def out_of_range(self, dropped: OutOfRange) -> None:
        self.sampled.warning(
            log,
            f"out_of_range:{dropped.field}",
            "value_out_of_range",
            field=dropped.field,
            value=dropped.value,
            bound=dropped.bound,
            model=dropped.model,
            offset=dropped.position,
            count=dropped.dropped,
        )
