"""Event-time order across partitions: records released in time order, partitions that run ahead paused.

When several partitions feed one state (a model's events spread over partitions, events and their
labels), reading each as fast as it comes interleaves old and new data: a backlog replays out of
order, drift sees a shift come and go, and labels far ahead of their events wait out their hold.
Kafka Streams buffers each partition and picks the lowest timestamp across a task's partitions;
here too. The records polled from the aligned topics wait in a buffer per partition, and a poll
releases those no newer than the *floor*: the oldest of the newest times read from each partition
that still has records to deliver. Every record not yet read from such a partition is at least
that new, so what is released is in time order across partitions, up to the disorder within a
partition itself. Partitions whose newest time is more than `max_skew_s` past the floor are paused
(their buffers stay small) and resumed once the floor catches up. A partition with nothing left to
read holds nobody back, so live traffic is never held; one not read yet holds the others for at
most UNSEEN_WAIT_S; records without a time take no part.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from daemon.ingest import topics as topic_entries
from daemon.ingest.sources import Chunk, TopicPartition

# How long a partition that has shown no record yet may hold the others back (Kafka Streams'
# max.task.idle.ms): long enough for its first fetch, short enough that one whose leader is away
# does not stall the rest.
UNSEEN_WAIT_S = 5.0


class TimeAligner:
    def __init__(self, topics: Collection[str], max_skew_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.entries = tuple(topics)  # names, or patterns (daemon/ingest/topics.py)
        self._aligned: dict[str, bool] = {}
        self.max_skew_s = max_skew_s
        self._clock = clock
        # Newest record time read from each partition of `topics`.
        self.heads: dict[TopicPartition, float] = {}
        # Partitions whose records carry no time: they take no part.
        self.untimed: set[TopicPartition] = set()
        self._unseen_since: dict[TopicPartition, float] = {}
        # Records read but not released yet, per partition, in offset order.
        self.buffered: dict[TopicPartition, Chunk] = {}
        self._pending: set[TopicPartition] = set()

    def add(self, chunks: Sequence[Chunk]) -> list[Chunk]:
        """Buffer what a poll read from the aligned topics; return the rest, which passes at once."""
        out: list[Chunk] = []
        for c in chunks:
            if not self.aligned(c.topic):
                out.append(c)
                continue
            tp = (c.topic, c.partition)
            newest = max((t for t in c.timestamps or () if t is not None), default=None)
            if newest is None:
                self.untimed.add(tp)
            else:
                self.heads[tp] = max(self.heads.get(tp, -math.inf), newest)
            held = self.buffered.get(tp)
            self.buffered[tp] = c if held is None else _join(held, c)
        return out

    def aligned(self, topic: str) -> bool:
        known = self._aligned.get(topic)
        if known is None:
            known = self._aligned[topic] = topic_entries.entry_of(self.entries, topic) is not None
        return known

    def release(
        self, assigned: Iterable[TopicPartition], lag: Mapping[TopicPartition, int], held: Collection[TopicPartition]
    ) -> tuple[list[Chunk], set[TopicPartition]]:
        """The buffered records now in order, and the partitions to pause. `lag`: records each has
        left to read, where known; `held`: partitions paused for another reason (their state is not
        restored yet), which cannot deliver and so hold nobody back."""
        floor = self._floor(assigned, lag, held)
        out: list[Chunk] = []
        for tp in list(self.buffered):
            c = self.buffered[tp]
            if floor is None or tp in self.untimed or c.timestamps is None:
                cut = len(c)
            else:
                cut = next((i for i, t in enumerate(c.timestamps) if t is not None and t > floor), len(c))
            if cut:
                out.append(_slice(c, 0, cut))
            if cut == len(c):
                del self.buffered[tp]
            elif cut:
                self.buffered[tp] = _slice(c, cut, len(c))
        if floor is None:
            return out, set()
        limit = floor + self.max_skew_s
        return out, {tp for tp, head in self.heads.items() if head > limit and tp in self._pending}

    def _floor(
        self, assigned: Iterable[TopicPartition], lag: Mapping[TopicPartition, int], held: Collection[TopicPartition]
    ) -> float | None:
        now = self._clock()
        pending: dict[TopicPartition, float] = {}
        for tp in assigned:
            if not self.aligned(tp[0]) or tp in held or tp in self.untimed:
                continue
            if lag.get(tp, 1) == 0 and tp not in self.buffered:
                continue  # caught up: its next records are live ones
            head = self.heads.get(tp)
            if head is None:  # nothing read yet: it may hold the oldest records, for a while
                if now - self._unseen_since.setdefault(tp, now) > UNSEEN_WAIT_S:
                    continue
                head = -math.inf
            pending[tp] = head
        self._pending = set(pending)
        return min(pending.values()) if len(pending) >= 2 else None

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions revoked, or sought elsewhere: their buffered records are dropped (they are read
        again from the committed or sought offset) and their newest time is no longer known."""
        for tp in tps:
            self.heads.pop(tp, None)
            self.buffered.pop(tp, None)
            self.untimed.discard(tp)
            self._unseen_since.pop(tp, None)


def _join(a: Chunk, b: Chunk) -> Chunk:
    return Chunk(
        a.topic,
        a.partition,
        [*a.offsets, *b.offsets],
        None if a.timestamps is None or b.timestamps is None else [*a.timestamps, *b.timestamps],
        None if a.keys is None or b.keys is None else [*a.keys, *b.keys],
        [*a.values, *b.values],
        headers=None if a.headers is None or b.headers is None else [*a.headers, *b.headers],
    )


def _slice(c: Chunk, i: int, j: int) -> Chunk:
    if i == 0 and j == len(c):
        return c
    return Chunk(
        c.topic,
        c.partition,
        c.offsets[i:j],
        None if c.timestamps is None else c.timestamps[i:j],
        None if c.keys is None else c.keys[i:j],
        c.values[i:j],
        headers=None if c.headers is None else c.headers[i:j],
    )
