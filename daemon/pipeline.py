"""decode → route → partition states, a poll at a time. The same pipeline serves Kafka and files.

A poll's records decode into one columnar batch (`daemon.ingest`); its events route to the state of
the partition that holds their key (`daemon.state.routing`), which folds them in with array
operations (`daemon.state.partition`). Records of the labels topic join predictions by request_id
in the join of the partition they arrived on (co-partitioned with the events); each joined label
grades its prediction in the partition that holds the key. A `label` inside an inference event
grades it at once.

`lock` guards the state: a batch holds it while it folds in, a scrape or a checkpoint while it
copies (`copy()`, `snapshot()`); formatting and encoding happen outside it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import structlog

from daemon.config import Config
from daemon.ingest import repartition
from daemon.ingest.batch import Batch, Key
from daemon.ingest.decode import ChunkDecoder, LabelRecord
from daemon.ingest.invalid import InvalidRecords
from daemon.ingest.sources import Chunk, TopicPartition
from daemon.monitors.drift import Calibrator, DriftAlert
from daemon.monitors.labels import JoinedLabel
from daemon.monitors.names import Overflow
from daemon.monitors.reservoir import Sample
from daemon.state.partition import PartitionState, Shared
from daemon.state.routing import OTHER_KEY, Router
from daemon.state.totals import Totals

log = structlog.get_logger(__name__)

AlertSink = Callable[[list[DriftAlert]], None]
# Receives canary timeline entries: one per change of verdict (docs/replay-report.md).
CanarySink = Callable[[list[dict[str, Any]]], None]


class Pipeline:
    """Turns raw records into per-partition state.

    Predictions wait for their labels in a join when labels come from their own topic or file
    (`join_labels`). `alert_sink` receives each batch's drift alerts, `canary_sink` its canary
    timeline entries.
    """

    def __init__(
        self,
        config: Config,
        invalid: InvalidRecords,
        *,
        calibrator: Calibrator | None = None,
        join_labels: bool = False,
        alert_sink: AlertSink | None = None,
        canary_sink: CanarySink | None = None,
        references: dict[Key, dict[str, list[Any]]] | None = None,
    ) -> None:
        self.config = config
        self.decoder = ChunkDecoder(
            config.limits.max_event_bytes, config.labels.topic, config.plausibility, config.source
        )
        self.overflow = Overflow()
        self.calibrator = calibrator or Calibrator()
        self.join_labels = bool(config.labels.topic or join_labels)
        shadow = config.shadow
        self.shared = Shared(
            config,
            self.calibrator,
            self.overflow,
            self.join_labels,
            references or {},
            frozenset(m.source_model for m in shadow.models) if shadow.enabled else frozenset(),
        )
        self.partitions: dict[int, PartitionState] = {}
        self.router = Router(config.limits.max_keys, self.overflow)
        self.invalid = invalid
        self.alert_sink = alert_sink
        self.canary_sink = canary_sink
        self.lock = threading.Lock()
        # Events of each model that arrived on a partition other than its home (see _spread).
        self.unkeyed: dict[str, int] = {}
        kafka = config.source.kafka
        self.repartition_topic = repartition.topic_name(kafka.group_id) if kafka.repartition else None
        # Newest event time seen: the clock of a replay's label join; and the oldest (the replay
        # report's series start there).
        self.watermark = 0.0
        self.earliest = math.inf

    def partition(self, p: int) -> PartitionState:
        state = self.partitions.get(p)
        if state is None:
            state = self.partitions[p] = PartitionState(p, self.shared)
        return state

    # -- the data path ------------------------------------------------------------------------

    def process(self, chunks: Sequence[Chunk]) -> dict[TopicPartition, int]:
        """Fold a poll's chunks into state; return the next offset to commit per partition."""
        offsets = {(c.topic, c.partition): c.offsets[-1] + 1 for c in chunks if len(c)}
        # Only this thread changes what was seen (a snapshot is taken between batches, by it too).
        parts = self._unwrap(chunks) if self.repartition_topic is not None else chunks
        decoded = self.decoder.decode(parts)  # no state is touched: outside the lock
        alerts: list[DriftAlert] = []
        timeline: list[dict[str, Any]] = []
        with self.lock:
            batch = decoded.batch
            # Before the join sees this batch's predictions: in replay the watermark is its clock.
            if batch is not None and not np.isnan(batch.time).all():
                self.watermark = max(self.watermark, float(np.nanmax(batch.time)))
                self.earliest = min(self.earliest, float(np.nanmin(batch.time)))
            # Labels before events: a poll releases both in time order (daemon/ingest/align.py), so
            # a label is in before any look of the canary past its time (daemon/monitors/graded.py).
            if decoded.labels:
                alerts += self._labels(decoded.labels)
            if batch is not None:
                events_alerts, timeline = self._events(batch)
                alerts += events_alerts
            if decoded.labels:  # after the events: a label may be for a shadow sample of this poll
                self._label_samples(r for _, r in decoded.labels)
            for chunk in chunks:
                self.partition(chunk.partition).totals.records += len(chunk)
            for rec, failure in decoded.failures:
                self.partition(rec.partition).totals.invalid[failure.reason] += 1
                self.invalid.record(rec, failure)
            for dropped in decoded.out_of_range:
                for p, n in dropped.partitions.items():
                    self.partition(p).totals.out_of_range[dropped.field] += n
                self.invalid.out_of_range(dropped)
            for (topic, p), offset in offsets.items():
                self.partition(p).offsets[topic] = offset
        self._emit(alerts, timeline)
        return offsets

    def _unwrap(self, chunks: Sequence[Chunk]) -> list[Chunk]:
        """Records of the repartition topic back into events and labels, each record once."""
        out: list[Chunk] = []
        for c in chunks:
            if c.topic != self.repartition_topic:
                out.append(c)
                continue
            events, labels, duplicates = repartition.unwrap(c, self.partition(c.partition).seen)
            out += [x for x in (events, labels) if x is not None]
            if duplicates:
                log.info("repartition_duplicates_dropped", partition=c.partition, records=duplicates)
        return out

    def _emit(self, alerts: list[DriftAlert], timeline: list[dict[str, Any]]) -> None:
        if alerts and self.alert_sink is not None:
            self.alert_sink(alerts)
        if timeline and self.canary_sink is not None:
            self.canary_sink(timeline)

    def _events(self, batch: Batch) -> tuple[list[DriftAlert], list[dict[str, Any]]]:
        batch = _in_time_order(batch)
        n_keys = len(batch.keys)
        hits: list[tuple[PartitionState, int] | None] = list(map(self.router.get, batch.keys))
        over_of = np.zeros(n_keys, dtype=np.bool_)
        if None in hits:  # keys new to this replica, or over the cap
            counts = np.bincount(batch.key, minlength=n_keys)
            _, first = np.unique(batch.key, return_index=True)
            arrival = batch.partition[first].tolist()
            for k in [k for k, h in enumerate(hits) if h is None]:
                state, row, over = self.router.route(batch.keys[k], self.partition(arrival[k]), int(counts[k]))
                hits[k] = (state, row)
                over_of[k] = over
        self._spread(batch, hits, over_of)  # type: ignore[arg-type]
        states: list[PartitionState] = list({id(h[0]): h[0] for h in hits}.values())  # type: ignore[index]
        state_of = np.array([states.index(h[0]) for h in hits], dtype=np.int64) if len(states) > 1 else None  # type: ignore[index]
        row_of = np.fromiter((h[1] for h in hits), dtype=np.int64, count=n_keys)  # type: ignore[index]
        rows = row_of[batch.key]
        overflowed = over_of[batch.key]
        alerts: list[DriftAlert] = []
        timeline: list[dict[str, Any]] = []
        per_state = state_of[batch.key] if state_of is not None else None
        for s, state in enumerate(states):
            if per_state is None:
                sub, sub_rows, sub_over = batch, rows, overflowed
            else:
                idx = np.flatnonzero(per_state == s)
                sub, sub_rows, sub_over = batch.take(idx), rows[idx], overflowed[idx]
            a, t, inline, joined = state.update(sub_rows, sub, sub_over)
            state.totals.labels["inline"] += len(sub.labelled)
            alerts += a
            timeline += t
            alerts += self._grade(state, inline, canary=False)  # the canary counted them at their requests
            alerts += self._grade(state, joined)
        return alerts, timeline

    def _spread(self, batch: Batch, hits: list[tuple[PartitionState, int]], over_of: np.ndarray) -> None:
        """Count (and log, in samples) events of a model that arrived on a partition other than the
        one holding the model's state here: the input is not keyed by model."""
        home = np.fromiter((h[0].partition for h in hits), dtype=np.int64, count=len(hits))
        away = (batch.partition != home[batch.key]) & ~over_of[batch.key]
        if not away.any():
            return
        counts = np.bincount(batch.key[away], minlength=len(hits))
        for k in np.flatnonzero(counts).tolist():
            model = batch.keys[k][0]
            self.unkeyed[model] = self.unkeyed.get(model, 0) + int(counts[k])
            self.invalid.sampled.warning(
                log,
                f"unkeyed:{model}",
                "model_on_several_partitions",
                model=model,
                home_partition=int(home[k]),
                arrived_on=sorted(set(batch.partition[away & (batch.key == k)].tolist())),
                hint="producers do not key by model: set source.kafka.repartition: true",
            )

    def _labels(self, labels: list[tuple[int, LabelRecord]]) -> list[DriftAlert]:
        alerts: list[DriftAlert] = []
        by_partition: dict[int, list[LabelRecord]] = {}
        for p, record in labels:
            by_partition.setdefault(p, []).append(record)
        for p, records in by_partition.items():
            state = self.partition(p)
            if state.join is not None:
                alerts += self._grade(state, state.join.add_labels(records))
        return alerts

    def add_labels(self, labels: Sequence[LabelRecord]) -> None:
        """Labels from outside the record stream (replay's --labels file: one partition, 0)."""
        if not self.join_labels:
            raise RuntimeError("add_labels needs a pipeline built with a label join")
        with self.lock:
            state = self.partition(0)
            assert state.join is not None
            alerts = self._grade(state, state.join.add_labels(labels))
            self._label_samples(labels)
        self._emit(alerts, [])

    def _grade(self, joined_in: PartitionState, joined: list[JoinedLabel], canary: bool = True) -> list[DriftAlert]:
        """Joined labels into their keys' quality windows, canaries and error streams."""
        if not joined:
            return []
        by_key: dict[Key, list[JoinedLabel]] = {}
        for j in joined:
            by_key.setdefault(j.key, []).append(j)
        errors: dict[int, tuple[PartitionState, list[int], list[bool], list[int], list[float]]] = {}
        for key, items in by_key.items():
            if key == OTHER_KEY:
                state, row = joined_in, joined_in.overflow_row()
            else:
                hit = self.router.primary(key)
                if hit is None:  # the key was routed before a restart, or its partition went elsewhere
                    continue
                state, row = hit
            classified, wrong, index, times = state.grade(row, items, canary)
            if classified and wrong:
                e = errors.setdefault(id(state), (state, [], [], [], []))
                e[1].extend([row] * len(wrong))
                e[2].extend(wrong)
                e[3].extend(index)
                e[4].extend(times)
        alerts: list[DriftAlert] = []
        for state, rows, wrong, index, times in errors.values():
            if state.drift is not None:
                alerts += state.drift.update_errors(
                    np.array(rows, dtype=np.int64),
                    np.array(wrong, dtype=np.bool_),
                    np.array(index, dtype=np.int64),
                    np.array(times, dtype=np.float64),
                )
        return alerts

    def _label_samples(self, labels: Iterable[LabelRecord]) -> None:
        if not self.shared.reservoir_models:
            return
        for request_id, model, label, _ in labels:
            home = self.router.home(model)
            reservoir = home.reservoirs.get(model) if home is not None else None
            if reservoir is not None:
                reservoir.attach_label(request_id, label)

    def tick(self) -> None:
        """What must happen even when no records come (the loop calls this): expire what outlived
        its TTL or hold, and let streams take calibrations that finished in the background."""
        alerts: list[DriftAlert] = []
        with self.lock:
            for state in self.partitions.values():
                if state.join is not None:
                    state.join.expire()
                if state.drift is not None:
                    alerts += state.drift.poll()
        self._emit(alerts, [])

    # -- reading ------------------------------------------------------------------------------

    def held(self) -> list[tuple[PartitionState, int]]:
        """(state, row) of every key whose series this replica shows: a key that several
        partitions hold shows once, from the partition its events go to."""
        out = []
        for p in sorted(self.partitions):
            state = self.partitions[p]
            for row, key in enumerate(state.keys):
                if key == OTHER_KEY or self.router.primary(key) == (state, row):
                    out.append((state, row))
        return out

    def summary(self) -> list[dict[str, Any]]:
        """Final figures per key: traffic, quality and drift (/v1/status, the replay report)."""
        with self.lock:
            return [state.summary(row) for state, row in self.held()]

    def canary_report(self, model: str | None = None) -> dict[str, Any] | None:
        """/v1/canary (every model) or one model's (None when it has no canary)."""
        with self.lock:
            reports: dict[str, Any] = {}
            for p in sorted(self.partitions):
                state = self.partitions[p]
                if state.canary is not None:
                    for name in state.canary.models:
                        if name not in reports or self.router.home(name) is state:
                            reports[name] = state.canary.report(name)
        if model is not None:
            return reports.get(model)
        return {"models": reports}

    def drift_reference(
        self,
        action: Literal["reset", "pin", "unpin"],
        model: str,
        version: str | None = None,
        variant: str | None = None,
        stream: str | None = None,
    ) -> list[dict[str, Any]]:
        """Reset, pin or unpin the drift references of a model's keys (a version's, a variant's; one
        stream or all), wherever this replica holds them. Returns the streams it applied to."""
        done = []
        with self.lock:
            for p in sorted(self.partitions):
                state = self.partitions[p]
                if state.drift is None:
                    continue
                for row, (m, ver, var) in enumerate(state.keys):
                    if m != model or version not in (None, ver) or variant not in (None, var):
                        continue
                    for name in state.drift.reference_action(row, stream, action):
                        done.append({"model": m, "version": ver, "variant": var, "stream": name, "partition": p})
        return done

    def drifting(self, hold_s: float) -> list[tuple[Key, str, str]]:
        """(key, stream, detector) of the streams whose last detection is younger than `hold_s`."""
        now = time.monotonic()
        with self.lock:
            out = []
            for state, row in self.held():
                d = state.drift
                if d is None or d.newest_detection is None or now - d.newest_detection >= hold_s:
                    continue
                for sid in d.by_row[row]:
                    if now - d.last_detection[sid] < hold_s:
                        st = d.streams[sid]
                        out.append((state.keys[row], st.name, st.detector))
            return out

    def failing_canaries(self) -> list[tuple[str, str, str]]:
        """(model, variant, baseline) of the comparisons whose verdict is fail."""
        report = self.canary_report()
        assert report is not None
        return [
            (model, variant, m["baseline"])
            for model, m in report["models"].items()
            for variant, c in m["variants"].items()
            if c["verdict"] == "fail"
        ]

    def totals(self) -> Totals:
        """Records, invalid records, implausible values and label outcomes of every partition held."""
        with self.lock:
            return Totals.of(s.totals for s in self.partitions.values())

    @property
    def records(self) -> int:
        """Records read, of every topic (a benchmark's progress: read without the lock)."""
        return sum(s.totals.records for s in list(self.partitions.values()))

    @property
    def events(self) -> int:
        with self.lock:
            return sum(int(s.traffic.events[: s.traffic.rows].sum()) for s in self.partitions.values())

    def reservoir_sizes(self) -> dict[str, int]:
        with self.lock:
            return {m: len(r.items) for s in self.partitions.values() for m, r in s.reservoirs.items()}

    def shadow_samples(self) -> dict[str, list[Sample]]:
        """A copy of every reservoir's samples, for a shadow run."""
        with self.lock:
            return {
                m: [Sample(*x.row()) for x in r.items]
                for s in self.partitions.values()
                for m, r in s.reservoirs.items()
            }

    # -- checkpoints --------------------------------------------------------------------------

    def snapshot(self, partitions: Collection[int] | None = None, fresh: bool = False) -> dict[str, Any]:
        """A consistent copy of the state, taken between batches: `partitions` holds one shard per
        partition (`PartitionState.snapshot()`, with its offsets on every topic), which a replica
        assigned that partition restores alone (its counts, `Totals`, included); `process` what belongs to
        this process as a whole: the replay clock and the cardinality overflow counts.
        Encoding happens elsewhere, off the loop. Drift references are shared, not copied: take the
        next snapshot only once this one has been encoded, or ask for `fresh` copies."""
        with self.lock:
            chosen = sorted(self.partitions if partitions is None else set(partitions) & set(self.partitions))
            return {
                "process": {"watermark": self.watermark, "overflow": dict(self.overflow.counts)},
                "partitions": {p: self.partitions[p].snapshot(fresh) for p in chosen},
            }

    def restore(self, state: Mapping[str, Any]) -> dict[TopicPartition, int]:
        """A whole snapshot into this freshly built pipeline; returns the offsets to resume from."""
        self.restore_process(state["process"])
        offsets: dict[TopicPartition, int] = {}
        for shard in state["partitions"].values():
            offsets.update(self.restore_partition(shard))
        return offsets

    def restore_process(self, state: Mapping[str, Any]) -> None:
        """The process-wide part of a snapshot (a single replica's restart)."""
        with self.lock:
            self.watermark = float(state["watermark"])
            self.overflow.counts.update({k: int(v) for k, v in state["overflow"].items()})

    def restore_partition(self, shard: Mapping[str, Any]) -> dict[TopicPartition, int]:
        """One partition's shard (on assignment), replacing what this pipeline held of it; returns
        where its topics resume."""
        state = PartitionState.restore(dict(shard), self.shared)
        with self.lock:
            old = self.partitions.pop(state.partition, None)
            if old is not None:
                self.router.drop(old, list(self.partitions.values()))
            self.partitions[state.partition] = state
            self.router.adopt(state)
        return {(t, state.partition): o for t, o in state.offsets.items()}

    def drop_partitions(self, partitions: Collection[int]) -> None:
        """Forget the state of `partitions`: another replica owns them now."""
        with self.lock:
            for p in partitions:
                state = self.partitions.pop(p, None)
                if state is not None:
                    self.router.drop(state, list(self.partitions.values()))


def _in_time_order(batch: Batch) -> Batch:
    """A batch read from several partitions, in event-time order (stable), when a key's events came
    from more than one of them: each partition's records come in offset order, one partition after
    another, so a model spread over partitions would otherwise reach drift and canaries old and
    new interleaved."""
    p = batch.partition
    if len(p) < 2 or not (p != p[0]).any():
        return batch
    # Keyed input: each key's events come from one partition, in its order; nothing to sort.
    pairs = np.unique(batch.key * (int(p.max()) + 1) + p)
    if len(pairs) == len(batch.keys):
        return batch
    t = batch.time
    with np.errstate(invalid="ignore"):
        if not (t[1:] < t[:-1]).any():
            return batch
    return batch.take(np.argsort(t, kind="stable"))
