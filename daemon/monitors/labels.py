"""Join ground-truth labels, which arrive late on their own topic, to their predictions by request_id.

Memory is bounded by time and by entries whatever the labels do: every store is an insertion-
ordered dict whose front is its oldest entry, so expiry and eviction pop from the front in
amortized O(1) and never scan the store.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from daemon.ingest.batch import Key
from daemon.ingest.decode import LabelRecord
from daemon.ingest.events import Label

COUNTS = ("joined", "late", "unmatched", "expired", "evicted", "duplicate")


class PendingPrediction(NamedTuple):
    """A prediction waiting for its label. `slices` is opaque here: it is for per-slice accuracy."""

    request_id: str
    key: Key
    prediction: Label | None
    score: float | None = None
    probabilities: dict[str, float] | None = None
    timestamp: float | None = None
    slices: tuple[str, ...] = ()
    # Input position of the prediction's event: an alert on the error stream points at it.
    position: int | None = None
    # The model the event named, when its key is the overflow key (labels name that model).
    overflowed_model: str | None = None

    @property
    def model(self) -> str:
        """The model a label for this prediction names."""
        return self.overflowed_model or self.key[0]


class JoinedLabel(NamedTuple):
    """A prediction and the label that grades it."""

    prediction: PendingPrediction
    label: Label
    label_timestamp: float | None

    @property
    def request_id(self) -> str:
        return self.prediction.request_id

    @property
    def key(self) -> Key:
        return self.prediction.key


class _Held(NamedTuple):
    """A label that came before its prediction."""

    at: float
    model: str
    label: Label
    timestamp: float | None


class LabelJoin:
    """Joins labels to predictions by request_id, in either order, in bounded memory.

    >>> now = [0.0]
    >>> join = LabelJoin(ttl_s=60, max_entries=1000, label_hold_s=30, clock=lambda: now[0])
    >>> join.add_labels([("r1", "m", "cat", None)])  # the label comes first: it is held
    []
    >>> [j.label for j in join.add_predictions([PendingPrediction("r1", ("m", "v1", "a"), "dog")])]
    ['cat']
    >>> now[0] = 61.0
    >>> join.add_predictions([PendingPrediction("r2", ("m", "v1", "a"), "dog")])
    []
    >>> join.counts["joined"], len(join)
    (1, 1)
    """

    def __init__(
        self,
        ttl_s: float,
        max_entries: int,
        label_hold_s: float,
        clock: Callable[[], float] = time.monotonic,
        counts: dict[str, int] | None = None,
    ) -> None:
        for name, value in (("ttl_s", ttl_s), ("label_hold_s", label_hold_s)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value > 0)
            ):
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an integer >= 1, got {max_entries!r}")
        self.ttl_s = float(ttl_s)
        self.max_entries = max_entries
        self.label_hold_s = float(label_hold_s)
        self.clock = clock
        # Outcomes by name; the pipeline shares one dict among its partitions' joins.
        self.counts: dict[str, int] = counts if counts is not None else dict.fromkeys(COUNTS, 0)
        # OrderedDict rather than dict: popping a plain dict's front leaves dummy slots that
        # the next `next(iter(d))` must skip, which turns steady expiry quadratic.
        self._predictions: OrderedDict[str, tuple[float, PendingPrediction]] = OrderedDict()
        self._held: OrderedDict[str, _Held] = OrderedDict()
        # Recently joined ids, to tell a duplicate label from an early one: id -> (time, model).
        # The model says which partition's state an id belongs to (checkpoints follow partitions).
        self._joined: OrderedDict[str, tuple[float, str]] = OrderedDict()
        # Ids whose prediction expired or was evicted, to tell a late label from an unmatched one.
        self._gone: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def add_predictions(self, items: Iterable[PendingPrediction]) -> list[JoinedLabel]:
        """Store predictions; return those that a held label joins now."""
        now = self.clock()
        self._expire(now)
        counts, predictions, held_labels = self.counts, self._predictions, self._held
        joined: list[JoinedLabel] = []
        for p in items:
            rid = p.request_id
            # A redelivered prediction (Kafka is at-least-once) must not reopen a closed join.
            if rid in predictions or rid in self._joined:
                counts["duplicate"] += 1
                continue
            held = held_labels.pop(rid, None)
            if held is not None:
                if held.model == p.model:
                    joined.append(JoinedLabel(p, held.label, held.timestamp))
                    counts["joined"] += 1
                    self._remember(self._joined, rid, now, held.model)
                    continue
                # The held label was for another model; this prediction may still get its own.
                counts["unmatched"] += 1
            if len(predictions) >= self.max_entries:
                old, (_, evicted) = predictions.popitem(last=False)
                counts["evicted"] += 1
                self._remember(self._gone, old, now, evicted.key[0])
            self._gone.pop(rid, None)
            predictions[rid] = (now, p)
        return joined

    def add_labels(self, items: Iterable[LabelRecord]) -> list[JoinedLabel]:
        """Join labels to stored predictions; hold those whose prediction has not come yet."""
        now = self.clock()
        self._expire(now)
        counts, predictions, held_labels = self.counts, self._predictions, self._held
        joined: list[JoinedLabel] = []
        for rid, model, label, ts in items:
            entry = predictions.get(rid)
            if entry is not None:
                if entry[1].model == model:
                    del predictions[rid]
                    joined.append(JoinedLabel(entry[1], label, ts))
                    counts["joined"] += 1
                    self._remember(self._joined, rid, now, model)
                else:
                    counts["unmatched"] += 1
            elif rid in self._joined or rid in held_labels:
                counts["duplicate"] += 1
            elif rid in self._gone:
                counts["late"] += 1
            else:
                if len(held_labels) >= self.max_entries:
                    held_labels.popitem(last=False)
                    counts["evicted"] += 1
                held_labels[rid] = _Held(now, model, label, ts)
        return joined

    def expire(self) -> None:
        """Drop what has outlived its TTL or hold. add_* do this too; call it when idle."""
        self._expire(self.clock())

    def _expire(self, now: float) -> None:
        # An entry lives `limit` seconds: it goes once now - inserted >= limit.
        counts, ttl_s = self.counts, self.ttl_s
        predictions = self._predictions
        while predictions:
            rid, (at, p) = next(iter(predictions.items()))
            if now - at < ttl_s:
                break
            del predictions[rid]
            counts["expired"] += 1
            self._remember(self._gone, rid, now, p.key[0])
        held_labels = self._held
        while held_labels:
            rid, held = next(iter(held_labels.items()))
            if now - held.at < self.label_hold_s:
                break
            del held_labels[rid]
            counts["unmatched"] += 1
        for memory in (self._joined, self._gone):
            while memory:
                rid, (at, _) = next(iter(memory.items()))
                if now - at < ttl_s:
                    break
                del memory[rid]

    def _remember(self, memory: OrderedDict[str, tuple[float, str]], rid: str, now: float, model: str) -> None:
        # Pop first so a re-remembered id moves to the back and the front stays the oldest.
        memory.pop(rid, None)
        memory[rid] = (now, model)
        if len(memory) > self.max_entries:
            memory.popitem(last=False)

    def sizes(self) -> dict[str, int]:
        return {
            "predictions": len(self._predictions),
            "held_labels": len(self._held),
            "joined_ids": len(self._joined),
            "gone_ids": len(self._gone),
        }

    def __len__(self) -> int:
        """Entries waiting for their other half: pending predictions and held labels."""
        return len(self._predictions) + len(self._held)

    def snapshot(self) -> dict[str, Any]:
        """Every entry, oldest first, with times as ages (a restore in a new process works).

        Nothing expires here: a snapshot must not change what an uninterrupted run would do. The
        outcome counts are the partition's `Totals`, checkpointed with them.
        """
        now = self.clock()
        return {
            # [request_id, age_s, key, prediction, score, probabilities, timestamp, slices, index, overflowed_model]
            "predictions": [[rid, now - at, *p[1:]] for rid, (at, p) in self._predictions.items()],
            "held_labels": [[rid, now - h.at, h.model, h.label, h.timestamp] for rid, h in self._held.items()],
            "joined_ids": [[rid, now - at, m] for rid, (at, m) in self._joined.items()],
            "gone_ids": [[rid, now - at, m] for rid, (at, m) in self._gone.items()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take a snapshot's entries into this empty join. Over max_entries the oldest go."""
        now = self.clock()
        for rid, age, key, prediction, score, probabilities, ts, slices, index, overflowed in state["predictions"]:
            p = PendingPrediction(
                rid, (str(key[0]), str(key[1]), str(key[2])), prediction, score, probabilities, ts, tuple(slices),
                index, overflowed,
            )  # fmt: skip
            self._predictions[rid] = (now - float(age), p)
        for rid, age, model, label, ts in state["held_labels"]:
            self._held[rid] = _Held(now - float(age), model, label, ts)
        for memory, rows in ((self._joined, state["joined_ids"]), (self._gone, state["gone_ids"])):
            for rid, age, model in rows:
                memory[rid] = (now - float(age), str(model))
        self._trim(now)

    def _trim(self, now: float) -> None:
        """Hold every store to max_entries, oldest out first (after a restore with a smaller cap)."""
        while len(self._predictions) > self.max_entries:
            rid, (_, p) = self._predictions.popitem(last=False)
            self.counts["evicted"] += 1
            self._remember(self._gone, rid, now, p.key[0])
        while len(self._held) > self.max_entries:
            self._held.popitem(last=False)
            self.counts["evicted"] += 1
        for memory in (self._joined, self._gone):
            while len(memory) > self.max_entries:
                memory.popitem(last=False)
