"""Traffic, errors, latency, predictions and feature completeness of every key of a partition, as arrays.

One row per key; a batch updates every row it touches at once (`np.add.at` over row x bucket),
so the cost of a batch does not grow with the number of keys in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.config import LimitsConfig, MetricsConfig
from daemon.export.families import Sink
from daemon.ingest.batch import Batch, Key
from daemon.monitors.arrays import grown
from daemon.monitors.names import FREE, OTHER, Overflow, RowNames
from detectors.quantiles import LogBuckets

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]

# The latency sketch's buckets: 1% relative accuracy from 1 µs to 1e6 s.
SKETCH = LogBuckets()


@dataclass(slots=True)
class KeySummary:
    """Final figures for one key: /v1/status and the replay report's summary."""

    model: str
    version: str
    variant: str
    events: int
    errors: int
    error_rate: float
    latency_seconds: dict[str, float | None]
    last_event_timestamp: float | None
    errors_by_type: dict[str, int] = field(default_factory=dict)


class Histograms:
    """Prometheus histograms, one row per key: bucket i counts values ≤ bounds[i], then +Inf.

    Rows may have bounds of their own (`sets`: set 0 is the default, others are models' own,
    `of_model` says whose; `row_set` which a row has): a row with k bounds uses its first k + 1
    columns."""

    def __init__(
        self, bounds: tuple[float, ...], *others: tuple[float, ...], of_model: dict[str, int] | None = None
    ) -> None:
        self.sets = [np.asarray(b, dtype=np.float64) for b in (bounds, *others)]
        self.of_model = of_model or {}
        self.bounds = self.sets[0]
        self.counts = np.zeros((0, max(map(len, self.sets)) + 1), dtype=np.int64)
        self.sums = np.zeros(0, dtype=np.float64)
        self.row_set = np.zeros(0, dtype=np.int64)

    @classmethod
    def single(cls, bounds: tuple[float, ...]) -> Histograms:
        """One histogram (row 0): the loop's batch durations."""
        h = cls(bounds)
        h.resize(1)
        return h

    def observe_one(self, value: float) -> None:
        self.counts[0, int(np.searchsorted(self.bounds, value, side="left"))] += 1
        self.sums[0] += value

    def resize(self, rows: int) -> None:
        self.counts = grown(self.counts, rows)
        self.sums = grown(self.sums, rows)
        self.row_set = grown(self.row_set, rows)

    def observe(self, rows: Ints, values: Floats) -> None:
        """Values (NaN: none) of the events of `rows`."""
        has = ~np.isnan(values)
        if not has.any():
            return
        r, v = rows[has], values[has]
        if len(self.sets) == 1:
            bucket = np.searchsorted(self.bounds, v, side="left")
        else:
            which = self.row_set[r]
            bucket = np.empty(len(r), dtype=np.int64)
            for k in np.unique(which).tolist():
                mine = which == k
                bucket[mine] = np.searchsorted(self.sets[k], v[mine], side="left")
        np.add.at(self.counts, (r, bucket), 1)
        np.add.at(self.sums, r, v)


