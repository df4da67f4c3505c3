"""Event-time order across partitions: which partitions run ahead of the others.

When several partitions feed one state (a model's events spread over partitions, events and their
labels), reading each as fast as it comes interleaves old and new data: a backlog replays out of
order, drift sees a shift come and go, and labels far ahead of their events wait out their hold.
Kafka Streams picks the lowest timestamp across a task's partitions; here the source pauses the
partitions whose newest record time is more than `max_skew_s` ahead of the slowest partition that
still has records to deliver, and resumes them once it has caught up. A partition with nothing
left to read (caught up with the log's end) holds nobody back: live traffic is never paused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from daemon.ingest.sources import Chunk, TopicPartition

# How long a partition that has shown no record yet may hold the others back (Kafka Streams'
# max.task.idle.ms): long enough for its first fetch, short enough that one whose leader is away
# does not stall the rest.
UNSEEN_WAIT_S = 5.0


class TimeAligner:
    def __init__(self, topics: Collection[str], max_skew_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.topics = frozenset(topics)
        self.max_skew_s = max_skew_s
        self._clock = clock
        # Newest record time read from each partition of `topics`.
        self.heads: dict[TopicPartition, float] = {}
        # Partitions whose records carry no time: they take no part.
        self.untimed: set[TopicPartition] = set()
        self._unseen_since: dict[TopicPartition, float] = {}

    def observe(self, chunks: Sequence[Chunk]) -> None:
        for c in chunks:
            if c.topic not in self.topics:
                continue
            tp = (c.topic, c.partition)
            newest = max((t for t in c.timestamps or () if t is not None), default=None)
            if newest is None:
                self.untimed.add(tp)
            else:
                self.heads[tp] = max(self.heads.get(tp, -math.inf), newest)

    def ahead(
        self, assigned: Iterable[TopicPartition], lag: Mapping[TopicPartition, int], held: Collection[TopicPartition]
    ) -> set[TopicPartition]:
        """The partitions to pause. `lag`: records each has left to read, where known; `held`: those
        paused for another reason, which cannot deliver and so hold nobody back."""
        now = self._clock()
        pending: dict[TopicPartition, float] = {}
        for tp in assigned:
            if tp[0] not in self.topics or tp in held or tp in self.untimed or lag.get(tp, 1) == 0:
                continue
            head = self.heads.get(tp)
            if head is None:  # nothing read yet: it may hold the oldest records, for a while
                if now - self._unseen_since.setdefault(tp, now) > UNSEEN_WAIT_S:
                    continue
                head = -math.inf
            pending[tp] = head
        if len(pending) < 2:
            return set()
        floor = min(pending.values()) + self.max_skew_s
        return {tp for tp, head in pending.items() if head > floor}

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions revoked, or sought elsewhere: their newest time is no longer known."""
        for tp in tps:
            self.heads.pop(tp, None)
            self.untimed.discard(tp)
            self._unseen_since.pop(tp, None)
