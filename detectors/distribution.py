"""Per-feature distribution tests of tumbling windows against a reference taken from the stream.

A `WindowedTest` keeps the first `reference_size` values as its reference, then tests each
tumbling window of `window_size` values against it. State is bounded: the reference plus one
window. As with River's detectors, the update after a detection resets everything, so the
next `reference_size` values become the new reference and a lasting shift is reported once.

Each test is also a kernel that a caller with its own buffers can drive (the daemon's stream
banks keep thousands of references and windows in one array): `prepare(reference)` once, then
`judge(window)` per window. `update()` and `update_many()` drive the same kernel from the
test's own buffers, so both paths give the same answers.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from scipy import special

from detectors.base import InputKind, Parametrised, check_float, check_int, check_state

FloatArray = npt.NDArray[np.float64]

# Category for levels the reference never saw; a level with this exact name shares its bucket.
OTHER = "__other__"
# ErrorRateTest's reference grows to at most this many times its first size.
MAX_REFERENCE_FACTOR = 20
# Above this many reference x window pairs, KSTest's p-value is asymptotic rather than exact.
EXACT_KS_MAX = 10_000
# Floor for bin proportions in PSI so that an empty bin gives a large finite term, not ln(0)
# (Evidently uses the same 1e-4).
PSI_EPS = 1e-4
# Floor for the reference std in the normed Wasserstein distance, as Evidently does, so that a
# constant reference does not divide by zero.
MIN_STD = 1e-3


def jensen_shannon(p: FloatArray, q: FloatArray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) of two count vectors, as
    scipy.spatial.distance.jensenshannon computes it, without importing scipy.spatial (~12 MB)."""
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    # rel_entr(x, y) = x ln(x / y), 0 where x = 0.
    divergence = (np.sum(special.rel_entr(p, m)) + np.sum(special.rel_entr(q, m))) / (2 * math.log(2))
    # Identical distributions can come out as a tiny negative under the sqrt.
    return math.sqrt(max(float(divergence), 0.0))


def psi(reference: FloatArray, current: FloatArray) -> float:
    """Population stability index of two proportion vectors over the same bins."""
    r = np.clip(reference, PSI_EPS, None)
    c = np.clip(current, PSI_EPS, None)
    return float(np.sum((c - r) * np.log(c / r)))


