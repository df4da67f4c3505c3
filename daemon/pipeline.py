"""decode → route → monitors, one batch at a time. The same pipeline serves Kafka and files.

Records of the labels topic are label events: they join predictions by request_id
(`daemon.monitors.labels`), and each joined label grades its prediction for the key's quality window
and error stream. A `label` inside an inference event grades it at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from daemon.config import Config
from daemon.ingest.decode import DecodeFailure, EventDecoder
from daemon.ingest.events import InferenceEvent, LabelEvent, event_time
from daemon.ingest.invalid import InvalidRecords
from daemon.ingest.sources import RawRecord, TopicPartition
from daemon.monitors.canary import CanaryMonitor
from daemon.monitors.drift import Calibrator, DriftAlert, KeyDrift
from daemon.monitors.labels import JoinedLabel, LabelJoin, LabelRecord, PendingPrediction
from daemon.monitors.quality import KeyPerformance, confidence, graded, is_wrong
from daemon.monitors.reservoir import Reservoir, Sample
from daemon.monitors.traffic import KeyStats, Overflow
from daemon.state.routing import Key, KeyTable

# Version of Pipeline.snapshot(); restore() refuses others. Not written anywhere yet: checkpoints (issue 7)
# will store it with the offsets it reflects.
SNAPSHOT_VERSION = 2
AlertSink = Callable[[list[DriftAlert]], None]
# Receives canary timeline entries: one per change of verdict (architecture.md, Replay report).
CanarySink = Callable[[list[dict[str, Any]]], None]


@dataclass(slots=True)
class KeyState:
    """Everything kept for one (model, version, variant)."""

    stats: KeyStats
    quality: KeyPerformance
    drift: KeyDrift | None


class Pipeline:
    """Turns raw records into per-key state. `lock` guards that state against scrapes.

    `join` is None unless labels come from their own topic or file: then every prediction waits
    in it for its label. `alert_sink` receives each batch's drift alerts.
    """

    def __init__(
        self,
        config: Config,
        invalid: InvalidRecords,
        *,
        calibrator: Calibrator | None = None,
        join: LabelJoin | None = None,
        alert_sink: AlertSink | None = None,
        canary_sink: CanarySink | None = None,
        references: dict[Key, dict[str, list[object]]] | None = None,
    ) -> None:
        self.config = config
        self.decoder = EventDecoder(config.limits.max_event_bytes, InferenceEvent)
        self.label_decoder = EventDecoder(config.limits.max_event_bytes, LabelEvent)
        self.labels_topic = config.labels.topic
        self.overflow = Overflow()
        self.calibrator = calibrator or Calibrator()
        self.join = join
        self.alert_sink = alert_sink
        self.canary = CanaryMonitor(config.canary) if config.canary.enabled else None
        self.canary_sink = canary_sink
        self._references = references or {}
        self.keys: KeyTable[KeyState] = KeyTable(config.limits.max_keys, self._new_key, self.overflow)
        self.invalid = invalid
        self.lock = threading.Lock()
        self.records = 0
        # Labels carried inside inference events (the join counts those from the topic).
        self.inline_labels = 0
        # Newest event time seen: the clock of a replay's label join.
        self.watermark = 0.0
        # Recent real inputs per logged model that a shadow model replays (shadow.models).
        shadow = config.shadow
        self.reservoirs: dict[str, Reservoir] = (
            {m.source_model: Reservoir(shadow.reservoir_size) for m in shadow.models} if shadow.enabled else {}
        )
        # The partition number each model's records come from. Producers key by model and the
        # labels topic is co-partitioned, so a model's keys, canary, reservoir and join entries
        # are one partition's state and move with it (checkpoints are per partition). Bounded:
        # models with a key, and models of held labels up to twice the key cap.
        self.partition_of: dict[str, int] = {}

    def _new_key(self, key: Key) -> KeyState:
        c = self.config
        a = c.accuracy
        quality = KeyPerformance(
            a.window_events,
            a.window_seconds,
            a.positive_class,
            a.slice_features,
            a.max_slice_levels,
            a.estimate_reference_events,
            self.overflow,
        )
        drift = None
        if c.drift.enabled:
            drift = KeyDrift(key, c.drift, self.calibrator, c.limits.max_features, self._references.get(key))
        return KeyState(KeyStats(c.metrics, c.limits, self.overflow), quality, drift)

    def process(self, records: Sequence[RawRecord]) -> dict[TopicPartition, int]:
        """Fold `records` into state; return the next offset to commit per partition."""
        groups: dict[Key, tuple[list[InferenceEvent], list[float | None], list[int], int]] = {}
        label_partitions: dict[str, int] = {}
        failures: list[tuple[RawRecord, DecodeFailure]] = []
        labels: list[LabelRecord] = []
        offsets: dict[TopicPartition, int] = {}
        decoder = self.decoder
        fast_decode = decoder.fast_decode
        max_bytes = decoder.max_bytes
        labels_topic = self.labels_topic
        for rec in records:
            offsets[(rec.topic, rec.partition)] = rec.offset + 1
            value = rec.value
            if rec.topic == labels_topic:
                label = self.label_decoder.decode(value)
                if isinstance(label, DecodeFailure):
                    failures.append((rec, label))
                else:
                    labels.append(
                        (label.request_id, label.model, label.label, event_time(label.timestamp, rec.timestamp))
                    )
                    label_partitions[label.model] = rec.partition
                continue
            event: InferenceEvent
            try:
                # Fast path: a sane size and valid JSON. Anything else goes to decode(), which
                # says why; this costs nothing for the valid majority.
                if value is None or len(value) > max_bytes:
                    raise ValueError
                event = fast_decode(value)
            except Exception:
                decoded = decoder.decode(value)
                if isinstance(decoded, DecodeFailure):
                    failures.append((rec, decoded))
                    continue
                event = decoded
            key = (event.model, event.version, event.variant)
            group = groups.get(key)
            if group is None:
                group = groups[key] = ([], [], [], rec.partition)
            group[0].append(event)
            ts = event.timestamp
            group[1].append(ts if type(ts) is float else event_time(ts, rec.timestamp))
            group[2].append(rec.offset)
        alerts: list[DriftAlert] = []
        reservoirs = self.reservoirs
        with self.lock:
            # Before the join sees this batch's predictions: in replay the watermark is its clock.
            newest = max((t for _, times, _, _ in groups.values() for t in times if t is not None), default=None)
            if newest is not None and newest > self.watermark:
                self.watermark = newest
            last_index: dict[str, int] = {}
            partition_of = self.partition_of
            for key, (events, times, indices, partition) in groups.items():
                routed, state = self.keys.route(key, len(events))
                partition_of[routed[0]] = partition
                if reservoirs and (reservoir := reservoirs.get(key[0])) is not None:
                    reservoir.add_many(events, _sample)
                state.stats.update(events, times)
                if state.drift is not None:
                    alerts += state.drift.update(events, indices, times)
                alerts += self._predictions(routed, state, events, times, indices)
                if self.canary is not None and routed == key:
                    self.canary.model(key[0]).add_events(key[2], key[1], events)
                    last_index[key[0]] = max(last_index.get(key[0], -1), indices[-1])
            verdicts = self._verdicts(last_index)
            for model, partition in label_partitions.items():
                if model in partition_of or len(partition_of) < 2 * self.keys.max_keys:
                    partition_of[model] = partition
            if labels and self.join is not None:
                alerts += self._grade(self.join.add_labels(labels))
            if labels and reservoirs:
                self._label_samples(labels)
            for rec, failure in failures:
                self.invalid.record(rec, failure)
            self.records += len(records)
        if alerts and self.alert_sink is not None:
            self.alert_sink(alerts)
        if verdicts and self.canary_sink is not None:
            self.canary_sink(verdicts)
        return offsets

    def _verdicts(self, last_index: dict[str, int]) -> list[dict[str, Any]]:
        """Re-judge the canaries of the models in this batch; timeline entries for changes."""
        if self.canary is None:
            return []
        entries = []
        for model, index in last_index.items():
            m = self.canary.model(model)
            entries += [m.timeline_entry(c, index) for c in m.evaluate()]
        return entries

    def add_labels(self, labels: Sequence[LabelRecord]) -> None:
        """Labels from outside the record stream (replay's --labels file)."""
        if self.join is None:
            raise RuntimeError("add_labels needs a pipeline built with a label join")
        with self.lock:
            alerts = self._grade(self.join.add_labels(labels))
            self._label_samples(labels)
        if alerts and self.alert_sink is not None:
            self.alert_sink(alerts)

    def _label_samples(self, labels: Sequence[LabelRecord]) -> None:
        if not self.reservoirs:
            return
        for request_id, model, label, _ in labels:
            reservoir = self.reservoirs.get(model)
            if reservoir is not None:
                reservoir.attach_label(request_id, label)

    def reservoir_sizes(self) -> dict[str, int]:
        return {model: len(r.items) for model, r in self.reservoirs.items()}

    def shadow_samples(self) -> dict[str, list[Sample]]:
        """A copy of every reservoir's samples, for a shadow run."""
        with self.lock:
            return {model: [Sample(*s.row()) for s in r.items] for model, r in self.reservoirs.items()}

    def _predictions(
        self, key: Key, state: KeyState, events: list[InferenceEvent], times: list[float | None], indices: list[int]
    ) -> list[DriftAlert]:
        """Grade inline labels, queue the rest for the join, feed the accuracy estimate."""
        labelled = [i for i, e in enumerate(events) if e.label is not None]
        if self.join is None and not labelled and not state.quality.labelled:
            return []
        slice_features = self.config.accuracy.slice_features
        # Every event of a group has the same model: the key's, unless the key is the overflow one.
        overflowed = events[0].model if events[0].model != key[0] else None
        # Without a join only the inline-labelled events need a PendingPrediction.
        chosen = range(len(events)) if self.join is not None else labelled
        pending = {
            i: PendingPrediction(
                events[i].request_id,
                key,
                events[i].prediction,
                events[i].score,
                events[i].probabilities,
                times[i],
                tuple(_slice_value(events[i], name) for name in slice_features),
                indices[i],
                overflowed,
            )
            for i in chosen
        }
        positive = self.config.accuracy.positive_class
        conf = [c for e in events if (c := confidence(e.prediction, e.score, e.probabilities, positive)) is not None]
        state.quality.add_predictions(conf)
        joined = [JoinedLabel(pending.pop(i), events[i].label, times[i]) for i in labelled]  # type: ignore[arg-type]
        self.inline_labels += len(labelled)
        if self.join is not None:
            joined += self.join.add_predictions(pending.values())
        return self._grade(joined)

    def _grade(self, joined: list[JoinedLabel]) -> list[DriftAlert]:
        """Joined labels into their keys' quality windows and error streams."""
        by_key: dict[Key, list[JoinedLabel]] = {}
        for j in joined:
            by_key.setdefault(j.key, []).append(j)
        alerts: list[DriftAlert] = []
        positive = self.config.accuracy.positive_class
        for key, items in by_key.items():
            state = self.keys.get(key)
            if state is None:  # the key was routed before a restart that lost it
                continue
            state.quality.add_joined(items)
            if state.quality.task != "classification":
                continue
            graded_items = [graded(j) for j in items]
            wrong = [is_wrong(g, positive) for g in graded_items]
            keep = [i for i, w in enumerate(wrong) if w is not None]
            if state.drift is not None and state.drift.watch_errors:
                alerts += state.drift.update_errors(
                    [bool(wrong[i]) for i in keep],
                    [items[i].prediction.index or 0 for i in keep],
                    [graded_items[i].timestamp for i in keep],
                )
            if self.canary is not None:
                self.canary.model(key[0]).add_graded(key[2], key[1], [bool(wrong[i]) for i in keep])
        return alerts

    def tick(self) -> None:
        """What must happen even when no records come (the loop calls this): expire what outlived
        its TTL or hold, and let streams take calibrations that finished in the background."""
        alerts: list[DriftAlert] = []
        with self.lock:
            if self.join is not None:
                self.join.expire()
            for _, state in self.keys.items():
                if state.drift is not None:
                    alerts += state.drift.poll()
        if alerts and self.alert_sink is not None:
            self.alert_sink(alerts)

    def summary(self) -> list[dict[str, Any]]:
        """Final figures per key: traffic, quality and drift (/v1/status, the replay report)."""
        with self.lock:
            rows = []
            for key, state in self.keys.items():
                row = asdict(state.stats.summary(key))
                row["quality"] = state.quality.summary()
                if state.drift is not None:
                    row["drift"] = {
                        "streams": state.drift.states(),
                        "detections": {n: m.detections for n, m in state.drift.streams.items() if m.detections},
                    }
                rows.append(row)
            return rows

    def snapshot(self, offsets: Mapping[TopicPartition, int]) -> dict[str, Any]:
        """Every piece of state with the next offsets it reflects: a checkpoint's content (JSON-ready).

        `partitions` holds one shard per partition number (its offsets on every topic and its
        models' state), which a replica assigned that partition restores alone; `process` the
        counters of this process as a whole. Taken between batches under the lock, so state and
        offsets agree: restoring and resuming at the offsets continues as if nothing had happened.
        """
        with self.lock:
            models: dict[int, set[str]] = {p: set() for _, p in offsets}
            for model, p in self.partition_of.items():
                models.setdefault(p, set()).add(model)
            # One pass over the join for all partitions: it can hold far more entries than keys.
            joins = self.join.snapshots(self.partition_of.get, models) if self.join is not None else None
            return {
                "version": SNAPSHOT_VERSION,
                "process": {
                    "version": SNAPSHOT_VERSION,
                    "records": self.records,
                    "inline_labels": self.inline_labels,
                    "watermark": self.watermark,
                    "invalid": dict(self.invalid.counts),
                    "overflow": dict(self.overflow.counts),
                    "join": dict(self.join.counts) if self.join is not None else None,
                    # The order keys and canaries were created in, which /metrics and reports follow.
                    "key_order": [list(key) for key, _ in self.keys.items()],
                    "canary_order": list(self.canary.models) if self.canary is not None else [],
                },
                "partitions": {str(p): self._shard(p, ms, offsets, joins) for p, ms in sorted(models.items())},
            }

    def _shard(
        self,
        partition: int,
        models: set[str],
        offsets: Mapping[TopicPartition, int],
        joins: dict[int, dict[str, Any]] | None,
    ) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "partition": partition,
            "offsets": [[t, o] for (t, p), o in sorted(offsets.items()) if p == partition],
            "keys": [
                [
                    list(key),
                    state.stats.snapshot(),
                    state.quality.snapshot(),
                    state.drift.snapshot() if state.drift is not None else None,
                ]
                for key, state in self.keys.items()
                if key[0] in models
            ],
            "join": None if joins is None else joins[partition],
            "canary": self.canary.snapshot(models) if self.canary is not None else None,
            "reservoirs": {model: r.snapshot() for model, r in self.reservoirs.items() if model in models},
        }

    def restore(self, state: Mapping[str, Any]) -> dict[TopicPartition, int]:
        """A whole snapshot into this freshly built pipeline; returns the offsets to resume from."""
        _check_version(state)  # and each part checks its own: they are stored apart
        process = state["process"]
        self.restore_process(process)
        with self.lock:  # placeholders in the original order; the shards replace them in place
            for key in process["key_order"]:
                self.keys.adopt((key[0], key[1], key[2]))
            if self.canary is not None:
                for model in process["canary_order"]:
                    self.canary.model(model)
        offsets: dict[TopicPartition, int] = {}
        for shard in state["partitions"].values():
            offsets.update(self.restore_partition(shard))
        return offsets

    def restore_process(self, state: Mapping[str, Any]) -> None:
        """The process-wide counters of a snapshot (a single replica's restart)."""
        _check_version(state)
        with self.lock:
            self.records = int(state["records"])
            self.inline_labels = int(state["inline_labels"])
            self.watermark = float(state["watermark"])
            self.invalid.counts.update({k: int(v) for k, v in state["invalid"].items()})
            self.overflow.counts.update({k: int(v) for k, v in state["overflow"].items()})
            if self.join is not None and state["join"] is not None:
                self.join.counts.update({k: int(v) for k, v in state["join"].items() if k in self.join.counts})

    def restore_partition(self, shard: Mapping[str, Any]) -> dict[TopicPartition, int]:
        """One partition's shard (on assignment); returns where its topics resume.

        Parts this pipeline's config does not have (a join, the canary, drift, a reservoir) are
        dropped; parts it has that the shard lacks start empty.
        """
        _check_version(shard)
        partition = int(shard["partition"])
        with self.lock:
            for key, stats, quality, drift in shard["keys"]:
                ks = self.keys.adopt((key[0], key[1], key[2]))
                ks.stats.restore(stats)
                ks.quality.restore(quality)
                if ks.drift is not None and drift is not None:
                    ks.drift.restore(drift)
                self.partition_of[key[0]] = partition
            if self.join is not None and shard["join"] is not None:
                self.join.restore(shard["join"], counts=False)
                for _, _, model, _, _ in shard["join"]["held_labels"]:
                    self.partition_of.setdefault(model, partition)
            if self.canary is not None and shard["canary"] is not None:
                self.canary.restore(shard["canary"])
            for model, r in shard["reservoirs"].items():
                if model in self.reservoirs:
                    self.reservoirs[model].restore(r)
                    self.partition_of[model] = partition
        return {(t, partition): int(o) for t, o in shard["offsets"]}

    def drop_partitions(self, partitions: Collection[int]) -> None:
        """Forget the state of `partitions`: another replica owns them now."""
        with self.lock:
            models = {m for m, p in self.partition_of.items() if p in partitions}
            for key, _ in self.keys.items():
                if key[0] in models:
                    self.keys.remove(key)
            if self.join is not None:
                self.join.drop(models)
            if self.canary is not None:
                self.canary.drop(models)
            size = self.config.shadow.reservoir_size
            for model in models & self.reservoirs.keys():
                self.reservoirs[model] = Reservoir(size)
            for model in models:
                del self.partition_of[model]

    @property
    def events(self) -> int:
        return sum(s.stats.events for _, s in self.keys.items())


def _check_version(state: Mapping[str, Any]) -> None:
    if state.get("version") != SNAPSHOT_VERSION:
        raise ValueError(
            f"checkpoint version {state.get('version')!r} is not {SNAPSHOT_VERSION}, the one this inferwatch "
            "reads; delete the checkpoint to start afresh (state is rebuilt from new events)"
        )


def _sample(e: InferenceEvent) -> Sample:
    return Sample(e.request_id, dict(e.features or {}), e.prediction, e.score, e.label, e.version, e.variant)


def _slice_value(e: InferenceEvent, name: str) -> str:
    v = e.features.get(name) if e.features else None
    return "" if v is None else str(v)
