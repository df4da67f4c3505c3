"""The replay report's time series (docs/replay-report.md): per key and per canary comparison,
read from the pipeline's state between batches, at a bounded number of points.

A point is read after a batch whose newest event time (the watermark) is at least `interval`
past the last point, once MIN_RECORDS_PER_KEY records per key have come since (so a point's
per-key figures rest on more than a handful of events, and reading every key stays a small
share of the replay). Points hold what happened since the one before (events, errors, the
latency sketch's new counts) or where things stood (drift scores, thresholds, accuracy, canary
effects). When `max_points` are held, neighbours merge pairwise and `interval` doubles, so a
replay of any length ends with at most `max_points` (at least half as many once it has had
that many), and memory does not grow with its length. Drift scores are the highest any batch
end saw within the point, so merging never hides a peak. Nothing runs per event: a batch costs
a comparison, and a vectorised max over each partition's drift scores.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from daemon.ingest.batch import Key
from daemon.monitors.canary import LATENCY_LIKE, TAILS, WORSE
from daemon.monitors.drift import DRIFTED, WINDOW
from daemon.monitors.traffic import SKETCH
from daemon.pipeline import Pipeline
from daemon.state.routing import OTHER_KEY

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Rule = Literal["sum", "max", "last"]
MAX_POINTS = 200
# A point waits for this many records per key on average (with 1,000 keys, 50,000 records): fewer
# would make per-key quantiles of a handful of events, and reading every key costs per point.
MIN_RECORDS_PER_KEY = 50
QUANTILES = (0.5, 0.95, 0.99)
VERDICTS = ("pass", "inconclusive", "fail")


class Table:
    """Values at the points: a row per point, a column per series, merged pairwise by `rule`."""

    def __init__(self, size: int, rule: Rule) -> None:
        self.values: Floats = np.full((size, 0), np.nan)
        self.rule = rule
        self.names: dict[Any, int] = {}

    def ensure(self, cols: int) -> None:
        if cols > self.values.shape[1]:
            grown = np.full((len(self.values), max(cols, 2 * self.values.shape[1])), np.nan)
            grown[:, : self.values.shape[1]] = self.values
            self.values = grown

    def col(self, name: Hashable) -> int:
        """The column of a named series (added when new)."""
        c = self.names.get(name)
        if c is None:
            c = self.names[name] = len(self.names)
            self.ensure(c + 1)
        return c

    def put(self, point: int, name: Hashable, value: float) -> None:
        col = self.col(name)
        self.values[point, col] = value

    def halve(self, n: int) -> None:
        """Merge the first `n` points pairwise into the first ⌈n/2⌉."""
        a, b = self.values[0:n:2], self.values[1:n:2]
        first = a[: len(b)]
        if self.rule == "sum":
            merged = np.where(np.isnan(first) & np.isnan(b), np.nan, np.nan_to_num(first) + np.nan_to_num(b))
        elif self.rule == "max":
            merged = np.fmax(first, b)
        else:
            merged = np.where(np.isnan(b), first, b)
        a[: len(b)] = merged
        self.values[: len(a)] = a
        self.values[len(a) :] = np.nan


class _Partition:
    """What the recorder keeps of one partition's state: the counts at the last point, the drift
    scores' peaks since, its tables by key row and by drift stream."""

    def __init__(self, size: int) -> None:
        self.events = Table(size, "sum")
        self.errors = Table(size, "sum")
        self.accuracy = Table(size, "last")
        self.estimate = Table(size, "last")
        self.score = Table(size, "max")
        self.threshold = Table(size, "last")
        self.seen_events = np.zeros(0, dtype=np.int64)
        self.seen_errors = np.zeros(0, dtype=np.int64)
        self.seen_sketch = np.zeros((0, SKETCH.n_buckets), dtype=np.int64)
        self.peak: Floats = np.zeros(0)
        # Per point: the latency sketch's new counts of every key, sparse: the cells (row * buckets +
        # bucket, ascending) and their counts.
        self.latency: list[tuple[Ints, Ints]] = []
        # The streams whose detector is not a scan (their thresholds are read one by one).
        self.scan: npt.NDArray[np.bool_] = np.zeros(0, dtype=np.bool_)


