"""Calibrate a detector's threshold to a target expected run time (ERT) on a reference sample.

The ERT is the mean number of events between false alarms on stationary data. River's and
Evidently's default thresholds give ERTs of a few thousand events (PageHinkley fires ~62 times
per 100k N(0, 1) values), which pages people. `calibrate()` picks the threshold from the
reference instead, cheaply enough to run at start-up for every stream, by using the structure
of each detector rather than simulating millions of events per candidate:

- Window-vs-reference tests fire at most once per tumbling window of w events, after r events
  of reference, so ERT = r + w / q for a per-window false-alarm probability q. KS uses its
  exact two-sample null (it already accounts for the random reference); the others bootstrap
  the window statistic against resampled references and extrapolate an exponential tail
  fitted to the top order statistics to the (1 - q) quantile.
- Sequential detectors (PageHinkley, ADWIN, DDM, HDDM_A, HDDM_W, FHDDM) run on a bootstrap of
  the reference (a Bernoulli stream at the reference error rate for binary ones) at a few
  cheap settings, and the run length is extrapolated in the threshold (see `_SEQUENTIAL`).

>>> import random
>>> rng = random.Random(0)
>>> cal = calibrate("ks", [rng.gauss(0, 1) for _ in range(2000)], target_ert=1_000_000)
>>> round(cal.params["alpha"], 6)  # window 500 / (1M - reference 1000)
0.000501
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

from detectors.base import check_int
from detectors.registry import DETECTORS

FloatArray = npt.NDArray[np.float64]

DEFAULT_TARGET_ERT = 1_000_000
# Events simulated per calibration. ~1M River updates is ~0.5-2 s of CPU on a slow core, the
# start-up cost we accept per stream; the extrapolation below is what makes it enough.
DEFAULT_BUDGET_EVENTS = 1_000_000

NOT_CALIBRATABLE = {
    "kswin": (
        "KSWIN runs scipy's ks_2samp on every update (~7k updates/s), too slow for the per-event hot path "
        "and for simulating its run length; use 'ks' (tumbling windows against a reference) instead"
    ),
    "eddm": (
        "EDDM compares the mean distance between errors with its best-so-far, a ratio whose threshold beta "
        "is confined to (0, alpha): a beta low enough for a 1M-event ERT no longer reacts to a doubling of "
        "the error rate, so there is no sensible calibrated setting; use 'ddm' or 'hddm_a'"
    ),
    "hddm_w": (
        "HDDM_W's simulated run lengths are too irregular in drift_confidence to extrapolate to a 1M-event "
        "ERT (a setting fitted that way missed a 5%->10% error-rate change for 20k events); use 'ddm' or "
        "'hddm_a'"
    ),
}

# Tail fit for bootstrapped window statistics: the top TAIL_SHARE of the replicates (at least
# TAIL_MIN of them) are fitted with an exponential excess distribution (peaks over threshold,
# GPD with shape 0). For statistics with lighter-than-exponential tails this overestimates the
# threshold, i.e. errs towards fewer false alarms.
TAIL_SHARE = 0.05
TAIL_MIN = 20
# Bootstrap replicates: references drawn, and windows tested against each one.
BOOT_REFERENCES = 40
BOOT_WINDOWS_PER_REFERENCE = 50

# A simulated setting counts as measured once it has this many false alarms (ARL to ~±20%),
# and at least MIN_ALARMS to be used in the fit at all.
ENOUGH_ALARMS = 25
MIN_ALARMS = 6
# The fit uses the last FIT_POINTS measured settings: the ones nearest the target.
FIT_POINTS = 3


@dataclass(frozen=True)
class Calibration:
    """The parameters to build the detector with, and how the ERT was estimated."""

    name: str
    params: dict[str, Any]
    target_ert: float
    estimated_ert: float
    method: str
    simulated_events: int
    # (setting, measured mean run length, alarms) for simulated settings; empty for analytic ones.
    points: list[tuple[float, float, int]] = field(default_factory=list)

    def build(self) -> Any:
        """A fresh detector with the calibrated parameters."""
        return DETECTORS[self.name](**self.params)


def calibrate(
    name: str,
    reference: Sequence[Any],
    target_ert: float = DEFAULT_TARGET_ERT,
    *,
    seed: int = 0,
    budget_events: int = DEFAULT_BUDGET_EVENTS,
    params: Mapping[str, Any] | None = None,
) -> Calibration:
    """Choose `name`'s threshold so that its ERT on data like `reference` is about `target_ert`.

    `params` fixes other constructor arguments (window sizes, ...); the calibrated one is
    overwritten. `reference` holds stationary values of the kind the detector takes: floats,
    bools (True = error) or category strings. Deterministic for a given seed.
    """
    if name in NOT_CALIBRATABLE:
        raise ValueError(f"name={name!r} cannot be calibrated: {NOT_CALIBRATABLE[name]}")
    if name not in DETECTORS:
        raise ValueError(f"name={name!r} is not a detector; choose one of {sorted(DETECTORS)}")
    ok_target = isinstance(target_ert, int | float) and not isinstance(target_ert, bool)
    if not ok_target or not math.isfinite(target_ert) or target_ert <= 0:
        raise ValueError(f"target_ert must be a finite number of events > 0, got {target_ert!r}")
    check_int("budget_events", budget_events, 10_000)
    check_int("seed", seed, 0)
    cls = DETECTORS[name]
    base = {**_defaults(cls), **(params or {})}  # a copy: the cached defaults stay as they are
    cls(**base)  # bad fixed parameters raise here, naming the field
    rng = np.random.default_rng(seed)
    kind: str = getattr(cls, "input_kind")  # noqa: B009 - DETECTORS is typed dict[str, type]
    if kind == "numeric":
        ref: Any = _numeric_reference(reference)
    elif kind == "binary" and name in _SEQUENTIAL:
        ref = _binary_reference(reference)
    elif kind == "binary":
        ref = np.asarray(reference, dtype=bool)
        if len(ref) < 2:
            raise ValueError(f"reference must hold at least 2 values, got {len(ref)}")
    else:
        ref = _categorical_reference(reference)
    if name in _SEQUENTIAL:
        return _calibrate_sequential(name, ref, float(target_ert), rng, budget_events, base)
    return _calibrate_windowed(name, ref, float(target_ert), rng, budget_events, base)


@functools.cache
def _defaults(cls: type) -> dict[str, Any]:
    import inspect

    return {
        p.name: p.default
        for p in inspect.signature(cls).parameters.values()
        if p.default is not inspect.Parameter.empty
    }


def _numeric_reference(reference: Sequence[Any]) -> FloatArray:
    try:
        x = np.asarray(reference, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ValueError("reference must hold numbers for a numeric detector") from None
    x = x[np.isfinite(x)]
    if len(x) < 2:
        raise ValueError(f"reference must hold at least 2 finite values, got {len(x)}")
    return x


def _binary_reference(reference: Sequence[Any]) -> float:
    if len(reference) < 2:
        raise ValueError(f"reference must hold at least 2 values, got {len(reference)}")
    p = float(np.count_nonzero(np.asarray(reference, dtype=bool))) / len(reference)
    if not 0 < p < 1:
        raise ValueError(
            f"reference error rate is {p}; it must be strictly between 0 and 1 to simulate a stationary stream, "
            "so use a reference with both errors and successes"
        )
    return p


def _categorical_reference(reference: Sequence[Any]) -> npt.NDArray[np.str_]:
    if len(reference) < 2:
        raise ValueError(f"reference must hold at least 2 values, got {len(reference)}")
    return np.asarray([str(v) for v in reference])


# -- window-vs-reference tests ----------------------------------------------------------------


def _window_false_alarm_probability(target: float, reference_size: int, window_size: int) -> float:
    """q with reference_size + window_size / q = target, kept inside (0, 0.5]."""
    return min(0.5, window_size / max(target - reference_size, 2.0 * window_size))


def _calibrate_windowed(
    name: str, ref: Any, target: float, rng: np.random.Generator, budget: int, base: dict[str, Any]
) -> Calibration:
    r, w = int(base["reference_size"]), int(base["window_size"])
    if name in ("scan", "scan_categorical"):
        # Thresholds in closed form from the target (detectors/scan.py); nothing to simulate.
        return Calibration(name, {**base, "target_ert": target}, target, target, "analytic: scan thresholds", 0)
    q = _window_false_alarm_probability(target, r, w)
    if name == "ks":
        # scipy's two-sample null already includes the randomness of the reference. Windows that
        # share one reference are correlated, but as each alarm resets the reference the mean
        # run length is r + w·E[1/q(ref)] >= r + w/q (Jensen), so this errs towards fewer alarms.
        return Calibration(name, {**base, "alpha": q}, target, r + w / q, "analytic: two-sample KS null", 0)
    n_ref = BOOT_REFERENCES
    per_ref = max(5, min(BOOT_WINDOWS_PER_REFERENCE, (budget - n_ref * r) // (n_ref * w)))
    inst = DETECTORS[name](**{**base, "threshold" if name != "chi2" else "alpha": 0.5})
    if name == "jensen_shannon":
        values = _jensen_shannon_null(ref, r, w, n_ref, per_ref, rng)
    elif name == "error_rate":
        values = _error_rate_null(ref, r, w, n_ref, per_ref, rng)
    else:
        values = []
        # Numeric tests take arrays; binary windows are counted from arrays too; categorical
        # ones from their level counts.
        sample: Callable[[int], Any] = (
            (lambda n: rng.choice(ref, size=n))
            if inst.input_kind == "numeric"
            else (lambda n: rng.choice(ref, size=n).tolist())
        )
        if inst.input_kind == "categorical":
            # A window's level counts are multinomial: draw them, not 500 values to count (5x faster).
            levels, codes = np.unique(ref, return_inverse=True)
            probs = np.bincount(codes) / len(ref)
        for _ in range(n_ref):
            # The statistic is computed by the detector's own kernel.
            inst.prepare(inst._reference_values(sample(r)))
            if inst.input_kind == "categorical":
                slot = np.asarray([inst._slots.get(level, len(inst.levels)) for level in levels.tolist()])
            for _ in range(per_ref):
                if inst.input_kind == "categorical":
                    counts = np.bincount(slot, weights=rng.multinomial(w, probs), minlength=len(inst.levels) + 1)
                    stat, p_value = inst.statistic(counts)
                else:
                    stat, p_value = inst.statistic(inst.window_values(sample(w)))
                values.append(stat if p_value is None else -math.log(max(p_value, 1e-300)))
    stats_ = np.asarray(values)
    events = n_ref * (r + per_ref * w)
    if name == "chi2":
        # -ln p is Exp(1) under an exact null; the bootstrap catches the shared reference and rare levels.
        t = _exponential_tail_quantile(stats_, q)
        alpha = min(0.5, math.exp(-t))
        how = f"bootstrap of -ln p ({len(values)} windows), exponential tail fit"
        return Calibration(name, {**base, "alpha": alpha}, target, r + w / q, how, events)
    if name == "error_rate":
        # The reference expands as quiet windows pass (to MAX_REFERENCE_FACTOR x r), so late
        # windows meet a reference close to the true rate: z is then a standardized binomial,
        # skewed right, with more mass far out than early on, where the reference's symmetric
        # noise dominates. Its threshold is exact: the binomial quantile at the reference rate.
        # Take the larger; the normal quantile is a floor for references with no error at all.
        late = _error_rate_late_threshold(inst, ref, w, q)
        t = max(_exponential_tail_quantile(stats_, q), late, float(special.ndtri(1 - q)))
        how = f"bootstrap of z ({len(values)} windows) and the expanded-reference binomial quantile"
        return Calibration(name, {**base, "threshold": t}, target, r + w / q, how, events)
    if name in ("wasserstein", "jensen_shannon"):
        # Both behave like the norm of a Gaussian process under the null: their square has the
        # exponential-like tail the fit assumes.
        t = math.sqrt(_exponential_tail_quantile(stats_**2, q))
        how = f"bootstrap of statistic² ({len(values)} windows), exponential tail fit"
    else:
        # PSI is asymptotically a scaled χ², itself exponential-tailed.
        t = _exponential_tail_quantile(stats_, q)
        how = f"bootstrap of statistic ({len(values)} windows), exponential tail fit"
    if name == "jensen_shannon":
        t = min(t, 1.0)
    return Calibration(name, {**base, "threshold": max(t, 1e-12)}, target, r + w / q, how, events)


def _jensen_shannon_null(ref: Any, r: int, w: int, n_ref: int, per_ref: int, rng: np.random.Generator) -> list[float]:
    """Bootstrapped Jensen-Shannon distances of windows against references, both resampled from
    `ref`, computed for all replicates at once. Resampling is multinomial over the reference's
    levels; a level a resampled reference lacks keeps its own bin, which gives the distance a
    separate OTHER bucket would (q ln 2 is linear in q)."""
    _, codes = np.unique(ref, return_inverse=True)
    probs = np.bincount(codes) / len(ref)
    refs = rng.multinomial(r, probs, size=n_ref).astype(np.float64) / r
    wins = rng.multinomial(w, probs, size=(n_ref, per_ref)).astype(np.float64) / w
    p = refs[:, None, :]
    m = (p + wins) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        divergence = (special.rel_entr(p, m).sum(axis=2) + special.rel_entr(wins, m).sum(axis=2)) / (2 * math.log(2))
    return np.sqrt(np.maximum(divergence, 0.0)).ravel().tolist()  # type: ignore[no-any-return]


def _error_rate_null(ref: Any, r: int, w: int, n_ref: int, per_ref: int, rng: np.random.Generator) -> list[float]:
    """Bootstrapped z of ErrorRateTest (a first reference, nothing absorbed) for all replicates
    at once: resampled references and windows hold binomially many errors."""
    p = float(np.mean(ref))
    kr = rng.binomial(r, p, size=(n_ref, 1)).astype(np.float64)
    kw = rng.binomial(w, p, size=(n_ref, per_ref)).astype(np.float64)
    pooled = (kr + kw + 0.5) / (r + w + 1)
    z = (kw / w - kr / r) / np.sqrt(pooled * (1 - pooled) * (1 / w + 1 / r))
    return z.ravel().tolist()


def _error_rate_late_threshold(inst: Any, ref: Any, w: int, q: float) -> float:
    """z of the smallest error count whose binomial tail at the reference rate is below q, less
    a hair, so that a window fires iff it holds that many errors, against a full-grown reference."""
    from detectors.distribution import MAX_REFERENCE_FACTOR

    r = len(ref)
    p = float(np.mean(ref))
    # The smallest k with P(K >= k) = bdtrc(k - 1, w, p) <= q (scipy.stats.binom.isf, unimported).
    k = max(1, math.ceil(w * p))
    while k <= w and special.bdtrc(k - 1, w, p) > q:
        k += 1
    inst.prepare(np.asarray(ref, dtype=np.float64))
    grown = (MAX_REFERENCE_FACTOR - 1) * r
    inst.absorbed = (grown, round(grown * p))
    return float(inst.statistic(np.asarray([1.0] * k + [0.0] * (w - k)))[0]) - 1e-9


def _exponential_tail_quantile(values: FloatArray, q: float) -> float:
    """The (1 - q) quantile, read off the sample if it reaches that far, else from an exponential
    fitted to the excesses over the (k+1)-th largest value."""
    xs = np.sort(values)
    n = len(xs)
    k = max(TAIL_MIN, int(TAIL_SHARE * n))
    if q * n >= k:
        return float(np.quantile(xs, 1 - q))
    u = float(xs[n - k - 1])
    scale = float(np.mean(xs[n - k :] - u))
    if scale <= 0:  # a flat top: the statistic is (nearly) discrete; stay just above it
        return float(xs[-1]) * (1 + 1e-9) + 1e-12
    return u + scale * math.log((k / n) / q)


# -- sequential detectors -------------------------------------------------------------------


@dataclass(frozen=True)
class _Knob:
    """How to simulate-and-extrapolate one sequential detector.

    `param` is the calibrated argument. log ARL is modelled as a + b·g(param) beyond the
    simulated settings (or with `siegmund`, as Siegmund's CUSUM approximation). The search
    starts at `start` (a setting with a short run length) and moves by `step` in g.
    """

    param: str
    to_g: Callable[[float], float]
    from_g: Callable[[float], float]
    start: Callable[[Any], float]
    step: float
    extra: Callable[[Any, float, dict[str, Any]], dict[str, Any]] = lambda ref, value, base: {}
    siegmund: bool = False


def _neg_log(x: float) -> float:
    return -math.log(x)


def _exp_neg(g: float) -> float:
    return math.exp(-g)


def _ddm_extra(p0: float, k: float, base: dict[str, Any]) -> dict[str, Any]:
    # DDM starts testing after warm_start events; with fewer than ~30 expected errors by then its
    # s_min is near 0 (0.95^30 = 21% of 5% streams have no error at all), and the next error
    # fires whatever the threshold. So warm up until ~30 errors are expected.
    return {
        "warm_start": max(int(base["warm_start"]), math.ceil(30 / p0)),
        "warning_threshold": min(float(base["warning_threshold"]), k),
    }


def _hddm_extra(p0: float, delta: float, base: dict[str, Any]) -> dict[str, Any]:
    return {"warning_confidence": min(0.999, max(float(base["warning_confidence"]), 5 * delta))}


_SEQUENTIAL: dict[str, _Knob] = {
    # Page-Hinkley is a CUSUM: for drift δ and noise σ its one-sided ARL follows Siegmund's
    # approximation ARL(λ) ≈ A·(exp(Bλ) − 1 − Bλ) with B = 2δ/σ², quadratic in λ for small λ and
    # exponential for large λ; A and B are fitted to the simulated points. River's forgetting
    # factor (alpha = 0.9999) bounds the CUSUM's variance, making the tail lighter than exponential
    # at large λ, so extrapolating this form overestimates λ (fewer alarms, slightly slower detection).
    "page_hinkley": _Knob(
        "threshold", float, float, lambda ref: 10.0 * max(float(np.std(ref)), 1e-9), 0.0, siegmund=True
    ),
    # ADWIN tests every cut at confidence δ per check: log ARL is close to linear in ln(1/δ).
    "adwin": _Knob("delta", _neg_log, _exp_neg, lambda ref: 0.5, math.log(3)),
    # DDM fires when p + s > p_min + k·s_min: a Gaussian tail in k, so log ARL ~ k².
    "ddm": _Knob("drift_threshold", lambda k: k * k, math.sqrt, lambda p0: 1.0, 1.5, _ddm_extra),
    # HDDM and FHDDM: Hoeffding bounds at confidence δ, so log ARL ~ ln(1/δ).
    "hddm_a": _Knob("drift_confidence", _neg_log, _exp_neg, lambda p0: 0.5, math.log(6), _hddm_extra),
    "fhddm": _Knob("confidence_level", _neg_log, _exp_neg, lambda p0: 0.3, math.log(3)),
}


def _stream(ref: Any, kind: str, n: int, rng: np.random.Generator) -> list[Any]:
    if kind == "binary":
        return [bool(v) for v in rng.random(n) < ref]
    return [float(v) for v in rng.choice(ref, size=n)]


def _run_length(det: Any, stream: list[Any], limit: int) -> tuple[int, int]:
    """(events, alarms): run the River object until ENOUGH_ALARMS or `limit` events."""
    update = det.update
    alarms = 0
    n = 0
    for n, x in enumerate(stream[:limit], 1):  # noqa: B007 - n is read after the loop
        update(x)
        if det.drift_detected:
            alarms += 1
            if alarms >= ENOUGH_ALARMS:
                break
    return n, alarms


def _calibrate_sequential(
    name: str, ref: Any, target: float, rng: np.random.Generator, budget: int, base: dict[str, Any]
) -> Calibration:
    knob = _SEQUENTIAL[name]
    cls = DETECTORS[name]
    # One stream shared by every setting (common random numbers keep the points monotone).
    per_point = max(10_000, budget // 3)
    adapter = cls(**base)
    stream = [adapter._accept(v) for v in _stream(ref, getattr(cls, "input_kind"), per_point, rng)]  # noqa: B009

    def build(value: float) -> dict[str, Any]:
        return {**base, **knob.extra(ref, value, base), knob.param: value}

    points: list[tuple[float, float, int]] = []
    spent = 0
    value = knob.start(ref)
    step = knob.step
    retries = 0
    while budget - spent >= 1000 and len(points) < 12:
        det = cls(**build(value))._det
        n, alarms = _run_length(det, stream, min(per_point, budget - spent))
        spent += n
        if alarms < MIN_ALARMS:
            # Overshot into run lengths too long to measure: step back with a smaller step, a few times.
            if not points or retries >= 3 or len(points) >= FIT_POINTS:
                break
            retries += 1
            step /= 3
        else:
            points.append((value, n / alarms, alarms))
            if len(points) >= 2 and not knob.siegmund:
                # Aim the next setting at ~3x the last run length, from the local slope.
                (v0, arl0, _), (v1, arl1, _) = points[-2:]
                dg = knob.to_g(v1) - knob.to_g(v0)
                slope = math.log(arl1 / arl0) / dg if dg > 0 else 0.0
                step = min(knob.step * 2, max(knob.step / 8, math.log(3) / slope)) if slope > 0 else knob.step
        last = points[-1][0]
        value = last * 1.5 if knob.siegmund else knob.from_g(knob.to_g(last) + step)
    if len(points) < 2:
        raise ValueError(
            f"cannot calibrate {name!r}: only {len(points)} setting(s) raised enough false alarms to measure "
            f"within budget_events={budget}; raise budget_events or check that the reference varies"
        )
    if knob.siegmund:
        value, how = _fit_siegmund(points, target)
    else:
        value, how = _fit_log_linear(points, target, knob.to_g, knob.from_g)
    params = build(value)
    cls(**params)  # the extrapolated value must be a valid setting
    return Calibration(name, params, target, target, f"simulation of {len(points)} settings, {how}", spent, points)


def _fit_log_linear(
    points: list[tuple[float, float, int]],
    target: float,
    to_g: Callable[[float], float],
    from_g: Callable[[float], float],
) -> tuple[float, str]:
    """Weighted least squares of ln ARL on g over the last FIT_POINTS points, solved for target."""
    use = points[-FIT_POINTS:]
    g = np.array([to_g(p[0]) for p in use])
    y = np.log([p[1] for p in use])
    wts = np.array([p[2] for p in use], dtype=np.float64)
    b, a = np.polyfit(g, y, 1, w=np.sqrt(wts))
    if b <= 0:
        raise ValueError(
            f"cannot calibrate: the simulated run length does not grow with the threshold ({use}); raise budget_events"
        )
    g_star = (math.log(target) - a) / b
    return float(from_g(float(g_star))), f"log-linear extrapolation ln ARL = {a:.3f} + {b:.3f}·g"


def _fit_siegmund(points: list[tuple[float, float, int]], target: float) -> tuple[float, str]:
    """Fit ln ARL = ln A + ln(exp(Bλ) − 1 − Bλ) by a grid over B (ln A in closed form), solve for target."""
    lam = np.array([p[0] for p in points])
    y = np.log([p[1] for p in points])
    wts = np.array([p[2] for p in points], dtype=np.float64)
    best: tuple[float, float, float] | None = None
    for bl in np.geomspace(1e-3, 20, 400):  # B·λ_max
        b = bl / lam.max()
        f = np.log(np.expm1(b * lam) - b * lam)
        ln_a = float(np.sum(wts * (y - f)) / np.sum(wts))
        sse = float(np.sum(wts * (y - ln_a - f) ** 2))
        if best is None or sse < best[0]:
            best = (sse, b, ln_a)
    assert best is not None
    _, b, ln_a = best
    # Solve ln A + ln(exp(x) − 1 − x) = ln target for x = Bλ by bisection (monotone in x).
    lo, hi = 1e-9, 1.0
    goal = math.log(target) - ln_a

    def h(x: float) -> float:
        return math.log(math.expm1(x) - x) if x < 700 else x

    while h(hi) < goal:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if h(mid) < goal else (lo, mid)
    return float(hi / b), f"Siegmund CUSUM fit ARL = {math.exp(ln_a):.3g}·(exp({b:.4g}λ) − 1 − {b:.4g}λ)"
