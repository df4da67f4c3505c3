"""Scan tests: windows of several lengths at once against an expanding reference, thresholds in closed form.

A tumbling window of one length is slow on large changes (it waits for the window to end) and
weak on small ones (the window is too short). A scan test reads the stream every `look` values
(`window_size`, 50) and tests the last 1, 2, 4, ... 128 looks (50 to 6,400 values) against the
reference at every look, so a large change is seen within a look or two and a small one by the
window long enough for it. The false-alarm budget (one per `target_ert` values) is split evenly
between the tests.

- **Numeric** (`scan`): each value becomes its normal score against the reference, z = Φ⁻¹(u),
  where u is the value's place in the reference's distribution (its fine bins, the value placed
  uniformly within its bin by a hash of its position: no state, same answer on any replay). On
  stationary data z is N(0, 1) whatever the feature's law, so three statistics of a window have
  known null laws: its mean (location), its mean of z² - 1 (scale) and its counts in 8 bins of
  equal reference share (shape, χ²₇). Each is two-sample: its variance counts the reference's
  own noise (1/n + 1/N), so a short reference widens the test instead of raising false alarms.
- **Categorical** (`scan_categorical`): a χ² test of the window's level counts against the
  reference's shares. The reference's 31 most frequent levels with at least 5 values each keep
  their own cell; rarer levels and levels the reference never saw share one cell, so a burst of
  new levels is evidence. Per window length, cells expected to hold fewer than 5 values join
  that cell too.

Thresholds: a χ²_d statistic read at every look of a sliding window of n values crosses x at a
rate of about P(χ²_d > x)·min(1/look, x/n) per value (Pickands' asymptotics for a moving sum;
the first term is the plain union bound over looks). Each test's x solves that rate = 1 /
(target_ert · tests). The bench (`bench/detection.py`) measures the false-alarm rate that results.

The reference expands: values join it in epochs of 32 looks, once 4 later epochs have passed (so
at least 6,400 values old: no window ever overlaps its own reference), up to `max_reference`
values, and only if no test came near its threshold (past WARN of it) from the epoch's start
until it joins. A slow drift is therefore not learned as normal.

A detection carries `finding`: the test, its window, statistic and threshold, the window's start
(the estimated change point), and the change in words' terms (mean and sd in reference units, or
the levels whose shares moved).
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from scipy import special

from detectors.base import InputKind, check_float, check_int
from detectors.distribution import OTHER, WindowedTest

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Values per look: the scan reads the stream this often.
LOOK = 50
# Window lengths, in looks.
WINDOW_LOOKS = (1, 2, 4, 8, 16, 32, 64, 128)
WINDOWS = np.array(WINDOW_LOOKS, dtype=np.int64)
HISTORY = WINDOW_LOOKS[-1]
EPOCH_LOOKS = 32
LAG_EPOCHS = HISTORY // EPOCH_LOOKS  # epochs that must pass before one joins the reference
MAX_REFERENCE = 50_000
# An epoch whose tests reached this share of a threshold (or one that followed it did, before it
# joined) never joins the reference.
WARN = 0.6
# Cells of a χ² test expected to hold fewer values than this join the shared "rare" cell.
MIN_EXPECTED = 5.0
# Numeric: fine bins of the reference (its CDF is known at their edges) and shape bins.
FINE_BINS = 256
SHAPE_BINS = 8
# Categorical: levels of the reference with their own cell, and the values each needs.
MAX_CELLS = 31
MIN_LEVEL_COUNT = 5
U_EDGE = 1e-12


@functools.lru_cache(maxsize=8192)
def threshold(df: int, window: int, look: int, rate: float) -> float:
    """x with P(χ²_df > x) · min(1/look, x/window) = rate (per value)."""
    x = float(special.chdtri(df, min(rate * look, 0.5)))
    if x / window >= 1 / look:
        return x
    for _ in range(100):
        nxt = float(special.chdtri(df, min(rate * window / x, 0.5)))
        if abs(nxt - x) < 1e-9:
            break
        x = nxt
    return x


def deviance(counts: FloatArray, expected: FloatArray) -> FloatArray:
    """The G statistic 2 Σ O ln(O / E) over the last axis. Its far tail follows χ² much better than
    Pearson's (O - E)² / E, which overstates a thin cell's excess."""
    out: FloatArray = 2.0 * special.xlogy(counts, counts / expected).sum(axis=-1)  # 0 ln 0 = 0
    return out


def _splitmix(n: int) -> FloatArray:
    """n uniforms in (0, 1) from the positions 0..n-1 (splitmix64): the same on every machine."""
    z = np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


# Where each value sits within its fine bin: the value at its position (since the reference) in a
# fixed table, so the same values give the same answer on any replay, however polls cut them.
JITTER = _splitmix(1 << 14)
JITTER_TWICE = np.r_[JITTER, JITTER]


def _uniform(start: int, n: int) -> FloatArray:
    """The jitter of n values from position `start`."""
    at = start % len(JITTER)
    if n <= len(JITTER):
        out: FloatArray = JITTER_TWICE[at : at + n]
        return out
    return np.resize(np.roll(JITTER, -at), n)


class ScanTest(WindowedTest):
    """What both scans share: looks, the ring of per-look sums, epochs, thresholds, the finding.

    A subclass sets `tests` (statistics per window) and implements `_prepare`, `_blocks` (per-look
    sums and per-look reference cells of some values), `_statistics` and `_describe`.
    """

    _param_names = ("reference_size", "window_size", "target_ert", "max_reference")
    tests: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        reference_size: int = 1000,
        window_size: int = LOOK,
        target_ert: float = 1_000_000.0,
        max_reference: int = MAX_REFERENCE,
    ) -> None:
        super().__init__(reference_size, window_size)
        check_float("target_ert", target_ert, 1, math.inf, high_open=True)
        check_int("max_reference", max_reference, reference_size)
        self.target_ert = float(target_ert)
        self.max_reference = max_reference
        self.rate = 1.0 / (self.target_ert * len(WINDOW_LOOKS) * len(self.tests))
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self.finding: dict[str, Any] | None = None

    def _restart(self) -> None:
        finding = self.finding
        super()._restart()
        self.finding = finding  # what fired stays readable until the next detection

    # -- the kernel ------------------------------------------------------------------------------

    def prepare(self, reference: Any) -> None:
        cells = self._prepare(reference)
        self.ref_cells = cells.astype(np.float64)  # the reference's counts per fine cell
        self._derive()
        self.looks = 0  # looks since prepared
        self.seen = 0  # values since prepared (the jitter's position)
        self.ring = np.zeros((HISTORY, self.dims), dtype=np.float64)  # per-look sums, by look % HISTORY
        self.ring_index = np.full(HISTORY, -1, dtype=np.int64)  # each look's first input index
        self.ring_time = np.full(HISTORY, math.nan)
        self.epoch = np.zeros(len(cells), dtype=np.float64)  # the current epoch's fine cells
        self.epochs: list[FloatArray] = []  # finished epochs waiting to join, oldest first
        self.warned: list[bool] = []  # per finished epoch, and for the current one last
        self.epoch_warned = False
        self.evidence = 0.0

    def judge(self, window: Any) -> bool:
        self._drift = self.scan(np.asarray(window)) is not None
        return self._drift

    def scan(self, values: Any, index: IntArray | None = None, times: FloatArray | None = None) -> int | None:
        """Take whole looks of values (a multiple of `window_size`), in order. Returns the position
        of the last value of the look that fired (then `finding` says how), or None."""
        L = self.window_size
        m = len(values) // L
        done = 0
        while done < m:
            # Never across an epoch's end while the reference may grow there.
            k = m - done
            if self.ref_cells.sum() < self.max_reference:
                k = min(k, EPOCH_LOOKS - self.looks % EPOCH_LOOKS)
            part = slice(done * L, (done + k) * L)
            fired = self._scan_looks(
                values[part],
                k,
                None if index is None else index[part],
                None if times is None else times[part],
            )
            if fired is not None:
                return (done + fired + 1) * L - 1
            done += k
        return None

    def _scan_looks(self, values: Any, k: int, index: IntArray | None, times: FloatArray | None) -> int | None:
        L = self.window_size
        blocks, cells = self._blocks(values, k)
        self.seen += k * L
        # The history's looks in order, then the new ones; cumulative sums along looks; every
        # window of every new look at once: sums[look, window, dim].
        h = min(self.looks, HISTORY)
        order = np.arange(self.looks - h, self.looks) % HISTORY
        cum = np.zeros((h + k + 1, self.dims))
        np.cumsum(np.concatenate([self.ring[order], blocks]), axis=0, out=cum[1:])
        ends = np.arange(h + 1, h + k + 1)
        starts = np.maximum(ends[:, None] - WINDOWS, 0)
        sums = cum[ends][:, None, :] - cum[starts]
        n_ref = float(self.ref_cells.sum())
        stats = self._statistics(sums, n_ref)
        ratios = stats / self.limits
        ratios[(self.looks + np.arange(1, k + 1))[:, None] < WINDOWS] = 0.0
        peak = ratios.reshape(k, -1).max(axis=1)
        fired = np.flatnonzero(peak >= 1.0)
        last = int(fired[0]) if len(fired) else k - 1
        self.evidence = self._score = float(peak[last])
        if peak[: last + 1].max() >= WARN:
            self.epoch_warned = True
        # Keep the looks up to the last one used.
        slots = (self.looks + np.arange(last + 1)) % HISTORY
        self.ring[slots] = blocks[: last + 1]
        self.ring_index[slots] = -1 if index is None else index[: (last + 1) * L : L]
        self.ring_time[slots] = math.nan if times is None else times[: (last + 1) * L : L]
        self.looks += last + 1
        if len(fired):
            j, t = np.unravel_index(int(np.argmax(ratios[last])), ratios[last].shape)
            w = int(WINDOWS[j])
            first = (self.looks - w) % HISTORY
            self.finding = {
                "test": self.tests[int(t)],
                "window_events": w * L,
                "statistic": float(stats[last, j, t]),
                "threshold": float(self.limits[j, t]),
                "reference_events": int(n_ref),
                "change_index": int(self.ring_index[first]) if self.ring_index[first] >= 0 else None,
                "change_timestamp": None if math.isnan(self.ring_time[first]) else float(self.ring_time[first]),
                **self._describe(sums[last, j], w * L),
            }
            return last
        self.epoch += cells.sum(axis=0)
        if self.looks % EPOCH_LOOKS == 0:
            self._end_epoch()
        return None

    def pin(self, pinned: bool) -> None:
        """A pinned reference grows no more (unpinned: up to MAX_REFERENCE again)."""
        self.max_reference = int(self.ref_cells.sum()) if pinned else max(MAX_REFERENCE, self.reference_size)

    def _end_epoch(self) -> None:
        self.epochs.append(self.epoch)
        self.warned.append(self.epoch_warned)
        self.epoch = np.zeros_like(self.epoch)
        self.epoch_warned = False
        if len(self.epochs) > LAG_EPOCHS:
            oldest = self.epochs.pop(0)
            quiet = not any(self.warned)
            self.warned.pop(0)
            if quiet and self.ref_cells.sum() < self.max_reference:
                self.ref_cells = self.ref_cells + oldest
                self._derive()

    def _derive(self) -> None:
        """What follows from the reference's cells (prepared, or grown by an epoch)."""

    def statistic(self, window: Any) -> tuple[float, float | None]:
        raise NotImplementedError("a scan test judges looks, not one window")

    def passes(self, statistic: float, p_value: float | None) -> bool:
        return statistic >= 1.0

    # -- state -----------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the reference the caller holds."""
        return {
            "ref_cells": self.ref_cells.copy(),
            "looks": self.looks,
            "seen": self.seen,
            "ring": self.ring.copy(),
            "ring_index": self.ring_index.copy(),
            "ring_time": self.ring_time.copy(),
            "epoch": self.epoch.copy(),
            "epochs": np.array(self.epochs) if self.epochs else np.zeros((0, len(self.epoch))),
            "warned": [*self.warned, self.epoch_warned],
            "evidence": self.evidence,
        }

    def snapshot(self) -> dict[str, Any]:
        out = super().snapshot()
        if self.prepared:
            out["scan"] = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in self.state().items()}
            # JSON has no NaN: a look without a time is None.
            out["scan"]["ring_time"] = [None if math.isnan(t) else t for t in self.ring_time.tolist()]
            out["finding"] = self.finding
        return out

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        if state.get("scan") is not None:
            scan = {**state["scan"], "ring_time": [math.nan if t is None else t for t in state["scan"]["ring_time"]]}
            self.restore_judged_state({"score": state["score"], "p_value": state["p_value"], **scan})
        self.finding = state.get("finding")

    def restore_judged_state(self, state: dict[str, Any]) -> None:
        super().restore_judged_state(state)
        if "ring" not in state:
            return
        self.ref_cells = np.asarray(state["ref_cells"], dtype=np.float64)
        self.looks, self.seen = int(state["looks"]), int(state["seen"])
        self.ring = np.asarray(state["ring"], dtype=np.float64).copy()
        self.ring_index = np.asarray(state["ring_index"], dtype=np.int64).copy()
        self.ring_time = np.asarray(state["ring_time"], dtype=np.float64).copy()
        self.epoch = np.asarray(state["epoch"], dtype=np.float64).copy()
        self.epochs = [np.asarray(e, dtype=np.float64) for e in state["epochs"] if len(e)]
        *self.warned, self.epoch_warned = (bool(w) for w in state["warned"])
        self.evidence = float(state["evidence"])
        self._derive()

    # -- subclasses --------------------------------------------------------------------------------

    dims: int
    limits: FloatArray  # each test's threshold: windows x tests (set by `_derive`)

    def _prepare(self, reference: Any) -> FloatArray:
        raise NotImplementedError

    def _blocks(self, values: Any, k: int) -> tuple[FloatArray, FloatArray]:
        """Per-look sums (looks x dims) and the values' reference cells (summed over looks)."""
        raise NotImplementedError

    def _statistics(self, sums: FloatArray, n_ref: float) -> FloatArray:
        """Statistics (looks x windows x tests) of window sums (looks x windows x dims)."""
        raise NotImplementedError

    def _describe(self, sums: FloatArray, n: int) -> dict[str, Any]:
        raise NotImplementedError


