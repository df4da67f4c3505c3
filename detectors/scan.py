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

The kernel (`detectors/scan_bank.py`) keeps many streams' state as rows of arrays and tests
their looks together; a `ScanTest` is one stream's view of a slot in a bank (its own bank of one
when used alone).

A detection carries `finding`: the test, its window, statistic and threshold, the window's start
(the estimated change point), and the change in words' terms (mean and sd in reference units, or
the levels whose shares moved).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from scipy import special

from detectors.base import InputKind, check_float, check_int
from detectors.distribution import OTHER, WindowedTest
from detectors.scan_bank import (
    FINE_BINS,
    HISTORY,
    LOOK,
    MAX_CELLS,
    MAX_REFERENCE,
    MIN_LEVEL_COUNT,
    WINDOW_LOOKS,
    Z_UNIT,
    CategoricalBank,
    NumericBank,
    ScanBank,
    threshold,
)

__all__ = ["LOOK", "WINDOW_LOOKS", "CategoricalScan", "NumericScan", "ScanTest", "threshold"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class ScanTest(WindowedTest):
    """One scan stream: its parameters, and its slot in a bank (`bind`), where the state lives.

    A subclass sets `bank_type` and implements `_prepare` (learn a reference into the slot).
    """

    _param_names = ("reference_size", "window_size", "target_ert", "max_reference")
    bank_type: ClassVar[type[ScanBank]]

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
        self.tests = self.bank_type.tests
        self.rate = 1.0 / (self.target_ert * len(WINDOW_LOOKS) * len(self.tests))
        self.bank: ScanBank | None = None
        self.slot = -1
        self._reset()

    def bind(self, bank: ScanBank, slot: int) -> None:
        """Keep the state in `bank`'s `slot` (a drift's bank of all its streams of this kind)."""
        if type(bank) is not self.bank_type or bank.look != self.window_size:
            raise ValueError(f"a {type(self).__name__} of looks of {self.window_size} cannot use this bank")
        self.bank, self.slot = bank, slot

    def _slot(self) -> tuple[Any, int]:
        if self.bank is None:
            self.bind(self.bank_type(self.window_size), 0)
            assert self.bank is not None
            self.bank.add()
        return self.bank, self.slot

    @property
    def finding(self) -> dict[str, Any] | None:
        """How the last detection fired: test, window, statistic and threshold, change point, change."""
        return None if self.bank is None else self.bank.findings[self.slot]

    def take_distribution(self) -> dict[str, Any] | None:
        """The before/after distribution of the last detection, once (see ScanBank.distributions)."""
        return None if self.bank is None else self.bank.distributions.pop(self.slot, None)

    @property
    def reference_events(self) -> int:
        """Values in the reference (the first one and the epochs that joined it)."""
        return 0 if self.bank is None else int(self.bank.n_ref[self.slot])

    @property
    def evidence(self) -> float:
        """The last look's largest statistic as a share of its threshold."""
        return math.nan if self.bank is None else float(self.bank.evidence[self.slot])

    # -- the kernel ------------------------------------------------------------------------------

    def prepare(self, reference: Any) -> None:
        self._prepare(reference)

    def _prepare(self, reference: Any) -> None:
        raise NotImplementedError

    def judge(self, window: Any) -> bool:
        self._drift = self.scan(np.asarray(window)) is not None
        return self._drift

    def scan(self, values: Any, index: IntArray | None = None, times: FloatArray | None = None) -> int | None:
        """Take whole looks of values (a multiple of `window_size`), in order. Returns the position
        of the last value of the look that fired (then `finding` says how), or None."""
        bank, slot = self._slot()
        n = len(values) // self.window_size * self.window_size
        fired = bank.scan(np.array([slot]), np.array([n]), np.asarray(values)[:n], index, times)
        self._score = self.evidence
        return None if fired[0] < 0 else int(fired[0])

    def pin(self, pinned: bool) -> None:
        """A pinned reference grows no more (unpinned: up to MAX_REFERENCE again)."""
        bank, slot = self._slot()
        self.max_reference = int(bank.n_ref[slot]) if pinned else max(MAX_REFERENCE, self.reference_size)
        bank.max_reference[slot] = self.max_reference

    def statistic(self, window: Any) -> tuple[float, float | None]:
        raise NotImplementedError("a scan test judges looks, not one window")

    def passes(self, statistic: float, p_value: float | None) -> bool:
        return statistic >= 1.0

    # -- state -----------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the reference (its slot's row of each kept array)."""
        bank, slot = self._slot()
        return {name: a[0] for name, a in bank.state(np.array([slot])).items()}

    def snapshot(self) -> dict[str, Any]:
        out = super().snapshot()
        if self.prepared:
            # JSON has no NaN: a look without a time is None.
            out["scan"] = {
                name: [None if isinstance(t, float) and math.isnan(t) else t for t in v.tolist()]
                if name == "ring_time"
                else v.tolist()
                if isinstance(v, np.ndarray)
                else v.item()
                for name, v in self.state().items()
            }
            out["finding"] = self.finding
        return out

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        if state.get("scan") is not None:
            scan = {**state["scan"], "ring_time": [math.nan if t is None else t for t in state["scan"]["ring_time"]]}
            self.restore_judged_state({"score": state["score"], "p_value": state["p_value"], **scan})
        if self.bank is not None:
            self.bank.findings[self.slot] = state.get("finding")

    def restore_judged_state(self, state: dict[str, Any]) -> None:
        super().restore_judged_state(state)
        if "ring" in state:
            state = _from_blocks(state, numeric=self.bank_type is NumericBank)
        if "ring_c" not in state:
            return
        bank, slot = self._slot()
        kept = {name: np.asarray(state[name], dtype=getattr(bank, name).dtype)[None] for name in bank.kept}
        bank.restore(np.array([slot]), kept)


def _from_blocks(state: dict[str, Any], numeric: bool) -> dict[str, Any]:
    """A scan's state as an earlier version kept it (the ring as float sums; epochs as a list) in
    today's terms."""
    ring = np.asarray(state["ring"], dtype=np.float64)
    cells = FINE_BINS if numeric else MAX_CELLS + 1
    epochs = [np.asarray(e) for e in state["epochs"] if len(e)]
    *warned, epoch_warned = state["warned"]

    def padded(a: Any, width: int) -> npt.NDArray[Any]:
        a = np.asarray(a)
        out = np.zeros((*a.shape[:-1], width), dtype=a.dtype)
        out[..., : a.shape[-1]] = a
        return out

    out = {
        "looks": state["looks"],
        "seen": state["seen"],
        "ring_z": np.rint(ring[:, :2] * Z_UNIT) if numeric else np.zeros((HISTORY, 0)),
        "ring_c": ring[:, 4:] if numeric else padded(ring, cells),
        "ring_index": state["ring_index"],
        "ring_time": state["ring_time"],
        "ref_cells": padded(state["ref_cells"], cells),
        "epoch": padded(state["epoch"], cells),
        "epochs": np.array([padded(e, cells) for e in epochs] + [np.zeros(cells)] * (4 - len(epochs)))[:4],
        "n_epochs": len(epochs),
        "warned": [*map(bool, warned), *[False] * (4 - len(warned))][:4],
        "epoch_warned": bool(epoch_warned),
        "evidence": state["evidence"],
        "max_reference": state.get("max_reference", MAX_REFERENCE),
    }
    if numeric:
        out["ring_x"] = ring[:, 2:4]
    return out


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
    bank_type = NumericBank

    def accept(self, x: Any) -> Any:
        v = float(x)
        return v if math.isfinite(v) else None

    def _prepare(self, reference: FloatArray) -> None:
        if isinstance(reference, np.ndarray) and reference.dtype == np.float64:
            reference.sort()  # in place, as the window tests do: a bank's row is the reference
        else:
            reference = np.sort(np.asarray(reference, dtype=np.float64))
        self.rebind(reference)
        bank, slot = self._slot()
        bank.prepare(slot, reference, self.rate, self.max_reference)

    def rebind(self, reference: FloatArray) -> None:
        """Point at the same (sorted) first reference held elsewhere (a bank that grew moved it)."""
        self._ref = reference

    def _reference_out(self) -> list[Any] | None:
        return [float(v) for v in self._ref]


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
    bank_type = CategoricalBank

    def accept(self, x: Any) -> Any:
        return str(x)

    def _reference_values(self, values: list[Any]) -> Any:
        return values

    def _prepare(self, reference: Any) -> None:
        names, counts = np.unique(np.asarray([str(v) for v in reference]), return_counts=True)
        self._first = (names.tolist(), counts.tolist())  # the first reference, as level counts
        keep = np.flatnonzero(counts >= MIN_LEVEL_COUNT)
        keep = keep[np.argsort(-counts[keep], kind="stable")][:MAX_CELLS]
        self.levels = [str(names[i]) for i in keep]  # each with a cell of its own; the rare cell last
        self.slot_map = {level: i for i, level in enumerate(self.levels)}
        self.dims = len(self.levels) + 1
        cells = np.zeros(self.dims)
        for name, c in zip(names.tolist(), counts.tolist(), strict=True):
            cells[self.slot_map.get(name, len(self.levels))] += c
        bank, slot = self._slot()
        bank.prepare(slot, [*self.levels, OTHER], cells, self.rate, self.max_reference)

    def slot_of(self, names: list[str]) -> IntArray:
        """The cell of each level name (rare and unseen: the last)."""
        rare = len(self.levels)
        return np.array([self.slot_map.get(n, rare) for n in names], dtype=np.int64)

    def window_values(self, window: list[Any]) -> Any:
        return self.slot_of(window)

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
