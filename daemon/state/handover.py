"""Partition state in and out of the checkpoint store, as the consumer group moves partitions.

- `checkpoint()` starts writing every held partition's state with the offsets it reflects; the
  loop polls `finished()` and commits those offsets only once the store has them.
- On revoke the state is checkpointed and parked; on assignment a parked partition is kept when the
  store holds nothing further along (this replica got it back), else the store's shard replaces
  it (another replica moved it on). Partitions that went elsewhere are dropped.
- A store that cannot be read at assignment (the broker away) leaves the partitions paused, and
  the loop retries: state is never guessed and no record is processed without it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import structlog

from daemon.export.exposition import CheckpointStats
from daemon.ingest.sources import TopicPartition
from daemon.pipeline import Pipeline
from daemon.state.checkpoint import CheckpointError, CheckpointStore, Write, shard_position

log = structlog.get_logger(__name__)

# Between attempts to read the store for paused partitions.
RETRY_S = 2.0


class Handover:
    def __init__(self, pipeline: Pipeline, store: CheckpointStore, stats: CheckpointStats, timeout_s: float) -> None:
        self.pipeline = pipeline
        self.store = store
        self.stats = stats
        self.timeout_s = timeout_s
        # Next offset of everything processed, per topic-partition of every partition held.
        self.position: dict[TopicPartition, int] = {}
        self._held: set[int] = set()  # partition numbers whose state is in the pipeline and ours
        self._parked: set[int] = set()  # revoked, state still in the pipeline until the next assignment
        self.paused: list[TopicPartition] = []  # assigned, state not restored yet
        self._next_retry = 0.0
        self._write: Write | None = None
        # Writes given up on (timed out) that may still be encoding a snapshot: while one is, the
        # next snapshot copies what it would otherwise share with it.
        self._abandoned: list[Write] = []
        self._write_offsets: dict[TopicPartition, int] = {}
        self._write_started = 0.0

    # -- checkpoints ----------------------------------------------------------------------

    @property
    def writing(self) -> bool:
        return self._write is not None

    def checkpoint(self, pending: Mapping[TopicPartition, int]) -> None:
        """Start a checkpoint of the state as it is; `pending` is what it will let the loop commit."""
        t0 = time.perf_counter()
        self.stats.writing_since = time.time()
        try:
            # The loop takes a copy only; the store encodes and writes it on its own thread.
            self._abandoned = [w for w in self._abandoned if not w.done()]
            partitions = {p for _, p in self.position}
            self._write = self.store.save(self.pipeline.snapshot(partitions, fresh=bool(self._abandoned)))
        except (CheckpointError, OSError, ValueError, TypeError) as exc:
            self._failed(exc)
            return
        self._write_offsets = dict(pending)
        self._write_started = t0

    def finished(self, wait_s: float = 0.0) -> dict[TopicPartition, int] | None:
        """The offsets of a checkpoint now in the store (safe to commit); None while none is."""
        w = self._write
        if w is None:
            return None
        overdue = time.perf_counter() - self._write_started > self.timeout_s
        if not (wait_s or overdue or w.done()):
            return None
        self._write = None
        self.stats.writing_since = 0.0
        try:
            w.result(wait_s)
        except CheckpointError as exc:
            if not w.done():
                self._abandoned.append(w)
            self._failed(exc)
            return None
        self.stats.written += 1
        self.stats.last_duration = time.perf_counter() - self._write_started
        self.stats.last_timestamp = time.time()
        return self._write_offsets

    def checkpoint_now(self, pending: Mapping[TopicPartition, int]) -> dict[TopicPartition, int] | None:
        """A checkpoint written before returning (revoke, shutdown): the offsets it makes safe."""
        self.finished(self.timeout_s)  # one in flight goes first: the store keeps order
        self.checkpoint(pending)
        return self.finished(self.timeout_s)

    def _failed(self, exc: BaseException) -> None:
        self._write = None
        self.stats.writing_since = 0.0
        self.stats.failed += 1
        log.error("checkpoint_failed", where=self.store.where, error=repr(exc))

    # -- partitions moving ------------------------------------------------------------------

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """After the revoke's checkpoint: park the state until we know where the partitions went."""
        numbers = {p for _, p in partitions}
        self._parked |= numbers & self._held
        self._held -= numbers
        self.paused = [tp for tp in self.paused if tp[1] not in numbers]

    def assigned(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Restore what the assignment brings; returns where each restored partition resumes.

        Partitions whose shard cannot be read are added to `paused` (and left out of the result).
        """
        numbers = {p for _, p in partitions}
        gone = self._parked - numbers
        if gone:
            self._drop(gone)
        new = sorted(numbers - self._held)
        t0 = time.perf_counter()
        try:
            shards = self.store.load(new)
        except CheckpointError as exc:
            log.error("checkpoint_restore_failed", where=self.store.where, error=str(exc), retry_in_seconds=RETRY_S)
            self.paused += [tp for tp in partitions if tp[1] in new and tp not in self.paused]
            self._next_retry = time.monotonic() + RETRY_S
            return {}
        resume: dict[TopicPartition, int] = {}
        kept, restored = [], []
        for p in new:
            shard = shards.get(p)
            mine = {tp: o for tp, o in self.position.items() if tp[1] == p}
            if p in self._parked and (shard is None or shard_position(shard) <= sum(mine.values())):
                resume.update(mine)  # got back what we hold: the store has nothing newer
                kept.append(p)
                continue
            if p in self._parked:
                self._drop({p})
            if shard is not None:
                try:
                    resume.update(self.pipeline.restore_partition(shard))
                except (ValueError, KeyError, TypeError) as exc:
                    raise CheckpointError(f"partition {p}'s checkpoint in {self.store.where}: {exc}") from None
                restored.append(p)
        self._parked -= set(new)
        self._held |= set(new)
        self.paused = [tp for tp in self.paused if tp[1] not in new]
        self.position.update(resume)
        log.info(
            "partitions_restored",
            restored=restored,
            kept=kept,
            fresh=sorted(set(new) - set(restored) - set(kept)),
            seconds=round(time.perf_counter() - t0, 3),
        )
        return resume

    def retry_due(self) -> bool:
        return bool(self.paused) and time.monotonic() >= self._next_retry

    def _drop(self, partitions: set[int]) -> None:
        self.pipeline.drop_partitions(partitions)
        self._parked -= partitions
        for tp in [tp for tp in self.position if tp[1] in partitions]:
            del self.position[tp]
