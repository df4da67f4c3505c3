"""One partition's state: everything its records feed, and the offsets it reflects.

A `PartitionState` owns its keys (rows of the traffic, drift and canary arrays), the quality
windows of its labelled keys, its canaries, the label-join entries of the predictions that arrived
on it, the reservoirs of its models, and the next offset on every topic of the partition. It is
the unit of checkpoints and handovers: `snapshot()` and `restore()` are its own, and dropping a
partition is dropping this object.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.config import Config
from daemon.ingest.batch import Batch, Key
from daemon.monitors.admission import FeatureAdmission
from daemon.monitors.canary import Canary
from daemon.monitors.drift import Calibrator, Drift, DriftAlert
from daemon.monitors.labels import JoinedLabel, LabelJoin, PendingPrediction
from daemon.monitors.names import Overflow
from daemon.monitors.quality import KeyPerformance, graded
from daemon.monitors.reservoir import Reservoir, Sample
from daemon.monitors.slo import Slo
from daemon.monitors.traffic import Traffic
from daemon.state.routing import OTHER_KEY
from daemon.state.totals import Totals
from detectors.metrics import CLASSIFICATION, Graded, confidence, is_positive, is_wrong

Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Shared:
    """What a pipeline's partition states share: config, the calibration threads, process counters."""

    config: Config
    calibrator: Calibrator
    overflow: Overflow
    join_labels: bool  # False: predictions do not wait for labels (no labels topic)
    references: dict[Key, dict[str, list[Any]]]
    reservoir_models: frozenset[str]