class Traffic:
    """Counters, histograms, latency sketch, classes, error types and feature completeness per key row."""

    def __init__(self, metrics: MetricsConfig, limits: LimitsConfig, overflow: Overflow, keys: list[Key]) -> None:
        self.rows = 0
        self.keys = keys
        self.events = np.zeros(0, dtype=np.int64)
        self.last_time = np.zeros(0, dtype=np.float64)
        self.tokens = np.zeros((0, 2), dtype=np.int64)  # in, out
        self.histograms = {
            name: Histograms(*sets, of_model=of_model) for name, (sets, of_model) in bucket_sets(metrics).items()
        }
        self.latency, self.ttft, self.score = (self.histograms[n] for n in ("latency", "ttft", "score"))
        self.sketch = np.zeros((0, SKETCH.n_buckets), dtype=np.int64)
        self.error_names = RowNames(limits.max_error_types, "error_type", overflow)
        self.errors = np.zeros((0, limits.max_error_types + 1), dtype=np.int64)
        self.finish_names = RowNames(limits.max_finish_reasons, "finish_reason", overflow)
        self.finishes = np.zeros((0, limits.max_finish_reasons + 1), dtype=np.int64)
        self.class_names = RowNames(limits.max_classes, "class", overflow)
        self.classes = np.zeros((0, limits.max_classes + 1), dtype=np.int64)
        self.feature_names = RowNames(limits.max_features, "feature", overflow)
        # Per feature: events of the key before the feature was first named (they do not count as
        # missing it), and events that had it, not null.
        self.first_seen = np.zeros((0, limits.max_features), dtype=np.int64)
        self.present = np.zeros((0, limits.max_features), dtype=np.int64)

    def add_rows(self, n: int) -> None:
        start = self.rows
        self.rows += n
        for names in (self.error_names, self.finish_names, self.class_names, self.feature_names):
            names.add_rows(n)
        if self.rows > len(self.events):
            self._resize(max(self.rows, 2 * len(self.events), 16))
        for h in self.histograms.values():
            if h.of_model:
                for row in range(start, self.rows):
                    h.row_set[row] = h.of_model.get(self.keys[row][0], 0)

    def _resize(self, capacity: int) -> None:
        self.events = grown(self.events, capacity)
        self.last_time = grown(self.last_time, capacity, math.nan)
        self.tokens = grown(self.tokens, capacity)
        for h in self.histograms.values():
            h.resize(capacity)
        self.sketch = grown(self.sketch, capacity)
        self.errors = grown(self.errors, capacity)
        self.finishes = grown(self.finishes, capacity)
        self.classes = grown(self.classes, capacity)
        self.first_seen = grown(self.first_seen, capacity)
        self.present = grown(self.present, capacity)

    def update(self, rows: Ints, rank: Ints, batch: Batch) -> None:
        """Fold in a batch; `rows[i]` is event i's row, `rank[i]` how many of that row's events
        came before it in this batch."""
        before = self.events.copy() if batch.features else self.events
        np.add.at(self.events, rows, 1)
        np.fmax.at(self.last_time, rows, batch.time)
        latency = batch.latency_ms / 1000.0
        self.latency.observe(rows, latency)
        has = ~np.isnan(latency)
        if has.any():
            np.add.at(self.sketch, (rows[has], SKETCH.index(latency[has])), 1)
        self.ttft.observe(rows, batch.ttft_ms / 1000.0)
        self.score.observe(rows, batch.score)
        for name, values in (
            ("tpot", batch.tpot_ms / 1000.0),
            ("queue", batch.queue_ms / 1000.0),
            ("decode", batch.decode_ms / 1000.0),
            ("prompt_length", batch.tokens_in),
            ("output_length", batch.tokens_out),
            ("tokens_per_second", batch.tokens_per_second),
        ):
            self.histograms[name].observe(rows, values)
        for i, tokens in enumerate((batch.tokens_in, batch.tokens_out)):
            has = ~np.isnan(tokens)
            if has.any():
                np.add.at(self.tokens[:, i], rows[has], tokens[has].astype(np.int64))
        if batch.error_types:
            cols, _ = self.error_names.columns(rows, batch.error_type, batch.error_types)
            _count(self.errors, rows, cols)
        if batch.finish_reasons:
            cols, _ = self.finish_names.columns(rows, batch.finish_reason, batch.finish_reasons)
            _count(self.finishes, rows, cols)
        if batch.classes:
            cols, _ = self.class_names.columns(rows, batch.cls, batch.classes)
            _count(self.classes, rows, cols)
        if batch.features:
            self._features(rows, rank, batch, before)

    def _features(self, rows: Ints, rank: Ints, batch: Batch, before: Ints) -> None:
        named = [f.named if f.named is not None else f.present for f in batch.features]
        where = [np.flatnonzero(m) for m in named]
        all_rows = np.concatenate([rows[w] for w in where])
        codes = np.concatenate([np.full(len(w), i, dtype=np.int64) for i, w in enumerate(where)])
        positions = np.concatenate(where)
        names = [f.name for f in batch.features]

        def within(i: int) -> int:  # the name's place in its event's features (new names only)
            return list(batch.events[positions[i]].features or ()).index(names[codes[i]])

        cols, taken = self.feature_names.columns(all_rows, codes, names, positions, within)
        if taken:
            for row, col, at in taken:
                self.first_seen[row, col] = before[row] + rank[positions[at]]
        present = np.concatenate([f.present[w] for f, w in zip(batch.features, where, strict=True)])
        keep = present & (cols >= 0) & (cols < self.feature_names.cap)
        np.add.at(self.present, (all_rows[keep], cols[keep]), 1)

    def release(self, row: int, name: str) -> None:
        """A feature the key no longer tracks: its column and counts go to the next name."""
        col = self.feature_names.release(row, name)
        if col is not None:
            self.first_seen[row, col] = self.present[row, col] = 0

    # -- reading ------------------------------------------------------------------------------

    def missing(self, row: int) -> dict[str, int]:
        """Feature name -> events of the key that lacked it, or had it null, since it was first named."""
        names = self.feature_names.names[row]
        k = len(names)
        counts = self.events[row] - self.first_seen[row, :k] - self.present[row, :k]
        return {n: c for n, c in zip(names, counts.tolist(), strict=True) if n != FREE}

    def counts(self, row: int, which: str) -> dict[str, int]:
        """name -> count of the key's error types or classes, OTHER last when it has any."""
        names, counts = (self.error_names, self.errors) if which == "errors" else (self.class_names, self.classes)
        row_names = names.names[row]
        out = dict(zip(row_names, counts[row, : len(row_names)].tolist(), strict=True))
        if counts[row, -1]:
            out[OTHER] = int(counts[row, -1])
        return out

    def summary(self, row: int, key: Key) -> KeySummary:
        errors = int(self.errors[row].sum())
        events = int(self.events[row])
        quantiles = {f"p{int(q * 100)}": _finite(SKETCH.quantile(self.sketch[row], q)) for q in (0.5, 0.95, 0.99)}
        last = float(self.last_time[row])
        return KeySummary(
            model=key[0],
            version=key[1],
            variant=key[2],
            events=events,
            errors=errors,
            error_rate=errors / events if events else 0.0,
            latency_seconds=quantiles,
            last_event_timestamp=None if math.isnan(last) else last,
            errors_by_type=self.counts(row, "errors"),
        )

    # -- checkpoints --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Copies of the arrays (the rows in use) and the names per row: a consistent part of a
        partition's checkpoint, taken between batches."""
        n = self.rows
        return {
            "events": self.events[:n].copy(),
            "last_time": self.last_time[:n].copy(),
            "tokens": self.tokens[:n].copy(),
            **{
                f"{name}_{part}": getattr(h, part)[:n].copy()
                for name, h in self.histograms.items()
                for part in ("counts", "sums")
            },
            # Each histogram's bound sets, and which one each row has: a restore checks them.
            "bucket_sets": {name: [s.tolist() for s in h.sets] for name, h in self.histograms.items()},
            "bucket_rows": {name: h.row_set[:n].copy() for name, h in self.histograms.items()},
            "sketch": self.sketch[:n].copy(),
            "errors": self.errors[:n].copy(),
            "error_names": [list(x) for x in self.error_names.names],
            "finishes": self.finishes[:n].copy(),
            "finish_names": [list(x) for x in self.finish_names.names],
            "classes": self.classes[:n].copy(),
            "class_names": [list(x) for x in self.class_names.names],
            "first_seen": self.first_seen[:n].copy(),
            "present": self.present[:n].copy(),
            "feature_names": [list(x) for x in self.feature_names.names],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take a snapshot's rows into this (empty) partition's arrays; caps may differ from the
        snapshot's: names past a smaller cap fold into OTHER."""
        n = len(state["events"])
        if not self.rows:
            self.add_rows(n)
        elif self.rows != n or self.events[:n].any():
            raise ValueError("traffic state restores into an empty partition only (its keys added, nothing counted)")
        self.events[:n] = state["events"]
        self.last_time[:n] = state["last_time"]
        self.tokens[:n] = state["tokens"]
        for name, h in self.histograms.items():
            if f"{name}_counts" not in state:
                continue  # a checkpoint from before the LLM histograms: they start empty
            counts = state[f"{name}_counts"]
            if counts.shape[1] != h.counts.shape[1] or _bounds_differ(state, name, h, n):
                raise ValueError(
                    f"the checkpoint's {name} histogram has other buckets than this config "
                    "(metrics.*_buckets or metrics.models changed): start afresh"
                )
            h.counts[:n] = counts
            h.sums[:n] = state[f"{name}_sums"]
        self.sketch[:n] = state["sketch"]
        for names, counts, target, old in (
            (self.error_names, state["errors"], self.errors, state["error_names"]),
            (self.class_names, state["classes"], self.classes, state["class_names"]),
            # A checkpoint from before finish reasons were counted has none.
            (self.finish_names, state.get("finishes", self.finishes), self.finishes, state.get("finish_names", [])),
        ):
            for row, row_names in enumerate(old):
                for src, col in enumerate(names.restore_row(row, row_names)):
                    target[row, col] += counts[row, src]
                target[row, -1] += counts[row, -1]
        for row, row_names in enumerate(state["feature_names"]):
            for src, col in enumerate(self.feature_names.restore_row(row, row_names)):
                if col < self.feature_names.cap:
                    self.first_seen[row, col] = state["first_seen"][row, src]
                    self.present[row, col] = state["present"][row, src]


def _bounds_differ(state: dict[str, Any], name: str, h: Histograms, n: int) -> bool:
    """Whether a row's bounds in the checkpoint differ from its bounds now (a checkpoint from
    before per-model buckets: one set, the one its width was checked against)."""
    if "bucket_sets" not in state:
        return False
    sets = [tuple(s) for s in state["bucket_sets"][name]]
    old = state["bucket_rows"][name]
    return any(sets[int(old[row])] != tuple(h.sets[int(h.row_set[row])].tolist()) for row in range(n))


def _count(counts: Ints, rows: Ints, cols: Ints) -> None:
    has = cols >= 0
    np.add.at(counts, (rows[has], cols[has]), 1)


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


# -- the exposition: a copy under the lock, samples outside it ---------------------------------

# Each histogram: its name, its family, and its config field (metrics.<field>, or
# metrics.models.<model>.<field>).
HISTOGRAMS = (
    ("latency", "inferwatch_request_latency_seconds", "latency_buckets_seconds"),
    ("ttft", "inferwatch_llm_time_to_first_token_seconds", "ttft_buckets_seconds"),
    ("score", "inferwatch_prediction_score", "score_buckets"),
    ("tpot", "inferwatch_llm_time_per_output_token_seconds", "llm_time_buckets_seconds"),
    ("queue", "inferwatch_llm_queue_time_seconds", "llm_time_buckets_seconds"),
    ("decode", "inferwatch_llm_decode_time_seconds", "llm_time_buckets_seconds"),
    ("prompt_length", "inferwatch_llm_prompt_length_tokens", "token_buckets"),
    ("output_length", "inferwatch_llm_output_length_tokens", "token_buckets"),
    ("tokens_per_second", "inferwatch_llm_output_tokens_per_second", "tokens_per_second_buckets"),
)


def bucket_sets(metrics: MetricsConfig) -> dict[str, tuple[list[tuple[float, ...]], dict[str, int]]]:
    """Per histogram: its bound sets (the global one first, then the distinct ones models set) and
    model -> its set (models without their own: set 0)."""
    out = {}
    for name, _, setting in HISTOGRAMS:
        sets = [metrics.buckets(setting)]
        of_model = {}
        for model in metrics.models:
            bounds = metrics.buckets(setting, model)
            if bounds not in sets:
                sets.append(bounds)
            if bounds != sets[0]:
                of_model[model] = sets.index(bounds)
        out[name] = (sets, of_model)
    return out


@dataclass(slots=True)
class TrafficCopy:
    """The rows of one or more partitions' traffic, as a scrape shows them."""

    keys: list[Key]
    events: Ints
    last_time: Floats
    tokens: Ints
    histograms: dict[str, tuple[Ints, Floats, Ints]]  # counts, sums, each row's bound set
    errors: Ints
    error_names: list[list[str]]
    finishes: Ints
    finish_names: list[list[str]]
    classes: Ints
    class_names: list[list[str]]
    missing: Ints
    feature_names: list[list[str]]


def copy(t: Traffic, keys: list[Key]) -> TrafficCopy:
    """What the traffic families show, copied (call under the pipeline's lock)."""
    n = t.rows
    return TrafficCopy(
        list(keys[:n]),
        t.events[:n].copy(),
        t.last_time[:n].copy(),
        t.tokens[:n].copy(),
        {name: (h.counts[:n].copy(), h.sums[:n].copy(), h.row_set[:n].copy()) for name, h in _histograms(t)},
        t.errors[:n].copy(),
        [list(x) for x in t.error_names.names],
        t.finishes[:n].copy(),
        [list(x) for x in t.finish_names.names],
        t.classes[:n].copy(),
        [list(x) for x in t.class_names.names],
        t.events[:n, None] - t.first_seen[:n] - t.present[:n],
        [list(x) for x in t.feature_names.names],
    )  # fmt: skip


def _histograms(t: Traffic) -> list[tuple[str, Histograms]]:
    return list(t.histograms.items())


def merge(copies: list[TrafficCopy]) -> TrafficCopy:
    """One copy of several partitions' rows; a key several of them hold gets its rows summed."""
    if len(copies) == 1:
        out = copies[0]
    else:
        out = TrafficCopy(
            [k for c in copies for k in c.keys],
            np.concatenate([c.events for c in copies]),
            np.concatenate([c.last_time for c in copies]),
            np.concatenate([c.tokens for c in copies]),
            {
                name: tuple(np.concatenate([c.histograms[name][i] for c in copies]) for i in range(3))  # type: ignore[misc]
                for name in copies[0].histograms
            },
            np.concatenate([c.errors for c in copies]),
            [x for c in copies for x in c.error_names],
            np.concatenate([c.finishes for c in copies]),
            [x for c in copies for x in c.finish_names],
            np.concatenate([c.classes for c in copies]),
            [x for c in copies for x in c.class_names],
            np.concatenate([c.missing for c in copies]),
            [x for c in copies for x in c.feature_names],
        )
    seen: dict[Key, int] = {}
    drop = []
    for row, key in enumerate(out.keys):
        first = seen.setdefault(key, row)
        if first != row:
            _fold(out, first, row)
            drop.append(row)
    if drop:
        keep = np.setdiff1d(np.arange(len(out.keys)), drop)
        out = TrafficCopy(
            [out.keys[i] for i in keep.tolist()],
            out.events[keep],
            out.last_time[keep],
            out.tokens[keep],
            {name: (c[keep], s[keep], b[keep]) for name, (c, s, b) in out.histograms.items()},
            out.errors[keep],
            [out.error_names[i] for i in keep.tolist()],
            out.finishes[keep],
            [out.finish_names[i] for i in keep.tolist()],
            out.classes[keep],
            [out.class_names[i] for i in keep.tolist()],
            out.missing[keep],
            [out.feature_names[i] for i in keep.tolist()],
        )
    return out


def _fold(c: TrafficCopy, into: int, row: int) -> None:
    """Add row's figures to row `into` (the same key in another partition)."""
    c.events[into] += c.events[row]
    c.last_time[into] = np.fmax(c.last_time[into], c.last_time[row])
    c.tokens[into] += c.tokens[row]
    for counts, sums, _ in c.histograms.values():  # the same key: the same model, the same bounds
        counts[into] += counts[row]
        sums[into] += sums[row]
    for counts, names in (
        (c.errors, c.error_names),
        (c.finishes, c.finish_names),
        (c.classes, c.class_names),
        (c.missing, c.feature_names),
    ):
        for col, name in enumerate(names[row]):
            if name == FREE:
                continue
            if name in names[into]:
                counts[into, names[into].index(name)] += counts[row, col]
            elif len(names[into]) < counts.shape[1] - (counts is not c.missing):
                names[into].append(name)
                counts[into, len(names[into]) - 1] = counts[row, col]
        if counts is not c.missing:
            counts[into, -1] += counts[row, -1]


def collect(c: TrafficCopy, key_sets: list[str], les: dict[str, list[list[str]]], out: Sink) -> None:
    """The traffic families' samples; `key_sets[i]` is the label set of `c.keys[i]`; `les[name][k]`
    the `le` labels of histogram `name`'s bound set k."""
    out.samples("inferwatch_events", key_sets, c.events.tolist())
    out.labelled("inferwatch_errors", key_sets, "error_type", *_named(c.error_names, c.errors, True))
    out.labelled("inferwatch_llm_finish_reasons", key_sets, "finish_reason", *_named(c.finish_names, c.finishes, True))
    for name, family, _ in HISTOGRAMS:
        counts, sums, row_sets = c.histograms[name]
        shown = np.ones(len(sums), dtype=np.bool_) if name == "latency" else (sums != 0) | counts.any(axis=1)
        if shown.all() and len(les[name]) == 1:
            out.histograms(family, key_sets, counts, sums, les[name][0])
            continue
        for k, le in enumerate(les[name]):
            idx = np.flatnonzero(shown & (row_sets == k))
            if len(idx):
                width = len(le)
                out.histograms(family, [key_sets[i] for i in idx.tolist()], counts[idx, :width], sums[idx], le)
    has_tokens = np.flatnonzero(c.tokens.any(axis=1)).tolist()
    if has_tokens:
        sets = [key_sets[i] for i in has_tokens]
        out.samples("inferwatch_llm_input_tokens", sets, c.tokens[has_tokens, 0].tolist())
        out.samples("inferwatch_llm_output_tokens", sets, c.tokens[has_tokens, 1].tolist())
    out.labelled("inferwatch_predictions", key_sets, "class", *_named(c.class_names, c.classes, True))
    out.labelled("inferwatch_feature_missing", key_sets, "feature", *_named(c.feature_names, c.missing, False))
    timed = np.flatnonzero(~np.isnan(c.last_time)).tolist()
    if timed:
        out.samples(
            "inferwatch_last_event_timestamp_seconds", [key_sets[i] for i in timed], c.last_time[timed].tolist()
        )


def _named(names: list[list[str]], counts: Ints, other: bool) -> tuple[list[list[str]], list[list[int]]]:
    """Each row's names and their counts; with `other`, OTHER (the last column) where the row folded
    something into it."""
    values = counts.tolist()
    if not other:
        shown = [
            ([x for x in n if x != FREE], [c for x, c in zip(n, v, strict=False) if x != FREE])
            if FREE in n
            else (n, v[: len(n)])
            for n, v in zip(names, values, strict=True)
        ]
        return [s[0] for s in shown], [s[1] for s in shown]
    out_names, out_values = [], []
    for n, v in zip(names, values, strict=True):
        if v[-1]:
            out_names.append([*n, OTHER])
            out_values.append([*v[: len(n)], v[-1]])
        else:
            out_names.append(n)
            out_values.append(v[: len(n)])
    return out_names, out_values