class WindowedTest(Parametrised):
    """Base class: the kernel (prepare, statistic, judge) and River's shape over it.

    Subclasses set `input_kind` and `_param_names`, and implement `prepare()` (derive what the
    test needs from the reference), `statistic()` (statistic and p-value, or None, of a window)
    and `passes()`. A window is what `window_values()` makes of accepted values: an array for
    numeric and binary tests, level counts for categorical ones.
    """

    input_kind: ClassVar[InputKind]

    def __init__(self, reference_size: int, window_size: int) -> None:
        check_int("reference_size", reference_size, 2)
        check_int("window_size", window_size, 2)
        self.reference_size = reference_size
        self.window_size = window_size

    def _reset(self) -> None:
        self.prepared = False
        self._collected: list[Any] = []  # the reference while it is collected (River shape only)
        self._buffer: list[Any] = []
        self._score: float | None = None
        self._p_value: float | None = None
        self._drift = False

    def _restart(self) -> None:
        """After a detection: learn a new reference, but keep showing the statistic that fired
        until the next window has one (the gauge and the alert read it)."""
        score, p_value = self._score, self._p_value
        self._reset()
        self._score, self._p_value = score, p_value

    # -- the kernel -----------------------------------------------------------------------------

    def accept(self, x: Any) -> Any:
        """The value this test takes for `x`, or None to skip it."""
        raise NotImplementedError

    def prepare(self, reference: Any) -> None:
        """Learn the reference (accepted values; a numeric array may be sorted in place and kept)."""
        raise NotImplementedError

    def window_values(self, window: list[Any]) -> Any:
        """Accepted values as `statistic()` takes them."""
        return np.asarray(window, dtype=np.float64)

    def statistic(self, window: Any) -> tuple[float, float | None]:
        raise NotImplementedError

    def passes(self, statistic: float, p_value: float | None) -> bool:
        raise NotImplementedError

    def absorb(self, window: Any) -> None:
        """A window that raised nothing; a test with an expanding reference takes it in."""

    def judge(self, window: Any) -> bool:
        """Test one full window against the prepared reference; True on drift."""
        drifted = self.judged(*self.statistic(window))
        if not drifted:
            self.absorb(window)
        return drifted

    def judged(self, statistic: float, p_value: float | None) -> bool:
        """Take a window's statistic (computed here, or for many windows at once by the caller)."""
        self._score, self._p_value = statistic, p_value
        self._drift = self.passes(statistic, p_value)
        return self._drift

    def restore_judged_state(self, state: dict[str, Any]) -> None:
        """Take back what `judge()` leaves besides the reference: the last statistic and p-value."""
        self._score, self._p_value = state["score"], state["p_value"]

    # -- the Detector protocol ------------------------------------------------------------------

    @property
    def drift_detected(self) -> bool:
        return self._drift

    @property
    def score(self) -> float | None:
        """The last window's statistic; None until the first window ends."""
        return self._score

    @property
    def p_value(self) -> float | None:
        """The last window's p-value, for tests that have one."""
        return self._p_value

    def update(self, x: Any) -> None:
        v = self.accept(x)
        if v is not None:
            self.update_many([v])

    def update_many(self, xs: Iterable[Any], *, stop_at_first: bool = False) -> list[int]:
        """As update() per value, but filling the buffer by slices."""
        values, positions = self._accept_many(list(xs))
        hits: list[int] = []
        done = 0
        while done < len(values):
            if self._drift:
                self._restart()
            target = self.window_size if self.prepared else self.reference_size
            buffer = self._buffer if self.prepared else self._collected
            take = values[done : done + target - len(buffer)]
            buffer.extend(take)
            done += len(take)
            if len(buffer) < target:
                break
            if not self.prepared:
                self._collected = []
                self.prepare(self._reference_values(buffer))
                self.prepared = True
                continue
            window, self._buffer = self.window_values(buffer), []
            if self.judge(window):
                hits.append(done - 1 if positions is None else positions[done - 1])
                if stop_at_first:
                    break
        return hits

    def _reference_values(self, values: list[Any]) -> Any:
        return np.asarray(values, dtype=np.float64)

    def _accept_many(self, xs: list[Any]) -> tuple[list[Any], list[int] | None]:
        """The accepted values and their positions in `xs` (None: all accepted, positions = indices)."""
        accepted = [self.accept(x) for x in xs]
        if None not in accepted:
            return accepted, None
        positions = [i for i, v in enumerate(accepted) if v is not None]
        return [accepted[i] for i in positions], positions

    def _reference_out(self) -> list[Any] | None:
        """The prepared reference as accepted values, for a snapshot."""
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": type(self).__name__,
            "params": self._params(),
            "reference": self._reference_out() if self.prepared else None,
            "collected": list(self._collected),
            "buffer": list(self._buffer),
            "score": self._score,
            "p_value": self._p_value,
            "drift": self._drift,
        }

    def restore(self, state: dict[str, Any]) -> None:
        check_state(state, type(self).__name__, self._params())
        self._reset()
        ref = state["reference"]
        self._collected = [self.accept(v) for v in state["collected"]]
        self._buffer = [self.accept(v) for v in state["buffer"]]
        if ref is not None:
            self.prepare(self._reference_values([self.accept(v) for v in ref]))
            self.prepared = True
        self._score, self._p_value, self._drift = state["score"], state["p_value"], bool(state["drift"])


