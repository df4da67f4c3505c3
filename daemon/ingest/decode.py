"""Bytes in, a typed event or a reason out. Nothing raised here escapes to the loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import islice, repeat
from typing import Any, Generic, NamedTuple, TypeVar

import msgspec
import numpy as np

from daemon.config import PlausibilityConfig, SourceConfig
from daemon.ingest import topics as topic_entries
from daemon.ingest.batch import Batch, build, derive_llm
from daemon.ingest.events import InferenceEvent, Label, LabelEvent, event_time
from daemon.ingest.failures import REASONS, DecodeFailure, failure_of, unreadable
from daemon.ingest.formats import RecordFormat
from daemon.ingest.formats.pairs import PairedFormat
from daemon.ingest.plausible import OutOfRange, enforce
from daemon.ingest.sources import Chunk, Headers, RawRecord

# (request_id, model, label, unix-second timestamp): one record of the labels topic.
LabelRecord = tuple[str, str, Label, float | None]
__all__ = ["REASONS", "ChunkDecoder", "DecodeFailure", "EventDecoder", "LabelRecord", "decode_with"]

T = TypeVar("T", InferenceEvent, LabelEvent)


class EventDecoder(Generic[T]):
    """Decodes one record value at a time into `type_`, reusing a compiled msgspec decoder."""

    def __init__(self, max_bytes: int, type_: type[T]) -> None:
        self.max_bytes = max_bytes
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(type_)
        # Raises on bad input and ignores max_bytes: for callers that check size and fall back
        # to decode() on any exception (the pipeline's hot loop).
        self.fast_decode: Callable[[bytes], T] = self._decoder.decode

    def decode(self, value: bytes | None) -> T | DecodeFailure:
        return decode_with(self._decoder.decode, value, None, self.max_bytes)


def decode_with(
    decode: Callable[..., Any], value: bytes | None, headers: Headers | None, max_bytes: int
) -> Any | DecodeFailure:
    """`decode(value)` (with `headers` when given), or why not: nothing raised gets out."""
    failure = unreadable(value, max_bytes)
    if failure is not None:
        return failure
    try:
        return decode(value) if headers is None else decode(value, headers)
    except Exception as exc:
        return failure_of(exc)
    # Non-finite numbers cannot get here: JSON has no NaN/Infinity literals and msgspec
    # rejects overflowing ones (1e400) as out of range.


class Decoded(NamedTuple):
    """A poll decoded: the inference events as a batch, the labels, the rejects, the values dropped."""

    batch: Batch | None
    # (partition, (request_id, model, label, unix-second timestamp)) of the labels topic's records.
    labels: list[tuple[int, LabelRecord]]
    failures: list[tuple[RawRecord, DecodeFailure]]
    # Values the batch dropped as implausible, per field (daemon.ingest.plausible).
    out_of_range: list[OutOfRange]


class ChunkDecoder:
    """A poll's chunks into a `Decoded`: the per-record loop of the hot path, and nothing else.
    Topics in another format than the native one (config `source.format`) decode record by
    record through it (daemon/ingest/formats)."""

    def __init__(
        self,
        max_bytes: int,
        labels_topic: str | None,
        bounds: PlausibilityConfig,
        source: SourceConfig | None = None,
    ) -> None:
        self.bounds = bounds
        self.events = EventDecoder(max_bytes, InferenceEvent)
        self.labels = EventDecoder(max_bytes, LabelEvent)
        self.labels_topic = labels_topic
        self.source = source or SourceConfig()
        # A decoder per entry of source.formats (None: source.format, for a file and the topics no
        # entry names), one for all the topics it stands for (a paired one joins across them).
        self._built: dict[str | None, RecordFormat | PairedFormat | None] = {None: self.source.format.build()}
        self.formats: dict[str, RecordFormat | PairedFormat | None] = {}  # per topic seen, its entry's

    @property
    def default_format(self) -> RecordFormat | PairedFormat | None:
        return self._built[None]

    def format_of(self, topic: str) -> RecordFormat | PairedFormat | None:
        try:
            return self.formats[topic]
        except KeyError:
            entry = topic_entries.entry_of(self.source.formats, topic)
            if entry not in self._built:
                self._built[entry] = self.source.formats[entry].build()  # type: ignore[index]
            fmt = self.formats[topic] = self._built[entry]
            return fmt

    def decode(self, chunks: Sequence[Chunk]) -> Decoded:
        events: list[InferenceEvent] = []
        partitions: list[int] = []
        offsets: list[int] = []
        times: list[float | None] = []
        labels: list[tuple[int, LabelRecord]] = []
        failures: list[tuple[RawRecord, DecodeFailure]] = []
        for chunk in chunks:
            n = len(chunk)
            if not n:
                continue
            if chunk.labels or chunk.topic == self.labels_topic:
                self._labels(chunk, labels, failures)
                continue
            bad: list[int] = []
            fmt = self.format_of(chunk.topic)
            if isinstance(fmt, PairedFormat):  # pairs of records: its own events, offsets and times
                joined = fmt.decode_chunk(chunk, self.events.max_bytes)
                events += joined.events
                partitions.extend(repeat(chunk.partition, len(joined.events)))
                offsets += joined.offsets
                times += joined.times
                failures += joined.failures
                continue
            if fmt is None:
                self._native(chunk, events, failures, bad)
            else:
                self._formatted(fmt, chunk, events, failures, bad)
            taken = n - len(bad)
            partitions.extend(repeat(chunk.partition, taken))
            rejected = set(bad)
            offsets.extend(chunk.offsets if not bad else [o for i, o in enumerate(chunk.offsets) if i not in rejected])
            if chunk.timestamps is None:
                times.extend(repeat(None, taken))
            elif not bad:
                times.extend(chunk.timestamps)
            else:
                times.extend(t for i, t in enumerate(chunk.timestamps) if i not in rejected)
        batch = build(events, partitions, offsets, times) if events else None
        dropped = []
        if batch is not None:
            dropped = enforce(batch, np.array(times, dtype=np.float64), self.bounds)
            derive_llm(batch)
        return Decoded(batch, labels, failures, dropped)

    def _native(
        self,
        chunk: Chunk,
        events: list[InferenceEvent],
        failures: list[tuple[RawRecord, DecodeFailure]],
        bad: list[int],
    ) -> None:
        """Fast path: sane sizes and valid JSON, decoded at C speed; a record that fails it goes to
        decode(), which says why, and the fast path resumes after it."""
        fast_decode, slow_decode, max_bytes = self.events.fast_decode, self.events.decode, self.events.max_bytes
        values = chunk.values
        n = len(values)
        fast = None not in values and max(map(len, values)) <= max_bytes  # type: ignore[arg-type]
        i = 0
        while i < n:
            if fast:
                before = len(events)
                try:
                    events.extend(map(fast_decode, islice(values, i, None)))  # type: ignore[arg-type]
                    break
                except Exception:  # extend kept the records before the one that failed
                    i += len(events) - before
            decoded = slow_decode(values[i])
            if isinstance(decoded, DecodeFailure):
                failures.append((chunk.record(i), decoded))
                bad.append(i)
            else:
                events.append(decoded)
            i += 1

    def _formatted(
        self,
        fmt: RecordFormat,
        chunk: Chunk,
        events: list[InferenceEvent],
        failures: list[tuple[RawRecord, DecodeFailure]],
        bad: list[int],
    ) -> None:
        """A chunk of another format, record by record: a plain loop while records decode; one that
        fails (or is too big) goes through decode_with(), which says why, and the loop resumes."""
        max_bytes, decode, values = self.events.max_bytes, fmt.decode, chunk.values
        headers: Sequence[Headers | None] = chunk.headers or [None] * len(values)
        append = events.append
        i, n = 0, len(values)
        while i < n:
            try:
                while i < n:
                    value = values[i]
                    if value is None or len(value) > max_bytes:
                        break
                    append(decode(value, headers[i]))
                    i += 1
                else:
                    return
            except Exception:
                pass
            decoded = decode_with(decode, values[i], headers[i] or (), max_bytes)
            if isinstance(decoded, DecodeFailure):
                failures.append((chunk.record(i), decoded))
                bad.append(i)
            else:  # not reached: what raised once raises again
                append(decoded)
            i += 1

    def _labels(
        self, chunk: Chunk, labels: list[tuple[int, LabelRecord]], failures: list[tuple[RawRecord, DecodeFailure]]
    ) -> None:
        decode = self.labels.decode
        for i, value in enumerate(chunk.values):
            label = decode(value)
            if isinstance(label, DecodeFailure):
                failures.append((chunk.record(i), label))
                continue
            record_time = chunk.timestamps[i] if chunk.timestamps is not None else None
            labels.append(
                (
                    chunk.partition,
                    (label.request_id, label.model, label.label, event_time(label.timestamp, record_time)),
                )
            )