class PartitionState:
    def __init__(self, partition: int, shared: Shared) -> None:
        self.partition = partition
        self.shared = shared
        c = shared.config
        self.offsets: dict[str, int] = {}  # topic -> next offset
        # Read through the repartition topic: the newest input offset seen per "topic/partition"
        # of the input (daemon.ingest.repartition.unwrap drops what it already covers).
        self.seen: dict[str, int] = {}
        self.keys: list[Key] = []
        self._rows: dict[Key, int] = {}
        self.admission = FeatureAdmission(c.limits)
        self.traffic = Traffic(c.metrics, c.limits, shared.overflow, self.keys)
        self.slo = Slo(c.slo, self.keys)
        self.quality: list[KeyPerformance | None] = []
        self.drift = (
            Drift(c.drift, shared.calibrator, c.limits.max_features, self.keys, shared.overflow, shared.references)
            if c.drift.enabled
            else None
        )
        self.canary = Canary(c.canary, self.keys) if c.canary.enabled else None
        self.totals = Totals()
        self.join = (
            LabelJoin(c.labels.ttl_seconds, c.labels.max_entries, c.labels.hold_seconds, counts=self.totals.labels)
            if shared.join_labels
            else None
        )
        self.reservoirs: dict[str, Reservoir] = {}

    # -- keys ---------------------------------------------------------------------------------

    def add_keys(self, keys: list[Key]) -> list[int]:
        start = len(self.keys)
        for key in keys:
            self._rows[key] = len(self.keys)
            self.keys.append(key)
        n = len(keys)
        self.admission.add_rows(n)
        self.traffic.add_rows(n)
        self.slo.add_rows(n)
        self.quality.extend(self._quality() if self.join is not None else None for _ in range(n))
        if self.drift is not None:
            self.drift.add_rows(n)
        if self.canary is not None:
            self.canary.add_rows(n)
        return list(range(start, start + n))

    def overflow_row(self) -> int:
        row = self._rows.get(OTHER_KEY)
        return row if row is not None else self.add_keys([OTHER_KEY])[0]

    def row_of(self, key: Key) -> int | None:
        return self._rows.get(key)

    def models(self) -> set[str]:
        """The models this partition holds state of (keys, canaries, reservoirs)."""
        out = {k[0] for k in self.keys if k != OTHER_KEY}
        out.update(self.reservoirs)
        return out

    def _quality(self) -> KeyPerformance:
        a = self.shared.config.accuracy
        return KeyPerformance(
            a.window_events,
            a.window_seconds,
            a.positive_class,
            a.slice_features,
            a.max_slice_levels,
            a.estimate_reference_events,
            self.shared.overflow,
            a.min_samples,
        )

    # -- batches ------------------------------------------------------------------------------

    def update(
        self, rows: Ints, batch: Batch, overflowed: npt.NDArray[np.bool_]
    ) -> tuple[list[DriftAlert], list[dict[str, Any]], list[JoinedLabel], list[JoinedLabel]]:
        """Fold in the events of `batch` (rows[i]: event i's row; overflowed[i]: its key is the
        overflow key). Returns drift alerts, canary timeline entries, and the labels that joined:
        those the events carried (the canary has counted them, each at its request) and those
        the join matched (the pipeline grades both: a joined prediction's key may live in another
        partition)."""
        order = np.argsort(rows, kind="stable")
        starts = np.r_[True, rows[order][1:] != rows[order][:-1]]
        first = np.flatnonzero(starts)
        rank = np.empty(len(rows), dtype=np.int64)
        rank[order] = np.arange(len(rows)) - np.repeat(first, np.diff(np.r_[first, len(rows)]))
        # Traffic and drift see the features each key tracks; what it stopped tracking goes.
        tracked, released = self.admission.filter(rows, rank, batch)
        for row, name in released:
            self.traffic.release(row, name)
            if self.drift is not None:
                self.drift.release(row, name)
        self.traffic.update(rows, rank, tracked)
        good = self.slo.update(rows, batch)
        alerts = self.drift.update(rows, order, tracked) if self.drift is not None else []
        inline, joined = self._predictions(rows, order, batch, overflowed)
        timeline = []
        if self.canary is not None:
            timeline = self.canary.update(
                rows, batch, _graded_inline(batch, self.shared.config.accuracy.positive_class), good
            )
        if self.reservoirs or self.shared.reservoir_models:
            self._sample(rows, batch)
        return alerts, timeline, inline, joined

    def _predictions(
        self, rows: Ints, order: Ints, batch: Batch, overflowed: npt.NDArray[np.bool_]
    ) -> tuple[list[JoinedLabel], list[JoinedLabel]]:
        """Queue predictions for the join, feed the accuracy estimate; returns the inline labels
        and what the join matched, to grade."""
        labelled = batch.labelled
        if self.join is None and not len(labelled):
            keys = np.unique(rows).tolist()
            if not any(self.quality[r] is not None and self.quality[r].labelled for r in keys):
                return [], []
        a = self.shared.config.accuracy
        positive = a.positive_class
        confidences = _confidences(batch, positive)
        events = batch.events
        srows = rows[order]
        bounds = np.flatnonzero(np.r_[True, srows[1:] != srows[:-1], True])
        chosen = np.zeros(len(rows), dtype=np.bool_)
        if self.join is not None:
            chosen[:] = True
        else:
            chosen[labelled] = True
        inline = np.zeros(len(rows), dtype=np.bool_)
        inline[labelled] = True
        inline_joined: list[JoinedLabel] = []
        pending: list[PendingPrediction] = []
        slice_features = a.slice_features
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            row = int(srows[lo])
            idx = order[lo:hi]
            quality = self.quality[row]
            if quality is None:
                if not inline[idx].any():
                    continue
                quality = self.quality[row] = self._quality()
            conf = confidences[idx]
            quality.add_predictions(conf[~np.isnan(conf)].tolist())
            key = self.keys[row]
            for i in idx[chosen[idx]].tolist():
                e = events[i]
                p = PendingPrediction(
                    e.request_id,
                    key,
                    e.prediction,
                    e.score,
                    e.probabilities,
                    _time(batch.time[i]),
                    tuple(_slice_value(e.features, name) for name in slice_features),
                    int(batch.index[i]),
                    e.model if overflowed[i] else None,
                )
                if inline[i]:
                    inline_joined.append(JoinedLabel(p, e.label, p.timestamp))
                else:
                    pending.append(p)
        joined = self.join.add_predictions(pending) if self.join is not None else []
        return inline_joined, joined

    def grade(
        self, row: int, items: list[JoinedLabel], canary: bool = True
    ) -> tuple[bool, list[bool], list[int], list[float]]:
        """Joined labels of one key into its quality windows and (unless it counted them already)
        canary; returns what the error stream takes: (classification?, wrong flags, indices, times)
        of the gradable ones."""
        quality = self.quality[row]
        if quality is None:
            quality = self.quality[row] = self._quality()
        quality.add_joined(items)
        if quality.task != CLASSIFICATION:
            return False, [], [], []
        positive = self.shared.config.accuracy.positive_class
        graded_items = [graded(j) for j in items]
        wrong = [is_wrong(g, positive) for g in graded_items]
        keep = [i for i, w in enumerate(wrong) if w is not None]
        flags = [bool(wrong[i]) for i in keep]
        if canary and self.canary is not None:
            self.canary.add_graded(
                row, flags, [items[i].prediction.timestamp for i in keep], [items[i].label_timestamp for i in keep]
            )
        times = [graded_items[i].timestamp for i in keep]
        return (
            True,
            flags,
            [items[i].prediction.position or 0 for i in keep],
            [float("nan") if t is None else t for t in times],
        )

    def _sample(self, rows: Ints, batch: Batch) -> None:
        models = self.shared.reservoir_models
        events = batch.events
        by_model: dict[str, list[int]] = {}
        for i, e in enumerate(events):
            if e.model in models:
                by_model.setdefault(e.model, []).append(i)
        size = self.shared.config.shadow.reservoir_size
        for model, idx in by_model.items():
            reservoir = self.reservoirs.get(model)
            if reservoir is None:
                reservoir = self.reservoirs[model] = Reservoir(size)
            reservoir.add_many([events[i] for i in idx], _sample)

    # -- reading ------------------------------------------------------------------------------

    def summary(self, row: int) -> dict[str, Any]:
        key = self.keys[row]
        out = asdict(self.traffic.summary(row, key))
        quality = self.quality[row]
        out["quality"] = (quality or self._quality()).summary()
        if self.drift is not None:
            out["drift"] = {
                "streams": self.drift.states(row),
                "detections": self.drift.detections_of(row),
                "drifted_since": self.drift.drifted_since(row),
            }
        return out

    # -- checkpoints --------------------------------------------------------------------------

    def snapshot(self, fresh: bool = False) -> dict[str, Any]:
        """Everything, consistent with `offsets`: taken between batches. Drift references are shared
        with the drift, not copied, unless `fresh` (see `Drift.snapshot`)."""
        return {
            "partition": self.partition,
            "offsets": [[t, o] for t, o in sorted(self.offsets.items())],
            "keys": [list(k) for k in self.keys],
            "admission": self.admission.snapshot(),
            "traffic": self.traffic.snapshot(),
            "slo": self.slo.snapshot(),
            "quality": [None if q is None else q.snapshot() for q in self.quality],
            "drift": None if self.drift is None else self.drift.snapshot(fresh),
            "canary": None if self.canary is None else self.canary.snapshot(),
            "join": None if self.join is None else self.join.snapshot(),
            "reservoirs": {model: r.snapshot() for model, r in self.reservoirs.items()},
            "totals": self.totals.snapshot(),
            "seen": dict(self.seen),
        }

    @classmethod
    def restore(cls, shard: dict[str, Any], shared: Shared) -> PartitionState:
        """A partition's state from its shard. Parts this config does not have (a join, the canary,
        drift) are dropped; parts it has that the shard lacks start empty."""
        state = cls(int(shard["partition"]), shared)
        state.offsets = {str(t): int(o) for t, o in shard["offsets"]}
        if "totals" in shard:  # shards written before totals were the partition's start at zero
            state.totals.restore(shard["totals"])
        state.seen = {str(k): int(v) for k, v in shard.get("seen", {}).items()}
        if state.canary is not None and shard["canary"] is not None:
            state.canary.restore(shard["canary"])
        keys: list[Key] = [(str(k[0]), str(k[1]), str(k[2])) for k in shard["keys"]]
        state.add_keys(keys)
        if "admission" in shard:  # shards written before admission: every feature was tracked at once
            state.admission.restore(shard["admission"])
        state.traffic.restore(shard["traffic"])
        state.slo.restore(shard.get("slo"))  # shards written before the SLO counts have none
        for row, q in enumerate(shard["quality"]):
            if q is not None:
                quality = state.quality[row] = state._quality()
                quality.restore(q)
        if state.drift is not None and shard["drift"] is not None:
            state.drift.restore(shard["drift"])
        if state.join is not None and shard["join"] is not None:
            state.join.restore(shard["join"])
        size = shared.config.shadow.reservoir_size
        for model, r in shard["reservoirs"].items():
            if model in shared.reservoir_models:
                reservoir = state.reservoirs[model] = Reservoir(size)
                reservoir.restore(r)
        return state