class SeriesRecorder:
    """Reads `pipeline` after each batch (`after_batch`), and gives the report's `series` (`report`)."""

    def __init__(self, pipeline: Pipeline, max_points: int = MAX_POINTS) -> None:
        if max_points < 2:
            raise ValueError(f"max_points must be at least 2, got {max_points}")
        self.pipeline = pipeline
        self.size = max_points
        self.interval = 0.0
        self.n = 0
        self.times: Floats = np.full(max_points, np.nan)
        self.parts: dict[int, _Partition] = {}
        # Canary comparisons by (model, variant): their verdict, score and per metric effect and band.
        self.canary = {name: Table(max_points, "last") for name in ("verdict", "score")}
        self.metrics = {name: Table(max_points, "last") for name in ("effect", "lower", "upper", "verdict")}
        self.tolerance: dict[tuple[str, str, str], float] = {}
        self.records = 0  # the pipeline's records at the last point
        self.baseline: dict[tuple[str, str], str] = {}

    def after_batch(self) -> None:
        p = self.pipeline
        for number, state in p.partitions.items():
            if state.drift is not None:
                part = self._part(number)
                n = len(state.drift.streams)
                if len(part.peak) < n:
                    part.peak = np.r_[part.peak, np.full(n - len(part.peak), np.nan)]
                np.fmax(part.peak[:n], state.drift.score[:n], out=part.peak[:n])
        if not math.isfinite(p.earliest):
            return  # no event with a time yet: nothing to place on the axis
        keys = sum(state.traffic.rows for state in p.partitions.values())
        if p.records - self.records < MIN_RECORDS_PER_KEY * keys:
            return
        if self.n == 0 or p.watermark >= self.times[self.n - 1] + self.interval:
            self._record(p.watermark)

    def finish(self) -> None:
        """The last point, at the end of the replay (unless the last batch made one)."""
        p = self.pipeline
        if math.isfinite(p.earliest) and (self.n == 0 or p.watermark > self.times[self.n - 1]):
            self._record(p.watermark)

    def _part(self, number: int) -> _Partition:
        part = self.parts.get(number)
        if part is None:
            part = self.parts[number] = _Partition(self.size)
        return part

    def _tables(self) -> list[Table]:
        out = [*self.canary.values(), *self.metrics.values()]
        for part in self.parts.values():
            out += [part.events, part.errors, part.accuracy, part.estimate, part.score, part.threshold]
        return out

    def _halve(self) -> None:
        n = self.n
        start = self.pipeline.earliest
        span = float(self.times[n - 1]) - start
        for table in self._tables():
            table.halve(n)
        for part in self.parts.values():
            points = part.latency
            points[:] = [_merged(points[i], points[i + 1]) for i in range(0, len(points) - 1, 2)] + points[n - n % 2 :]
        self.times[: (n + 1) // 2] = np.r_[self.times[1:n:2], self.times[n - 1 : n] if n % 2 else []]
        self.times[(n + 1) // 2 :] = np.nan
        self.n = (n + 1) // 2
        self.interval = 2 * max(self.interval, span / self.size)

    def _record(self, t: float) -> None:
        if self.n == self.size:
            self._halve()
        i = self.n
        self.times[i] = t
        p = self.pipeline
        self.records = p.records
        for number, state in p.partitions.items():
            self._traffic(i, self._part(number), state)
            self._quality(i, self._part(number), state)
            if state.drift is not None:
                self._drift(i, self._part(number), state)
            if state.canary is not None:
                self._canary(i, number, state)
        self.n += 1

    def _traffic(self, i: int, part: _Partition, state: Any) -> None:
        t = state.traffic
        rows = t.rows
        for name in ("seen_events", "seen_errors"):
            old = getattr(part, name)
            if len(old) < rows:
                setattr(part, name, np.r_[old, np.zeros(rows - len(old), dtype=np.int64)])
        if len(part.seen_sketch) < rows:
            part.seen_sketch = np.r_[
                part.seen_sketch, np.zeros((rows - len(part.seen_sketch), SKETCH.n_buckets), np.int64)
            ]
        events = t.events[:rows]
        errors = t.errors[:rows].sum(axis=1)
        part.events.ensure(rows)
        part.errors.ensure(rows)
        new = events - part.seen_events[:rows]
        part.events.values[i, :rows] = new
        part.errors.values[i, :rows] = errors - part.seen_errors[:rows]
        part.seen_events[:rows] = events
        part.seen_errors[:rows] = errors
        moved = np.flatnonzero(new)  # only keys with new events have new latencies
        delta = t.sketch[moved] - part.seen_sketch[moved]
        part.seen_sketch[moved] = t.sketch[moved]
        k, bucket = np.nonzero(delta)
        while len(part.latency) < i:  # a partition first seen now
            part.latency.append(_EMPTY)
        part.latency.append((moved[k] * SKETCH.n_buckets + bucket, delta[k, bucket]))

    def _quality(self, i: int, part: _Partition, state: Any) -> None:
        for row, q in enumerate(state.quality):
            if q is None or not q.labelled:
                continue
            if len(q.overall) >= q.min_samples:
                accuracy = q.overall.metrics().get("accuracy")
                if accuracy is not None:
                    part.accuracy.ensure(row + 1)
                    part.accuracy.values[i, row] = accuracy
            estimate = q.estimator.expected_accuracy
            if estimate is not None:
                part.estimate.ensure(row + 1)
                part.estimate.values[i, row] = estimate

    def _drift(self, i: int, part: _Partition, state: Any) -> None:
        d = state.drift
        n = len(d.streams)
        part.score.ensure(n)
        part.threshold.ensure(n)
        part.score.values[i, :n] = part.peak[:n]
        part.peak[:n] = np.nan
        if len(part.scan) < n:
            part.scan = np.r_[part.scan, [st.scan for st in d.streams[len(part.scan) : n]]].astype(np.bool_)
        # A scan fires at 1 while it has a detector (watching, or holding a pinned detection).
        watching = np.isin(d.phase[:n], (WINDOW, DRIFTED))
        part.threshold.values[i, :n] = np.where(part.scan & watching, 1.0, np.nan)
        for sid in np.flatnonzero(~part.scan).tolist():
            part.threshold.values[i, sid] = _threshold(d.streams[sid])

    def _canary(self, i: int, number: int, state: Any) -> None:
        router = self.pipeline.router
        for name, m in state.canary.models.items():
            if len(self.pipeline.partitions) > 1 and router.home(name) is not state:
                continue
            for variant, comp in m.comparisons.items():
                self.baseline[(name, variant)] = comp.baseline
                self.canary["verdict"].put(i, (name, variant), VERDICTS.index(comp.verdict))
                self.canary["score"].put(i, (name, variant), comp.score)
                for metric, r in comp.metrics.items():
                    key = (name, variant, metric)
                    self.tolerance[key] = r.tolerance
                    look = r.look
                    self.metrics["effect"].put(i, key, look.effect)
                    self.metrics["lower"].put(i, key, look.lower)
                    self.metrics["upper"].put(i, key, look.upper)
                    self.metrics["verdict"].put(i, key, VERDICTS.index(r.verdict))

    # -- the report ---------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        n = self.n
        times = self.times[:n]
        start = self.pipeline.earliest
        durations = np.diff(np.r_[start, times]) if n else np.zeros(0)
        # Per partition, every series as JSON lists by column (converted at once: 1,000 keys have
        # 30,000 of them).
        columns = {number: self._columns(part, durations) for number, part in self.parts.items() if n}
        keys = []
        for state, row in self.pipeline.held():
            part = self.parts.get(state.partition)
            if part is None or row >= part.events.values.shape[1]:
                continue
            keys.append(self._key(state, row, part, columns[state.partition]))
        return {
            "points": n,
            "start": start if n else None,
            "interval_seconds": self.interval,
            "time": times.tolist(),
            "keys": keys,
            "canary": self._comparisons(),
        }

    def _columns(self, part: _Partition, durations: Floats) -> dict[str, list[list[Any]]]:
        n = self.n
        rows = part.events.values.shape[1]
        events = part.events.values[:n]
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = events / durations[:, None]
        rate[~(durations > 0)] = np.nan
        quantiles = np.stack([_quantiles(point, rows) for point in part.latency[:n]])
        out = {
            "events": _lists(events, integer=True),
            "errors": _lists(part.errors.values[:n], integer=True),
            "events_per_second": _lists(rate),
            "accuracy": _lists(_wide(part.accuracy, rows, n)),
            "accuracy_estimated": _lists(_wide(part.estimate, rows, n)),
            "score": _lists(part.score.values[:n]),
            "threshold": _lists(part.threshold.values[:n]),
        }
        for j, q in enumerate(QUANTILES):
            out[f"p{round(100 * q)}"] = _lists(quantiles[:, :, j])
        return out

    def _key(self, state: Any, row: int, part: _Partition, columns: dict[str, list[list[Any]]]) -> dict[str, Any]:
        n = self.n
        key: Key = state.keys[row]
        drift: dict[str, dict[str, list[float | None]]] = {}
        if state.drift is not None:
            streams: dict[str, list[int]] = {}
            for sid in state.drift.by_row[row]:
                streams.setdefault(state.drift.streams[sid].name, []).append(sid)
            for name, sids in sorted(streams.items()):
                if len(sids) == 1:
                    drift[name] = {"score": columns["score"][sids[0]], "threshold": columns["threshold"][sids[0]]}
                    continue
                # A stream released and watched again later has two ids: one series.
                drift[name] = {
                    "score": _lists(np.fmax.reduce(part.score.values[:n, sids], axis=1)[:, None])[0],
                    "threshold": _lists(_last_of(part.threshold.values[:n, sids])[:, None])[0],
                }
        model, version, variant = key if key != OTHER_KEY else ("__other__", "", "")
        return {
            "model": model,
            "version": version,
            "variant": variant,
            **{name: columns[name][row] for name in ("events", "errors", "events_per_second")},
            "latency_seconds": {f"p{round(100 * q)}": columns[f"p{round(100 * q)}"][row] for q in QUANTILES},
            **{name: columns[name][row] for name in ("accuracy", "accuracy_estimated")},
            "drift": drift,
        }

    def _comparisons(self) -> list[dict[str, Any]]:
        n = self.n
        out = []
        for (model, variant), c in sorted(self.canary["verdict"].names.items(), key=lambda kv: str(kv[0])):
            metrics = {}
            for (m, v, metric), col in self.metrics["effect"].names.items():
                if (m, v) != (model, variant):
                    continue
                verdict_col = self.metrics["verdict"].names[(m, v, metric)]
                metrics[metric] = {
                    # log: the effect is a mean of ln(candidate / baseline), exp(effect) - 1 the change.
                    "scale": "log" if metric in LATENCY_LIKE or metric in TAILS else "difference",
                    "tolerance": self.tolerance[(m, v, metric)],
                    # The direction that fails: past +tolerance, below -tolerance, or either.
                    "worse": {1: "higher", -1: "lower", 0: "either"}[WORSE[metric]],
                    **{f: _lists(self.metrics[f].values[:n, col : col + 1])[0] for f in ("effect", "lower", "upper")},
                    "verdict": _verdicts(self.metrics["verdict"].values[:n, verdict_col]),
                }
            out.append(
                {
                    "model": model,
                    "variant": variant,
                    "baseline": self.baseline[(model, variant)],
                    "verdict": _verdicts(self.canary["verdict"].values[:n, c]),
                    "score": _lists(self.canary["score"].values[:n, [self.canary["score"].names[(model, variant)]]])[0],
                    "metrics": metrics,
                }
            )
        return out


def _threshold(st: Any) -> float:
    """The score at which a stream's detector fires: 1 for a scan (its score is statistic over
    threshold), a threshold test's own; NaN for the others (a p-value decides) and streams without
    a detector yet."""
    if st.tester is None:
        return math.nan
    if st.scan:
        return 1.0
    threshold = getattr(st.tester, "threshold", None)
    return float(threshold) if threshold is not None else math.nan


_EMPTY: tuple[Ints, Ints] = (np.zeros(0, np.int64), np.zeros(0, np.int64))


def _merged(a: tuple[Ints, Ints], b: tuple[Ints, Ints]) -> tuple[Ints, Ints]:
    """Two points' sparse sketch counts as one."""
    if not len(a[0]):
        return b
    if not len(b[0]):
        return a
    cells, inverse = np.unique(np.r_[a[0], b[0]], return_inverse=True)
    return cells, np.bincount(inverse, weights=np.r_[a[1], b[1]]).astype(np.int64)


def _quantiles(point: tuple[Ints, Ints], rows: int) -> Floats:
    """Per key row (rows x QUANTILES), the latency quantiles of a point's events in seconds, by
    nearest rank as the sketch reads them (detectors.quantiles.LogBuckets.quantile); NaN for none."""
    out = np.full((rows, len(QUANTILES)), np.nan)
    cells, counts = point
    if not len(cells):
        return out
    row, bucket = np.divmod(cells, SKETCH.n_buckets)
    keys, first = np.unique(row, return_index=True)
    cum = np.cumsum(counts)
    before = np.r_[0, cum][first]  # the counts of the keys before each key
    n = np.add.reduceat(counts, first)
    for j, q in enumerate(QUANTILES):
        rank = np.maximum(1, np.ceil(q * n).astype(np.int64))
        at = np.searchsorted(cum, before + rank)
        out[keys, j] = SKETCH.values(bucket[at])
    return out


def _wide(table: Table, rows: int, n: int) -> Floats:
    """A table's first `n` points with a column for each of `rows` (NaN where it has none)."""
    out = np.full((n, rows), np.nan)
    cols = min(rows, table.values.shape[1])
    out[:, :cols] = table.values[:n, :cols]
    return out


def _last_of(values: Floats) -> Floats:
    """Per row, the last non-NaN value across columns (a stream's newest id wins)."""
    out = np.full(len(values), np.nan)
    for c in range(values.shape[1]):
        col = values[:, c]
        out = np.where(np.isnan(col), out, col)
    return out


def _lists(values: Floats, integer: bool = False) -> list[list[Any]]:
    """Each column as a JSON list: null for NaN; integers, or floats to six significant digits."""
    finite = np.isfinite(values)
    if integer:
        out = np.where(finite, values, 0).astype(np.int64).astype(object)
    else:
        x = np.where(finite, values, 0.0)
        scale = 10.0 ** (5 - np.floor(np.log10(np.abs(np.where(x == 0, 1.0, x)))))
        out = (np.round(x * scale) / scale).astype(object)
    out[~finite] = None
    columns: list[list[Any]] = out.T.tolist()
    return columns


def _verdicts(codes: Floats) -> list[str | None]:
    return [None if c != c else VERDICTS[int(c)] for c in codes.tolist()]
