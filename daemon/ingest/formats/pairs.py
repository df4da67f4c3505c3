"""Formats whose inference comes as two records, a request and a response with the same id
(cloudevents-inference, seldon): the join of the halves, in bounded memory, and their events.

A half waits at most `ttl_s` for its pair, and at most `max_pending` halves wait per join space
(the format says which: a partition, a model's pair of topics), the oldest out first; one that
outlives that is counted as `unmatched`, logged and dead-lettered like any bad record. A format
says how a chunk's records become halves (`read`); this module does the rest.

A poll is decoded in passes over all its records, not record by record: the format reads the
halves in one pass (on a bad record, again in halves, down to the bad one), the join is one loop of
dict lookups, and the pairs' events are converted in one msgspec call (again pair by pair when
one fails). A waiting half keeps its record, for the dead letter should it never be matched;
one matched within its own poll never makes one.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from itertools import chain, repeat
from typing import Any, NamedTuple

import msgspec

from daemon.ingest.events import InferenceEvent
from daemon.ingest.failures import DecodeFailure, failure_of, unreadable
from daemon.ingest.sources import Chunk, RawRecord

# A record read as a half: the id it joins on, whether it is the request, and what its pair's
# events take of it: a request's (model, variant, Unix-second time, rows of features), a
# response's (version, Unix-second time, per row its prediction).
Half = tuple[str, bool, tuple[Any, ...]]
# A half waiting for its pair: whether it is the request, what the format read, its record (its
# index in the chunk being decoded, until the chunk is done), when it came (the join's clock).
_Waiting = tuple[bool, tuple[Any, ...], "RawRecord | int", float]
_EVENTS = list[InferenceEvent]
# A pair: the index of the record that completes it, the id, the request's part, the response's.
Pair = tuple[int, str, tuple[Any, ...], tuple[Any, ...]]


class Joined(NamedTuple):
    """What a chunk came to: events with the offset and record time of the record that completed
    each pair, and the failures (records of their own, and halves that never found their pair)."""

    events: list[InferenceEvent]
    offsets: list[int]
    times: list[float | None]
    failures: list[tuple[RawRecord, DecodeFailure]]


class PairedFormat:
    """The join; a subclass reads halves."""

    def __init__(self, ttl_s: float = 60.0, max_pending: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.clock = clock
        # Per join space: id -> the half waiting for its pair, oldest first.
        self._pending: dict[Hashable, OrderedDict[str, _Waiting]] = {}

    def read(self, chunk: Chunk, idx: Sequence[int]) -> list[Half]:
        """Records `idx` of the chunk (values neither None nor oversize) as halves, in one pass;
        raises Bad, msgspec's or the format's errors at the first bad one."""
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
            if now - first[3] < self.ttl_s:
                break
            self._unmatched(chunk, store, out, "waited ttl")
        idx, halves = self._halves(chunk, max_bytes, out.failures)
        pairs = self._join(chunk, store, idx, halves, now, out)
        self._events(chunk, pairs, out)
        return out

    def _halves(
        self, chunk: Chunk, max_bytes: int, failures: list[tuple[RawRecord, DecodeFailure]]
    ) -> tuple[Sequence[int], list[Half]]:
        """The chunk's records that are halves, and those halves; the others are failures."""
        values = chunk.values
        idx: Sequence[int] = range(len(values))
        if None in values or (values and max(map(len, values)) > max_bytes):  # type: ignore[arg-type]
            idx = []
            for i, value in enumerate(values):
                failure = unreadable(value, max_bytes)
                if failure is None:
                    idx.append(i)
                else:
                    failures.append((chunk.record(i), failure))
        return self._read(chunk, idx, failures)

    def _read(
        self, chunk: Chunk, idx: Sequence[int], failures: list[tuple[RawRecord, DecodeFailure]]
    ) -> tuple[Sequence[int], list[Half]]:
        """Records `idx` read as halves in one pass; when one is bad, each half of them again (a bad
        record costs a few passes over ever fewer records), down to the bad one: a failure."""
        if not idx:
            return [], []
        try:
            return idx, self.read(chunk, idx)
        except Exception as e:
            if len(idx) == 1:
                failures.append((chunk.record(idx[0]), failure_of(e)))
                return [], []
        mid = len(idx) // 2
        good, halves = self._read(chunk, list(idx[:mid]), failures)
        more, later = self._read(chunk, list(idx[mid:]), failures)
        return [*good, *more], halves + later

    def _join(
        self,
        chunk: Chunk,
        store: OrderedDict[str, _Waiting],
        idx: Sequence[int],
        halves: list[Half],
        now: float,
        out: Joined,
    ) -> list[Pair]:
        """The pairs the halves complete; the others wait."""
        pop, waiting = store.pop, []
        pairs: list[Pair] = []
        for i, (id_, request, body) in zip(idx, halves, strict=True):
            other = pop(id_, None)
            if other is None or other[0] == request:
                if other is not None:  # the same half twice: the newer one waits
                    why = DecodeFailure("unmatched", f"a second {_kind(request)} for id {id_}")
                    out.failures.append((_record(chunk, other[2]), why))
                store[id_] = (request, body, i, now)
                waiting.append(id_)
                while len(store) > self.max_pending:
                    self._unmatched(chunk, store, out, f"over {self.max_pending} waiting")
                continue
            pairs.append((i, id_, body, other[1]) if request else (i, id_, other[1], body))
        for id_ in waiting:  # those still waiting keep their record: the chunk goes
            w = store.get(id_)
            if w is not None and type(w[2]) is int:
                store[id_] = (w[0], w[1], chunk.record(w[2]), w[3])
        return pairs

    def _events(self, chunk: Chunk, pairs: list[Pair], out: Joined) -> None:
        """The pairs' events, a row each: the request's time, the latency from it to the response's,
        per row its features and its prediction (a list of numbers: class scores "0", "1", ...)."""
        rows: list[dict[str, Any]] = []
        owners: list[int] = []  # per pair with events, the record that completed it
        counts: list[int] = []  # and its number of rows
        for i, request_id, (model, variant, at, features), (version, until, predictions) in pairs:
            n = len(features)
            if n != len(predictions):
                detail = f"{n} request rows but {len(predictions)} predictions for id {request_id}"
                out.failures.append((chunk.record(i), DecodeFailure("bad_shape", detail[:200])))
                continue
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
            if n == 1:  # most are: no copies
                _row(fields, features[0], predictions[0])
                rows.append(fields)
            else:
                for k, (row, pred) in enumerate(zip(features, predictions, strict=True)):
                    rows.append(_row({**fields, "request_id": f"{request_id}/{k}"}, row, pred))
            owners.append(i)
            counts.append(n)
        try:
            events = msgspec.convert(rows, _EVENTS)
        except Exception:  # a pair whose values are not an event's: pair by pair, to know which
            events = self._one_by_one(chunk, rows, owners, counts, out.failures)
        out.events.extend(events)
        # Each event the offset and record time of the record that completed its pair.
        offsets = [chunk.offsets[i] for i in owners]
        times = [None] * len(owners) if chunk.timestamps is None else [chunk.timestamps[i] for i in owners]
        if counts.count(1) == len(counts):  # a row a pair, most polls
            out.offsets.extend(offsets)
            out.times.extend(times)
        else:
            out.offsets.extend(chain.from_iterable(map(repeat, offsets, counts)))
            out.times.extend(chain.from_iterable(map(repeat, times, counts)))

    @staticmethod
    def _one_by_one(
        chunk: Chunk,
        rows: list[dict[str, Any]],
        owners: list[int],
        counts: list[int],
        failures: list[tuple[RawRecord, DecodeFailure]],
    ) -> list[InferenceEvent]:
        """The rows' events pair by pair; a pair with a row that is no event is a failure, and is
        dropped from `owners` and `counts`."""
        events: list[InferenceEvent] = []
        start, kept = 0, 0
        for i, n in zip(list(owners), list(counts), strict=True):
            try:
                events += [msgspec.convert(r, InferenceEvent) for r in rows[start : start + n]]
            except Exception as e:
                failures.append((chunk.record(i), failure_of(e)))
            else:
                owners[kept], counts[kept] = i, n
                kept += 1
            start += n
        del owners[kept:], counts[kept:]
        return events

    def _unmatched(self, chunk: Chunk, store: OrderedDict[str, _Waiting], out: Joined, why: str) -> None:
        id_, (request, _, record, _) = store.popitem(last=False)
        detail = f"{_kind(request)} {id_} without its pair ({why})"
        out.failures.append((_record(chunk, record), DecodeFailure("unmatched", detail)))


def _row(fields: dict[str, Any], features: Any, prediction: Any) -> dict[str, Any]:
    """An event's fields with a row's features and prediction (a list of numbers: class scores)."""
    fields["features"] = features
    if isinstance(prediction, list):
        fields["probabilities"] = {str(c): p for c, p in enumerate(prediction)}
    else:
        fields["prediction"] = prediction
    return fields


def _kind(request: bool) -> str:
    return "request" if request else "response"


def _record(chunk: Chunk, record: RawRecord | int) -> RawRecord:
    """A waiting half's record: its own, or the chunk's record at its index."""
    return chunk.record(record) if isinstance(record, int) else record