def _confidences(batch: Batch, positive_class: str | None) -> npt.NDArray[np.float64]:
    """The probability each prediction gives its own class (detectors.metrics.confidence), NaN for none."""
    side = np.array(
        [{True: 1, False: 0, None: -1}[is_positive(name, positive_class)] for name in batch.classes] + [-1],
        dtype=np.int64,
    )[batch.cls]
    s = batch.score
    given = batch.score_given & np.isfinite(s)
    high = np.where(side == -1, s >= 0.5, side == 1)
    out = np.where(given, np.where(high, s, 1.0 - s), np.nan)
    for i in np.flatnonzero(~given).tolist():
        e = batch.events[i]
        if e.probabilities:
            c = confidence(e.prediction, e.score, e.probabilities, positive_class)
            out[i] = np.nan if c is None else c
    return out


def _graded_inline(batch: Batch, positive_class: str | None) -> npt.NDArray[np.float64]:
    """1 (right) or 0 (wrong) for each event graded by the label it carries; NaN otherwise."""
    out = np.full(len(batch), np.nan)
    for i in batch.labelled.tolist():
        e = batch.events[i]
        wrong = is_wrong(Graded(e.prediction, e.label, e.score, e.probabilities, None), positive_class)
        if wrong is not None:
            out[i] = 0.0 if wrong else 1.0
    return out


def _time(t: float) -> float | None:
    return None if t != t else float(t)


def _slice_value(features: dict[str, Any] | None, name: str) -> str:
    v = features.get(name) if features else None
    return "" if v is None else str(v)


def _sample(e: Any) -> Sample:
    return Sample(e.request_id, dict(e.features or {}), e.prediction, e.score, e.label, e.version, e.variant)