class _NumericTest(WindowedTest):
    input_kind: ClassVar[InputKind] = "numeric"

    def accept(self, x: Any) -> Any:
        v = float(x)
        return v if math.isfinite(v) else None

    def prepare(self, reference: FloatArray) -> None:
        # Every numeric test is order-invariant: keep the reference sorted, as an array only (a
        # list of Python floats costs 4x the memory, per stream, per key). Sorted in place: a
        # bank's row is the reference.
        reference.sort()
        self.rebind(reference)

    def rebind(self, reference: FloatArray) -> None:
        """Point at the same (sorted) reference held elsewhere (a bank that grew moved it)."""
        self._ref = reference

    def _reference_out(self) -> list[Any] | None:
        return [float(v) for v in self._ref]

    def _accept_many(self, xs: list[Any]) -> tuple[list[Any], list[int] | None]:
        try:
            arr = np.asarray(xs, dtype=np.float64)
        except (TypeError, ValueError):
            return super()._accept_many(xs)
        finite = np.isfinite(arr)
        if finite.all():
            return arr.tolist(), None
        positions = np.flatnonzero(finite)
        return arr[positions].tolist(), positions.tolist()


class _PValueTest:
    """Mixin: drift when p < alpha."""

    alpha: float

    def passes(self, statistic: float, p_value: float | None) -> bool:
        return p_value is not None and p_value < self.alpha


class _ThresholdTest:
    """Mixin: drift when the statistic exceeds threshold."""

    threshold: float

    def passes(self, statistic: float, p_value: float | None) -> bool:
        return statistic > self.threshold


class KSTest(_PValueTest, _NumericTest):
    """Two-sample Kolmogorov-Smirnov test of each window against the reference.

    The p-value is scipy's exact one for small samples, else the asymptotic Kolmogorov law.
    Either way it does not depend on the data's distribution, which is what makes KS's
    false-alarm rate exact without calibration (ties only make it more conservative).

    `alpha` is the false-alarm probability per window, so the expected run time on stationary
    data is about window_size / alpha events (500k with the defaults).

    >>> import random
    >>> rng = random.Random(0)
    >>> t = KSTest(reference_size=500, window_size=200)
    >>> t.update_many([rng.gauss(0, 1) for _ in range(1100)] + [rng.gauss(1, 1) for _ in range(200)])
    [1299]
    >>> 0.3 < t.score < 0.6
    True
    """

    _param_names = ("reference_size", "window_size", "alpha")

    def __init__(self, reference_size: int = 1000, window_size: int = 500, alpha: float = 0.001) -> None:
        super().__init__(reference_size, window_size)
        check_float("alpha", alpha, 0, 1, low_open=True, high_open=True)
        self.alpha = alpha
        self._reset()

    def statistic(self, window: FloatArray) -> tuple[float, float | None]:
        ref = self._ref
        n, m = len(ref), len(window)
        if n * m <= EXACT_KS_MAX:
            from scipy import stats  # heavy (~45 MB): only small samples need the exact law

            r = stats.ks_2samp(ref, window)
            return float(r.statistic), float(r.pvalue)
        d, p = ks_asymptotic(ref[None, :], window[None, :])
        return float(d[0]), float(p[0])


def ks_asymptotic(refs: FloatArray, windows: FloatArray) -> tuple[FloatArray, FloatArray]:
    """KS statistics D and asymptotic p-values of many (sorted reference, window) pairs at once, one
    pair a row: what `KSTest.statistic` computes for large samples, for a whole bank of streams.

    D = sup |F_ref − F_win| is attained at a sample point: walk the merged samples (a stable sort of
    two sorted runs is a linear merge), stepping +m for a reference value and -n for a window one,
    and read the walk after the last of each run of equal values; D = max|walk| / (n·m). scipy's
    exact two-sample p-value costs ~1.5 ms a window at 1000 x 500; the asymptotic Kolmogorov law is
    2-12% above it there (p from 0.03 to 1e-8), so it errs towards fewer alarms, at a twentieth of
    the cost.
    """
    n, m = refs.shape[1], windows.shape[1]
    merged = np.concatenate([refs, np.sort(windows, axis=1)], axis=1)
    order = np.argsort(merged, axis=1, kind="stable")
    values = np.take_along_axis(merged, order, axis=1)
    walk = np.cumsum(np.where(order < n, m, -n), axis=1)
    last = np.ones(values.shape, dtype=np.bool_)
    last[:, :-1] = values[:, 1:] != values[:, :-1]
    d = np.max(np.abs(np.where(last, walk, 0)), axis=1) / (n * m)
    return d, special.kolmogorov(math.sqrt(n * m / (n + m)) * d)