class NumericScan(ScanTest):
    """Scan of a numeric stream's normal scores: location, scale and shape at once.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> t = NumericScan(reference_size=1000, target_ert=1e6)
    >>> x = np.r_[rng.standard_normal(11_000), rng.standard_normal(1000) + 1.0]
    >>> hits = t.update_many(x.tolist())
    >>> len(hits), 11_000 <= hits[0] < 11_150, t.finding["test"]
    (1, True, 'mean')
    """

    input_kind: ClassVar[InputKind] = "numeric"
    tests = ("mean", "scale", "shape")
    # Per look: Σz, Σ(z² - 1), Σx, Σx², then the counts in each shape bin.
    dims = 4 + SHAPE_BINS

    def accept(self, x: Any) -> Any:
        v = float(x)
        return v if math.isfinite(v) else None

    def _prepare(self, reference: FloatArray) -> FloatArray:
        if isinstance(reference, np.ndarray) and reference.dtype == np.float64:
            reference.sort()  # in place, as the window tests do: a bank's row is the reference
        else:
            reference = np.sort(np.asarray(reference, dtype=np.float64))
        self.rebind(reference)
        r = len(reference)
        g = max(2, min(FINE_BINS, r // 4))
        # Interior edges at the reference's quantiles; ties merge bins.
        self.edges = np.unique(reference[(np.arange(1, g) * r) // g])
        cells = np.bincount(np.searchsorted(self.edges, reference, side="right"), minlength=len(self.edges) + 1)
        self.ref_mean = float(reference.mean())
        self.ref_sd = float(reference.std()) or 1.0
        self._shape_of_cells(cells.astype(np.float64))
        return cells.astype(np.float64)

    def rebind(self, reference: FloatArray) -> None:
        """Point at the same (sorted) first reference held elsewhere (a bank that grew moved it)."""
        self._ref = reference

    def _reference_out(self) -> list[Any] | None:
        return [float(v) for v in self._ref]

    def _shape_of_cells(self, cells: FloatArray) -> None:
        """Fine cells into SHAPE_BINS groups of about equal reference share (fixed once prepared)."""
        share = np.cumsum(cells) / cells.sum()
        self.shape_of = np.minimum((share - cells / cells.sum() / 2) * SHAPE_BINS, SHAPE_BINS - 1).astype(np.int64)

    def _derive(self) -> None:
        p = (self.ref_cells + 0.5) / (self.ref_cells.sum() + 0.5 * len(self.ref_cells))
        self.p, self.below = p, np.r_[0.0, np.cumsum(p)[:-1]]
        shape_p = np.bincount(self.shape_of, weights=self.ref_cells, minlength=SHAPE_BINS) + 0.5
        self.shape_p = shape_p / shape_p.sum()
        if not hasattr(self, "limits"):
            n = WINDOWS * self.window_size
            self.n_values = n[:, None].astype(np.float64)
            self.limits = np.array(
                [[threshold(df, int(v), self.window_size, self.rate) for df in (1, 1, SHAPE_BINS - 1)] for v in n]
            )

    def _blocks(self, values: Any, k: int) -> tuple[FloatArray, FloatArray]:
        L = self.window_size
        x = np.asarray(values, dtype=np.float64)
        cell = np.searchsorted(self.edges, x, side="right")
        u = _uniform(self.seen, len(x)) * self.p[cell]
        u += self.below[cell]
        z = special.ndtri(np.clip(u, U_EDGE, 1 - U_EDGE, out=u))
        look = np.repeat(np.arange(k), L)
        blocks = np.empty((k, self.dims))
        blocks[:, 0] = z.reshape(k, L).sum(axis=1)
        blocks[:, 1] = (z * z - 1).reshape(k, L).sum(axis=1)
        blocks[:, 2] = x.reshape(k, L).sum(axis=1)
        blocks[:, 3] = (x * x).reshape(k, L).sum(axis=1)
        blocks[:, 4:] = np.bincount(look * SHAPE_BINS + self.shape_of[cell], minlength=k * SHAPE_BINS).reshape(
            k, SHAPE_BINS
        )
        cells = np.bincount(cell, minlength=len(self.ref_cells)).astype(np.float64)
        return blocks, cells[None, :]

    def _statistics(self, sums: FloatArray, n_ref: float) -> FloatArray:
        n = self.n_values  # (windows, 1)
        spread = 1.0 / n[:, 0] + 1.0 / n_ref
        mean = sums[..., 0] / n[:, 0]
        # Σz² is χ²_n: its cube root per value is nearly normal (Wilson-Hilferty), where the plain
        # normal approximation of a short window's Σz² has far too light an upper tail.
        cube = np.cbrt(np.maximum(sums[..., 1] / n[:, 0] + 1.0, 0.0)) - (1.0 - 2.0 / (9 * n[:, 0]))
        shape = deviance(sums[..., 4:], self.shape_p * n) / (1.0 + n[:, 0] / n_ref)
        return np.stack([mean * mean / spread, cube * cube / (2.0 / 9.0 * spread), shape], axis=-1)

    def _describe(self, sums: FloatArray, n: int) -> dict[str, Any]:
        mean = sums[2] / n
        sd = math.sqrt(max(sums[3] / n - mean * mean, 0.0))
        return {
            "reference_mean": self.ref_mean,
            "reference_sd": self.ref_sd,
            "window_mean": float(mean),
            "window_sd": sd,
            "mean_shift_sd": (float(mean) - self.ref_mean) / self.ref_sd,
            "sd_ratio": sd / self.ref_sd,
        }


class CategoricalScan(ScanTest):
    """Scan of a categorical stream's level counts (χ²), with rare and new levels in one cell.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> t = CategoricalScan(reference_size=1000, target_ert=1e6)
    >>> x = np.r_[rng.choice(list("abc"), 11_000, p=[.5, .3, .2]), rng.choice(list("abc"), 2000, p=[.3, .5, .2])]
    >>> hits = t.update_many(x.tolist())
    >>> len(hits), 11_000 <= hits[0] < 11_400, sorted(m["level"] for m in t.finding["levels"][:2])
    (1, True, ['a', 'b'])
    """

    input_kind: ClassVar[InputKind] = "categorical"
    tests = ("levels",)

    def accept(self, x: Any) -> Any:
        return str(x)

    def _reference_values(self, values: list[Any]) -> Any:
        return values

    def _prepare(self, reference: Any) -> FloatArray:
        names, counts = np.unique(np.asarray([str(v) for v in reference]), return_counts=True)
        self._first = (names.tolist(), counts.tolist())  # the first reference, as level counts
        keep = np.flatnonzero(counts >= MIN_LEVEL_COUNT)
        keep = keep[np.argsort(-counts[keep], kind="stable")][:MAX_CELLS]
        self.levels = [str(names[i]) for i in keep]  # each with a cell of its own; the rare cell last
        self.slot = {level: i for i, level in enumerate(self.levels)}
        self.dims = len(self.levels) + 1
        cells = np.zeros(self.dims)
        for name, c in zip(names.tolist(), counts.tolist(), strict=True):
            cells[self.slot.get(name, len(self.levels))] += c
        return cells

    def slot_of(self, names: list[str]) -> IntArray:
        """The cell of each level name (rare and unseen: the last)."""
        rare = len(self.levels)
        return np.array([self.slot.get(n, rare) for n in names], dtype=np.int64)

    def window_values(self, window: list[Any]) -> Any:
        return self.slot_of(window)

    def _derive(self) -> None:
        # Per window length, the cells that stand alone (expected >= MIN_EXPECTED values) and the
        # shared rare cell, as a 0/1 matrix from cells to groups (padded to the most groups, with
        # shares of 1 and counts of 0: terms of 0).
        n_ref = self.ref_cells.sum()
        p = (self.ref_cells + 0.5) / (n_ref + 0.5 * self.dims)
        n = WINDOWS * self.window_size
        own = (p[None, :] * n[:, None] >= MIN_EXPECTED) & (np.arange(self.dims) < self.dims - 1)
        groups = int(own.sum(axis=1).max()) + 1
        self.group = np.zeros((len(n), self.dims, groups))
        self.expected = np.ones((len(n), groups))
        limits = np.full((len(n), 1), math.inf)
        for j, v in enumerate(n.tolist()):
            mine = np.flatnonzero(own[j])
            self.group[j, mine, np.arange(len(mine))] = 1.0
            self.group[j, ~own[j], len(mine)] = 1.0
            self.expected[j, : len(mine) + 1] = np.r_[p[mine], p[~own[j]].sum()] * v
            if len(mine):
                limits[j, 0] = threshold(len(mine), v, self.window_size, self.rate)
        self.limits = limits
        self.n_values = n.astype(np.float64)

    def _blocks(self, values: Any, k: int) -> tuple[FloatArray, FloatArray]:
        slots = np.asarray(values, dtype=np.int64)
        look = np.repeat(np.arange(k), self.window_size)
        blocks = np.bincount(look * self.dims + slots, minlength=k * self.dims).reshape(k, self.dims).astype(np.float64)
        return blocks, blocks

    def _statistics(self, sums: FloatArray, n_ref: float) -> FloatArray:
        counts = np.einsum("kwd,wdg->kwg", sums, self.group)
        return (deviance(counts, self.expected) / (1.0 + self.n_values / n_ref))[..., None]

    def _describe(self, sums: FloatArray, n: int) -> dict[str, Any]:
        p = self.ref_cells / self.ref_cells.sum()
        q = sums / n
        names = [*self.levels, OTHER]
        moved = np.argsort(-np.abs(q - p), kind="stable")[:3]
        return {
            "levels": [
                {"level": names[i], "reference_share": float(p[i]), "window_share": float(q[i])} for i in moved.tolist()
            ]
        }

    def _reference_out(self) -> list[Any] | None:
        names, counts = self._first
        return [name for name, c in zip(names, counts, strict=True) for _ in range(c)]


# -- a change inside a reference ----------------------------------------------------------------

# False-alarm probability of the check of one reference: a reference is learned once per
# detection (or reset), so this adds a fraction of a false alarm per 10,000 references.
SPLIT_ALPHA = 1e-4
# A split leaves at least this share of the reference on either side.
SPLIT_EDGE = 0.05
SPLITS = 20


def _midrank_scores(x: FloatArray) -> FloatArray:
    """Normal scores of the values' mid-ranks (ties share one score)."""
    n = len(x)
    order = np.argsort(x, kind="stable")
    ranked = x[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ends = np.r_[starts[1:], n]
    mid = (starts + ends - 1) / 2.0
    scores = np.empty(n)
    scores[order] = np.repeat(special.ndtri((mid + 0.5) / n), ends - starts)
    return scores


def _bridge_peak(y: FloatArray, lo: int, hi: int) -> tuple[float, int]:
    """max over splits k in [lo, hi) of |mean(y[:k]) - mean(y[k:])| in standard errors, and its k."""
    n = len(y)
    sd = float(y.std())
    if sd == 0.0:
        return 0.0, lo
    k = np.arange(lo, hi)
    s = np.cumsum(y - y.mean())[k - 1]
    t = np.abs(s) / (sd * np.sqrt(k * (n - k) / n))
    i = int(np.argmax(t))
    return float(t[i]), int(k[i])


def _bridge_limit(n: int) -> float:
    """b with P(max |bridge| / sd > b) ≈ SPLIT_ALPHA / 2 over splits in [SPLIT_EDGE, 1 - SPLIT_EDGE]
    (Siegmund: 2·b·φ(b)·ln(t1(1-t0) / (t0(1-t1))) for the two-sided standardized bridge)."""
    span = math.log((1 - SPLIT_EDGE) ** 2 / SPLIT_EDGE**2)
    b = 4.0
    for _ in range(50):
        b = math.sqrt(2 * math.log(2 * b * span / (math.sqrt(2 * math.pi) * SPLIT_ALPHA / 2)))
    return b


def numeric_reference_change(reference: FloatArray) -> dict[str, Any] | None:
    """Where a numeric reference changed (location or scale of its normal scores), if it did."""
    n = len(reference)
    lo, hi = max(2, int(n * SPLIT_EDGE)), n - max(2, int(n * SPLIT_EDGE))
    if hi <= lo:
        return None
    z = _midrank_scores(np.asarray(reference, dtype=np.float64))
    limit = _bridge_limit(n)
    for test, y in (("mean", z), ("scale", z * z)):
        peak, k = _bridge_peak(y, lo, hi)
        if peak > limit:
            return {"test": f"reference_{test}", "statistic": peak, "threshold": limit, "reference_offset": k}
    return None


def categorical_reference_change(reference: list[str]) -> dict[str, Any] | None:
    """Where a categorical reference's level mix changed (a G test at each of 19 splits), if it did."""
    names, codes = np.unique(np.asarray(reference), return_inverse=True)
    n = len(codes)
    counts = np.bincount(codes, minlength=len(names))
    cells = np.where(counts >= 10, np.arange(len(names)), len(names))  # thin levels share a cell
    _, cell = np.unique(cells[codes], return_inverse=True)
    k_cells = int(cell.max()) + 1
    if k_cells < 2 or n < 2 * SPLITS:
        return None
    onehot_cum = np.cumsum(np.eye(k_cells)[cell], axis=0)
    total = onehot_cum[-1]
    limit = float(special.chdtri(k_cells - 1, SPLIT_ALPHA / (SPLITS - 1)))
    best: tuple[float, int] = (0.0, 0)
    for j in range(1, SPLITS):
        k = n * j // SPLITS
        before = onehot_cum[k - 1]
        table = np.stack([before, total - before])
        expected = np.outer([k, n - k], total / n)
        g = float(2.0 * np.sum(special.xlogy(table, table / np.where(expected > 0, expected, 1.0))))
        if g > best[0]:
            best = (g, k)
    if best[0] > limit:
        return {"test": "reference_levels", "statistic": best[0], "threshold": limit, "reference_offset": best[1]}
    return None
