"""Formats whose inference comes as two records, a request and a response with the same id
(cloudevents-inference, seldon): the join of the halves, in bounded memory.

A half waits at most `ttl_s` for its pair, and at most `max_pending` halves wait per join space
(the format says which: a partition, a model's pair of topics), the oldest out first; one that
outlives that is counted as `unmatched`, logged and dead-lettered like any bad record. A format
says how a record becomes a `Half` (`read`) and a pair becomes events (`events`); this module
does the rest.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import msgspec

from daemon.ingest.events import InferenceEvent
from daemon.ingest.failures import DecodeFailure, classify
from daemon.ingest.sources import Chunk, RawRecord


class Bad(ValueError):
    """A half that cannot be read, or a pair whose halves disagree: (reason, detail)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Half(NamedTuple):
    """One record of a pair, read: the id it joins on, which half it is, what the format read."""

    id: str
    request: bool
    body: Any
    record: RawRecord | None = None  # set when it waits
    arrived: float = 0.0


class Joined(NamedTuple):
    """What a chunk came to: events with the offset and record time of the record that completed
    each pair, and the failures (records of their own, and halves that never found their pair)."""

    events: list[InferenceEvent]
    offsets: list[int]
    times: list[float | None]
    failures: list[tuple[RawRecord, DecodeFailure]]


class PairedFormat:
    """The join; a subclass reads halves and makes events of pairs."""

    def __init__(self, ttl_s: float = 60.0, max_pending: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.clock = clock
        # Per join space: id -> the half waiting for its pair, oldest first.
        self._pending: dict[Hashable, OrderedDict[str, Half]] = {}

    def read(self, chunk: Chunk, i: int) -> Half:
        """Record i of the chunk (its value neither None nor oversize) as a half, its record and
        arrival left unset; raises Bad or msgspec's errors."""
        raise NotImplementedError

    def events(self, request: Half, response: Half) -> list[InferenceEvent]:
        """The events of a pair; raises Bad or msgspec's errors."""
        raise NotImplementedError

    def space(self, chunk: Chunk) -> Hashable:
        """Where a chunk's halves find their pairs: by default its partition."""
        return (chunk.topic, chunk.partition)

    def pending(self) -> int:
        return sum(map(len, self._pending.values()))

    def decode_chunk(self, chunk: Chunk, max_bytes: int) -> Joined:
        out = Joined([], [], [], [])
        now = self.clock()
        store = self._pending.setdefault(self.space(chunk), OrderedDict())
        while store:  # what outlived its wait
            first = next(iter(store.values()))
            if now - first.arrived < self.ttl_s:
                break
            self._unmatched(store, out, "waited ttl")
        read = self.read
        for i, value in enumerate(chunk.values):
            try:
                if value is None:
                    raise Bad("malformed_json", "record has no value (tombstone)")
                if len(value) > max_bytes:
                    raise Bad("oversize", f"{len(value)} bytes > limits.max_event_bytes={max_bytes}")
                half = read(chunk, i)
                other = store.pop(half.id, None)
                if other is None or other.request == half.request:
                    if other is not None:  # the same half twice: the newer one waits
                        why = f"a second {_kind(half)} for id {half.id}"
                        out.failures.append((other.record, DecodeFailure("unmatched", why)))  # type: ignore[arg-type]
                    store[half.id] = Half(half.id, half.request, half.body, chunk.record(i), now)
                    while len(store) > self.max_pending:
                        self._unmatched(store, out, f"over {self.max_pending} waiting")
                    continue
                events = self.events(half, other) if half.request else self.events(other, half)
            except Bad as e:
                out.failures.append((chunk.record(i), DecodeFailure(e.reason, str(e)[:200])))
                continue
            except msgspec.ValidationError as e:
                out.failures.append((chunk.record(i), DecodeFailure(classify(e), str(e)[:200])))
                continue
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
                out.failures.append((chunk.record(i), DecodeFailure("malformed_json", str(e)[:200])))
                continue
            except Exception as e:  # a bug of ours, not bad input: counted, never the loop's end
                detail = f"{type(e).__name__}: {e}"[:200]
                out.failures.append((chunk.record(i), DecodeFailure("internal", detail)))
                continue
            offset, at = chunk.offsets[i], None if chunk.timestamps is None else chunk.timestamps[i]
            if len(events) == 1:
                out.events.append(events[0])
                out.offsets.append(offset)
                out.times.append(at)
            else:
                out.events.extend(events)
                out.offsets.extend([offset] * len(events))
                out.times.extend([at] * len(events))
        return out

    def _unmatched(self, store: OrderedDict[str, Half], out: Joined, why: str) -> None:
        _, half = store.popitem(last=False)
        detail = f"{_kind(half)} {half.id} without its pair ({why})"
        out.failures.append((half.record, DecodeFailure("unmatched", detail)))  # type: ignore[arg-type]


def _kind(half: Half) -> str:
    return "request" if half.request else "response"


def pair_events(
    request_id: str,
    model: str,
    variant: str | None,
    version: str | None,
    at: float | None,
    until: float | None,
    features: list[Any],
    predictions: list[Any],
) -> list[InferenceEvent]:
    """A pair's events, a row each: the request's time, the latency from it to the response's,
    per row its features and its prediction (a list of numbers: class scores "0", "1", ...).
    Raises Bad when the rows disagree, msgspec's errors when a value is not an event's."""
    if len(features) != len(predictions):
        raise Bad("bad_shape", f"{len(features)} request rows but {len(predictions)} predictions for id {request_id}")
    fields: dict[str, Any] = {
        "request_id": request_id,
        "model": model,
        "variant": variant or "default",
        "timestamp": at,
        # To the microsecond, the finest the halves' times carry (Unix seconds lose the rest).
        "latency_ms": None if at is None or until is None else round(max(0.0, (until - at) * 1000.0), 3),
    }
    if version:
        fields["version"] = version
    out = []
    for k, (row, pred) in enumerate(zip(features, predictions, strict=True)):
        one = {**fields, "features": row}
        if len(features) > 1:
            one["request_id"] = f"{request_id}/{k}"
        if isinstance(pred, list):
            one["probabilities"] = {str(c): p for c, p in enumerate(pred)}
        else:
            one["prediction"] = pred
        out.append(msgspec.convert(one, InferenceEvent))
    return out