class WassersteinTest(_ThresholdTest, _NumericTest):
    """Wasserstein-1 distance between window and reference, in units of the reference's std.

    Threshold 0.1 is Evidently's default for its normed Wasserstein drift test.

    >>> t = WassersteinTest(reference_size=4, window_size=4)
    >>> t.update_many([0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 4.0])
    [11]
    >>> round(t.score, 3)  # a shift of 1 over a std of 1.118
    0.894
    """

    _param_names = ("reference_size", "window_size", "threshold")

    def __init__(self, reference_size: int = 1000, window_size: int = 500, threshold: float = 0.1) -> None:
        super().__init__(reference_size, window_size)
        check_float("threshold", threshold, 0, math.inf, low_open=True, high_open=True)
        self.threshold = threshold
        self._reset()

    def prepare(self, reference: FloatArray) -> None:
        super().prepare(reference)
        # Centre before the std so that huge offsets do not overflow the sum of squares.
        self.norm = max(float(np.std(reference - np.median(reference))), MIN_STD)

    def statistic(self, window: FloatArray) -> tuple[float, float | None]:
        # Scaled first: the distance of the scaled samples is the normed distance, and it stays
        # finite for values near the float limits.
        ref = self._ref / self.norm
        win = np.sort(window / self.norm)
        r, w = len(ref), len(win)
        grid = math.lcm(r, w)
        if grid <= 4 * max(r, w):
            # W1 = ∫|F_ref⁻¹(u) − F_win⁻¹(u)| du: both quantile functions are steps on the grid
            # 1/lcm(r, w) (with the default 1000 and 500, on 1/1000), so it is an exact mean there.
            return float(np.mean(np.abs(np.repeat(ref, grid // r) - np.repeat(win, grid // w)))), None
        # Otherwise ∫|F_ref − F_win| dx over the merged points, as scipy.stats.wasserstein_distance.
        points = np.concatenate([ref, win])
        points.sort()
        cdf_ref = np.searchsorted(ref, points[:-1], side="right") / len(ref)
        cdf_win = np.searchsorted(win, points[:-1], side="right") / len(win)
        return float(np.sum(np.abs(cdf_ref - cdf_win) * np.diff(points))), None


class PSITest(_ThresholdTest, _NumericTest):
    """Population stability index over `n_bins` quantile bins of the reference.

    Threshold 0.2: the usual rule of thumb reads PSI < 0.1 as stable and > 0.25 as a major shift.

    >>> t = PSITest(reference_size=100, window_size=100, n_bins=4)
    >>> t.update_many([float(i) for i in range(100)] * 2 + [float(i) for i in range(50, 150)])
    [299]
    """

    _param_names = ("reference_size", "window_size", "threshold", "n_bins")

    def __init__(
        self, reference_size: int = 1000, window_size: int = 500, threshold: float = 0.2, n_bins: int = 10
    ) -> None:
        super().__init__(reference_size, window_size)
        check_float("threshold", threshold, 0, math.inf, low_open=True, high_open=True)
        check_int("n_bins", n_bins, 2, reference_size)
        self.threshold = threshold
        self.n_bins = n_bins
        self._reset()

    def prepare(self, reference: FloatArray) -> None:
        super().prepare(reference)
        # Interior quantile edges; ties in the reference merge bins rather than leave empty ones.
        qs = np.quantile(reference, np.linspace(0, 1, self.n_bins + 1)[1:-1])
        self._edges = np.unique(qs)
        self._ref_p = self._proportions(reference)

    def _proportions(self, x: FloatArray) -> FloatArray:
        idx = np.searchsorted(self._edges, x, side="right")
        counts = np.bincount(idx, minlength=len(self._edges) + 1).astype(np.float64)
        return counts / len(x)

    def statistic(self, window: FloatArray) -> tuple[float, float | None]:
        return psi(self._ref_p, self._proportions(window)), None


class ErrorRateTest(_ThresholdTest, WindowedTest):
    """One-sided two-proportion z-test: does a window hold more errors than the reference?

    For the error stream (True = error). The statistic is the pooled two-sample z of the
    window's error rate against the reference's, so it allows for the reference's own noise;
    +0.5 in the pooled count keeps it finite when neither has an error. It fires when z exceeds
    `threshold`, never on fewer errors. `score` is z.

    The reference expands: every window that raises nothing joins it (as counts), up to
    MAX_REFERENCE_FACTOR times its first size, because a first reference of a thousand labels
    holds only ~50 errors at 5%, too few to see 5% → 8%. Calibration covers both the first
    reference and the expanded one (see detectors/calibration.py).

    >>> t = ErrorRateTest(reference_size=1000, window_size=500, threshold=3.3)
    >>> t.update_many(([True] + [False] * 19) * 75 + ([True] * 3 + [False] * 17) * 25)
    [1999]
    >>> round(t.score, 2)
    7.34
    """

    input_kind: ClassVar[InputKind] = "binary"
    _param_names = ("reference_size", "window_size", "threshold")

    def __init__(self, reference_size: int = 1000, window_size: int = 500, threshold: float = 3.3) -> None:
        super().__init__(reference_size, window_size)
        check_float("threshold", threshold, 0, math.inf, low_open=True, high_open=True)
        self.threshold = threshold
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        # Windows absorbed into the reference: (values, errors).
        self.absorbed = (0, 0)

    def accept(self, x: Any) -> Any:
        return bool(x)

    def prepare(self, reference: FloatArray) -> None:
        self._ref_size, self._ref_errors = len(reference), int(np.count_nonzero(reference))

    def _reference_out(self) -> list[Any] | None:
        return [True] * self._ref_errors + [False] * (self._ref_size - self._ref_errors)

    def absorb(self, window: FloatArray) -> None:
        n, k = self.absorbed
        # Capped: a change too small to fire at once must not be absorbed into the reference
        # for ever (5% -> 8% went unreported for 70k events with an unbounded reference).
        if self.reference_size + n < MAX_REFERENCE_FACTOR * self.reference_size:
            self.absorbed = (n + len(window), k + int(np.count_nonzero(window)))

    def statistic(self, window: FloatArray) -> tuple[float, float | None]:
        r, kr = self._ref_size + self.absorbed[0], self._ref_errors + self.absorbed[1]
        w, kw = len(window), int(np.count_nonzero(window))
        pooled = (kr + kw + 0.5) / (r + w + 1)
        z = (kw / w - kr / r) / math.sqrt(pooled * (1 - pooled) * (1 / w + 1 / r))
        return z, None

    def restore_judged_state(self, state: dict[str, Any]) -> None:
        super().restore_judged_state(state)
        n, k = state["absorbed"]
        self.absorbed = (int(n), int(k))

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "absorbed": list(self.absorbed)}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        n, k = state["absorbed"]
        self.absorbed = (int(n), int(k))


class CategoricalTest(WindowedTest):
    """A window is its level counts over the reference's levels (sorted) plus OTHER, last."""

    input_kind: ClassVar[InputKind] = "categorical"

    def accept(self, x: Any) -> Any:
        return str(x)

    def _accept_many(self, xs: list[Any]) -> tuple[list[Any], list[int] | None]:
        if set(map(type, xs)) <= {str}:  # the usual case, checked at C speed
            return xs, None
        return super()._accept_many(xs)

    def _reference_values(self, values: list[Any]) -> Any:
        return values

    def prepare(self, reference: Sequence[str]) -> None:
        self.prepare_counts(Counter(reference))

    def prepare_counts(self, counts: dict[str, int]) -> None:
        """Learn the reference from its level counts (the order of levels does not matter)."""
        self.levels = sorted(counts)
        self._slots = {level: i for i, level in enumerate(self.levels)}
        ref = np.zeros(len(self.levels) + 1)
        for level, c in counts.items():
            ref[self._slots[level]] = c
        self._ref_counts = ref

    def _reference_out(self) -> list[Any] | None:
        return [level for level, c in zip(self.levels, self._ref_counts.tolist(), strict=False) for _ in range(int(c))]

    def window_values(self, window: list[Any]) -> FloatArray:
        counts = np.zeros(len(self.levels) + 1)
        slots, other = self._slots, len(self.levels)
        for level, n in Counter(window).items():  # Counter counts at C speed; few levels remain
            counts[slots.get(level, other)] += n
        return counts


class Chi2Test(_PValueTest, CategoricalTest):
    """Chi-squared goodness of fit of the window's level counts to the reference's proportions.

    Levels the reference never saw count under "__other__". Reference counts get +0.5 each
    (so "__other__" and rare levels have a small, non-zero expected count).

    >>> t = Chi2Test(reference_size=300, window_size=300)
    >>> t.update_many(["a", "b", "c"] * 200 + ["a", "a", "b"] * 100)
    [899]
    """

    _param_names = ("reference_size", "window_size", "alpha")

    def __init__(self, reference_size: int = 1000, window_size: int = 500, alpha: float = 0.001) -> None:
        super().__init__(reference_size, window_size)
        check_float("alpha", alpha, 0, 1, low_open=True, high_open=True)
        self.alpha = alpha
        self._reset()

    def prepare_counts(self, counts: dict[str, int]) -> None:
        super().prepare_counts(counts)
        smoothed = self._ref_counts + 0.5
        self._ref_p = smoothed / smoothed.sum()

    def statistic(self, observed: FloatArray) -> tuple[float, float | None]:
        # Pearson's statistic and its χ² survival (scipy.stats.chisquare, without its import cost).
        expected = self._ref_p * observed.sum()
        statistic = float(np.sum((observed - expected) ** 2 / expected))
        return statistic, float(special.chdtrc(len(observed) - 1, statistic))


class JensenShannonTest(_ThresholdTest, CategoricalTest):
    """Jensen-Shannon distance (base 2, so in [0, 1]) between window and reference level proportions.

    Threshold 0.1 is Evidently's default.

    >>> t = JensenShannonTest(reference_size=4, window_size=4)
    >>> t.update_many(["a", "b"] * 4 + ["c"] * 4)
    [11]
    >>> t.score
    1.0
    """

    _param_names = ("reference_size", "window_size", "threshold")

    def __init__(self, reference_size: int = 1000, window_size: int = 500, threshold: float = 0.1) -> None:
        super().__init__(reference_size, window_size)
        check_float("threshold", threshold, 0, 1, low_open=True)
        self.threshold = threshold
        self._reset()

    def statistic(self, counts: FloatArray) -> tuple[float, float | None]:
        return jensen_shannon(self._ref_counts, counts), None


class CategoricalPSITest(_ThresholdTest, CategoricalTest):
    """Population stability index over the reference's levels plus "__other__".

    >>> t = CategoricalPSITest(reference_size=100, window_size=100)
    >>> t.update_many(["a", "b"] * 100 + ["a"] * 100)
    [299]
    """

    _param_names = ("reference_size", "window_size", "threshold")

    def __init__(self, reference_size: int = 1000, window_size: int = 500, threshold: float = 0.2) -> None:
        super().__init__(reference_size, window_size)
        check_float("threshold", threshold, 0, math.inf, low_open=True, high_open=True)
        self.threshold = threshold
        self._reset()

    def prepare_counts(self, counts: dict[str, int]) -> None:
        super().prepare_counts(counts)
        self._ref_p = self._ref_counts / self._ref_counts.sum()

    def statistic(self, counts: FloatArray) -> tuple[float, float | None]:
        return psi(self._ref_p, counts / counts.sum()), None
