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
        self._sampled = sampled
        self.dead_letter = dead_letter

    def record(self, record: RawRecord, failure: DecodeFailure) -> None:
        suppressed = self._sampled.should_log(failure.reason)
        if suppressed is not None:
            log.warning(
                "invalid_record",
                reason=failure.reason,
                detail=failure.detail,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                suppressed_since_last=suppressed,
            )
        if self.dead_letter is not None:
            self.dead_letter.send(record, failure)

    def out_of_range(self, dropped: OutOfRange) -> None:
        suppressed = self._sampled.should_log(f"out_of_range:{dropped.field}")
        if suppressed is not None:
            log.warning(
                "value_out_of_range",
                field=dropped.field,
                value=dropped.value,
                bound=dropped.bound,
                model=dropped.model,
                offset=dropped.position,
                count=dropped.dropped,
                suppressed_since_last=suppressed,
            )
