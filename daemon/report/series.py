"""The replay report's time series (docs/replay-report.md): per key and per canary comparison,
read from the pipeline's state between batches, at a bounded number of points.

A point is read after a batch whose newest event time (the watermark) is at least `interval`
past the last point. Points hold what happened since the one before (events, errors, the
latency sketch's new counts) or where things stood (drift scores, thresholds, accuracy, canary
effects). When `max_points` are held, neighbours merge pairwise and `interval` doubles, so a
replay of any length ends with between half and all of `max_points`, and memory does not grow
with its length. Drift scores are the highest any batch end saw within the point, so merging
never hides a peak. Nothing runs per event: a batch costs a comparison, and a vectorised max
over each partition's drift scores.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from daemon.ingest.batch import Key
from daemon.monitors.canary import LATENCY_LIKE, TAILS, WORSE
from daemon.monitors.traffic import SKETCH
from daemon.pipeline import Pipeline
from daemon.state.routing import OTHER_KEY

Floats = npt.NDArray[np.float64]
Rule = Literal["sum", "max", "last"]
MAX_POINTS = 200
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
        # Per key row, per point: the latency sketch's new counts, sparse (buckets, counts).
        self.latency: list[list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]] = []


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
            for points in part.latency:
                points[:] = [_merged(points[i], points[i + 1]) for i in range(0, len(points) - 1, 2)] + (
                    [points[-1]] if len(points) % 2 else []
                )
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
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        while len(part.latency) < rows:
            part.latency.append([empty] * i)
        for points in part.latency:
            points.append(empty)
        for k, row in enumerate(moved.tolist()):
            nz = np.flatnonzero(delta[k])
            part.latency[row][i] = (nz, delta[k, nz])

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
        for sid, st in enumerate(d.streams):
            part.threshold.values[i, sid] = _threshold(st)

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
        keys = []
        for state, row in self.pipeline.held():
            part = self.parts.get(state.partition)
            if part is None or row >= part.events.values.shape[1]:
                continue
            keys.append(self._key(state, row, part, durations))
        return {
            "points": n,
            "start": start if n else None,
            "interval_seconds": self.interval,
            "time": times.tolist(),
            "keys": keys,
            "canary": self._comparisons(),
        }

    def _key(self, state: Any, row: int, part: _Partition, durations: Floats) -> dict[str, Any]:
        n = self.n
        key: Key = state.keys[row]
        events = part.events.values[:n, row]
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where(durations > 0, np.nan_to_num(events) / durations, np.nan)
        rate[np.isnan(events)] = np.nan
        latency: dict[str, list[float | None]] = {f"p{round(100 * q)}": [] for q in QUANTILES}
        for buckets, counts in part.latency[row][:n] if row < len(part.latency) else []:
            for q in QUANTILES:
                latency[f"p{round(100 * q)}"].append(_quantile(buckets, counts, q))
        drift: dict[str, dict[str, list[float | None]]] = {}
        if state.drift is not None:
            streams: dict[str, list[int]] = {}
            for sid in state.drift.by_row[row]:
                streams.setdefault(state.drift.streams[sid].name, []).append(sid)
            for name, sids in sorted(streams.items()):
                # A stream released and watched again later has two ids: one series.
                drift[name] = {
                    "score": _list(np.fmax.reduce(part.score.values[:n, sids], axis=1)),
                    "threshold": _list(_last_of(part.threshold.values[:n, sids])),
                }
        model, version, variant = key if key != OTHER_KEY else ("__other__", "", "")
        return {
            "model": model,
            "version": version,
            "variant": variant,
            "events": _list(events, integer=True),
            "errors": _list(part.errors.values[:n, row], integer=True),
            "events_per_second": _list(rate),
            "latency_seconds": latency,
            "accuracy": _list(_column(part.accuracy, row, n)),
            "accuracy_estimated": _list(_column(part.estimate, row, n)),
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
                    **{f: _list(self.metrics[f].values[:n, col]) for f in ("effect", "lower", "upper")},
                    "verdict": _verdicts(self.metrics["verdict"].values[:n, verdict_col]),
                }
            out.append(
                {
                    "model": model,
                    "variant": variant,
                    "baseline": self.baseline[(model, variant)],
                    "verdict": _verdicts(self.canary["verdict"].values[:n, c]),
                    "score": _list(self.canary["score"].values[:n, self.canary["score"].names[(model, variant)]]),
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


def _merged(
    a: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]], b: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    if not len(a[0]):
        return b
    if not len(b[0]):
        return a
    buckets, inverse = np.unique(np.r_[a[0], b[0]], return_inverse=True)
    return buckets, np.bincount(inverse, weights=np.r_[a[1], b[1]]).astype(np.int64)


def _quantile(buckets: npt.NDArray[np.int64], counts: npt.NDArray[np.int64], q: float) -> float | None:
    """Nearest rank, as the sketch reads it (detectors.quantiles.LogBuckets.quantile), in seconds."""
    n = int(counts.sum())
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    return _round(SKETCH.value(int(buckets[int(np.searchsorted(np.cumsum(counts), rank))])))


def _column(table: Table, col: int, n: int) -> Floats:
    return table.values[:n, col] if col < table.values.shape[1] else np.full(n, np.nan)


def _last_of(values: Floats) -> Floats:
    """Per row, the last non-NaN value across columns (a stream's newest id wins)."""
    out = np.full(len(values), np.nan)
    for c in range(values.shape[1]):
        col = values[:, c]
        out = np.where(np.isnan(col), out, col)
    return out


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def _list(values: Floats, integer: bool = False) -> list[Any]:
    if integer:
        return [None if v != v else int(v) for v in values.tolist()]
    return [None if not math.isfinite(v) else _round(v) for v in values.tolist()]


def _verdicts(codes: Floats) -> list[str | None]:
    return [None if c != c else VERDICTS[int(c)] for c in codes.tolist()]
