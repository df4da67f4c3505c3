"""decode → route → monitors, one batch at a time. The same pipeline serves Kafka and files."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from daemon.config import Config
from daemon.decode import DecodeFailure, EventDecoder
from daemon.events import InferenceEvent, event_time
from daemon.invalid import InvalidRecords
from daemon.monitors import KeyStats, Overflow
from daemon.routing import Key, KeyTable
from daemon.sources import RawRecord, TopicPartition


class Pipeline:
    """Turns raw records into per-key state. `lock` guards that state against scrapes."""

    def __init__(self, config: Config, invalid: InvalidRecords) -> None:
        self.decoder = EventDecoder(config.limits.max_event_bytes)
        self.overflow = Overflow()
        self.keys: KeyTable[KeyStats] = KeyTable(
            config.limits.max_keys,
            lambda: KeyStats(config.metrics, config.limits, self.overflow),
            self.overflow,
        )
        self.invalid = invalid
        self.lock = threading.Lock()
        self.records = 0

    def process(self, records: Sequence[RawRecord]) -> dict[TopicPartition, int]:
        """Fold `records` into state; return the next offset to commit per partition."""
        groups: dict[Key, tuple[list[InferenceEvent], list[float | None]]] = {}
        failures: list[tuple[RawRecord, DecodeFailure]] = []
        offsets: dict[TopicPartition, int] = {}
        decoder = self.decoder
        fast_decode = decoder.fast_decode
        max_bytes = decoder.max_bytes
        for rec in records:
            offsets[(rec.topic, rec.partition)] = rec.offset + 1
            value = rec.value
            event: InferenceEvent | DecodeFailure
            try:
                # Fast path: a sane size and valid JSON. Anything else goes to decode(), which
                # says why; this costs nothing for the valid majority.
                if value is None or len(value) > max_bytes:
                    raise ValueError
                event = fast_decode(value)
            except Exception:
                event = decoder.decode(value)
                if isinstance(event, DecodeFailure):
                    failures.append((rec, event))
                    continue
            key = (event.model, event.version, event.variant)
            group = groups.get(key)
            if group is None:
                group = groups[key] = ([], [])
            group[0].append(event)
            ts = event.timestamp
            group[1].append(ts if type(ts) is float else event_time(ts, rec.timestamp))
        with self.lock:
            for key, (events, times) in groups.items():
                self.keys.route(key, len(events))[1].update(events, times)
            for rec, failure in failures:
                self.invalid.record(rec, failure)
            self.records += len(records)
        return offsets

    @property
    def events(self) -> int:
        return sum(s.events for _, s in self.keys.items())
