"""Canary verdicts: every variant of a model against its baseline, valid at every look.

Per model, one variant is the baseline (config `canary.baselines`, else the variant named
control, baseline, stable or primary, else the one with the most traffic when first needed);
every other variant is a candidate. Per candidate, five metrics are compared with always-valid
mSPRT confidence sequences (`detectors.sequential`), each with a direction and a tolerance:

| metric | per request | worse when | tolerance (config) |
|---|---|---|---|
| error_rate | 1 if status is error | higher | absolute, `error_rate_tolerance` |
| latency | ln(latency_ms) | higher | ln(1 + `latency_tolerance`): a relative rise |
| latency_tail | 1 if latency > the baseline's `tail_quantile` | higher | absolute, `tail_tolerance` |
| accuracy | 1 if a labelled prediction was right | lower | absolute, `accuracy_tolerance` |
| prediction_shift | the score | either way | absolute, `prediction_shift_tolerance` |

The tail threshold is the baseline's `tail_quantile` over its first `min_requests` latencies,
then frozen, so that both arms count exceedances of the same line from then on (a running
quantile would move the line under the test).

Verdict, once both arms have `min_requests` requests: `fail` when a critical metric's
confidence sequence lies beyond its tolerance on the worse side (at α), or when
Benjamini-Hochberg at q = α rejects "no worse than the tolerance" for a non-critical metric
that is worse; `pass` when every metric with data has its worse-side bound within tolerance;
`inconclusive` otherwise. A `fail` stands until the comparison restarts: a sequential test stops
at its first rejection. The score is Kayenta-like: 100 × the mean over metrics of 1 (pass),
0.5 (inconclusive) or 0 (fail). A new version of either arm restarts the comparison.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

import numpy as np
import numpy.typing as npt

from daemon.config import CanaryConfig
from daemon.ingest.events import InferenceEvent
from detectors.sequential import Look, SequentialDifference, _decode_float, _encode_float, benjamini_hochberg

FloatArray = npt.NDArray[np.float64]
Verdict = Literal["pass", "fail", "inconclusive"]
VERDICT_VALUE: dict[str, int] = {"pass": 1, "inconclusive": 0, "fail": -1}
METRICS = ("error_rate", "latency", "latency_tail", "accuracy", "prediction_shift")
BASELINE_NAMES = ("control", "baseline", "stable", "primary")
# Worse direction: +1 higher is worse, -1 lower is worse, 0 either way.
WORSE = {"error_rate": 1, "latency": 1, "latency_tail": 1, "accuracy": -1, "prediction_shift": 0}
# The format of `CanaryMonitor.snapshot()` and `ModelCanary.snapshot()`.
SNAPSHOT_VERSION = 1


class _Moments:
    """n, Σx, Σx² of one metric in one arm."""

    __slots__ = ("n", "s", "ss")

    def __init__(self) -> None:
        self.n, self.s, self.ss = 0, 0.0, 0.0

    def add(self, xs: FloatArray) -> None:
        self.n += len(xs)
        self.s += float(xs.sum())
        self.ss += float(xs @ xs)

    def add_binary(self, n: int, ones: int) -> None:
        """n values of which `ones` are 1 and the rest 0."""
        self.n += n
        self.s += ones
        self.ss += ones

    def mean_var(self) -> tuple[float, float]:
        mean = self.s / self.n
        return mean, max(self.ss / self.n - mean * mean, 0.0) * self.n / max(self.n - 1, 1)

    def snapshot(self) -> list[Any]:
        return [self.n, _encode_float(self.s), _encode_float(self.ss)]

    @classmethod
    def from_snapshot(cls, state: Any) -> _Moments:
        n, s, ss = state
        m = cls()
        m.n, m.s, m.ss = _int(n), _decode_float(s), _decode_float(ss)
        return m


@dataclass
class _Arm:
    version: str
    requests: int = 0
    moments: dict[str, _Moments] = field(default_factory=lambda: {m: _Moments() for m in METRICS})
    # Baseline only: latencies until the tail threshold is set.
    warmup: list[float] = field(default_factory=list)

    def snapshot(self, variant: str) -> dict[str, Any]:
        return {
            "variant": variant,
            "model_version": self.version,
            "requests": self.requests,
            "moments": {name: self.moments[name].snapshot() for name in METRICS},
            "warmup": [_encode_float(x) for x in self.warmup],
        }

    @classmethod
    def from_snapshot(cls, state: dict[str, Any]) -> tuple[str, _Arm]:
        moments = state["moments"]
        _known_names(moments, "moments")
        arm = cls(
            _str(state["model_version"]),
            _int(state["requests"]),
            {name: _Moments.from_snapshot(moments[name]) for name in METRICS},
            [_decode_float(x) for x in state["warmup"]],
        )
        return _str(state["variant"]), arm


@dataclass
class MetricReading:
    verdict: Verdict
    look: Look
    tolerance: float

    def report(self) -> dict[str, Any]:
        lk = self.look
        return {
            "verdict": self.verdict,
            "effect": lk.effect,
            "lower": lk.lower,
            "upper": lk.upper,
            "p_value": lk.p_value,
            "tolerance": self.tolerance,
        }

    def snapshot(self, metric: str) -> dict[str, Any]:
        lk = self.look
        return {
            "metric": metric,
            "verdict": self.verdict,
            "look": {
                "n_a": lk.n_a,
                "n_b": lk.n_b,
                "effect": _encode_float(lk.effect),
                "lower": _encode_float(lk.lower),
                "upper": _encode_float(lk.upper),
                "p_value": _encode_float(lk.p_value),
            },
            "tolerance": _encode_float(self.tolerance),
        }

    @classmethod
    def from_snapshot(cls, state: dict[str, Any]) -> tuple[str, MetricReading]:
        metric, lk = state["metric"], state["look"]
        if metric not in METRICS:
            raise ValueError(f"snapshot: unknown metric {metric!r}")
        look = Look(
            _int(lk["n_a"]),
            _int(lk["n_b"]),
            *(_decode_float(lk[k]) for k in ("effect", "lower", "upper", "p_value")),
        )
        return metric, cls(_verdict(state["verdict"]), look, _decode_float(state["tolerance"]))


@dataclass
class Comparison:
    """A candidate variant against the baseline, since the last (re)start."""

    variant: str
    version: str
    baseline: str
    tests: dict[str, list[SequentialDifference]]
    verdict: Verdict = "inconclusive"
    score: float = 50.0
    metrics: dict[str, MetricReading] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    requests: tuple[int, int] = (0, 0)
    reset: bool = True  # the next timeline entry says the comparison (re)started

    def report(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "score": self.score,
            "version": self.version,
            "requests": {"baseline": self.requests[0], "candidate": self.requests[1]},
            "metrics": {name: m.report() for name, m in self.metrics.items()},
            "reasons": list(self.reasons),
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "model_version": self.version,
            "baseline": self.baseline,
            "tests": {name: [t.snapshot() for t in self.tests[name]] for name in METRICS},
            "verdict": self.verdict,
            "score": _encode_float(self.score),
            # A list, not an object: the order of the metrics is the order of the report.
            "metrics": [m.snapshot(name) for name, m in self.metrics.items()],
            "reasons": list(self.reasons),
            "requests": list(self.requests),
            "reset": self.reset,
        }

    @classmethod
    def from_snapshot(cls, state: dict[str, Any]) -> Comparison:
        tests = state["tests"]
        _known_names(tests, "tests")
        for name in METRICS:
            if len(tests[name]) != (1 if WORSE[name] else 2):
                raise ValueError(f"snapshot: {name} needs {1 if WORSE[name] else 2} tests, got {len(tests[name])}")
        base_requests, cand_requests = state["requests"]
        reset = state["reset"]
        if not isinstance(reset, bool):
            raise ValueError(f"snapshot: reset must be a bool, got {reset!r}")
        return cls(
            _str(state["variant"]),
            _str(state["model_version"]),
            _str(state["baseline"]),
            {name: [SequentialDifference.from_snapshot(t) for t in tests[name]] for name in METRICS},
            _verdict(state["verdict"]),
            _decode_float(state["score"]),
            _unique((MetricReading.from_snapshot(m) for m in state["metrics"]), "metric"),
            [_str(r) for r in state["reasons"]],
            (_int(base_requests), _int(cand_requests)),
            reset,
        )


class ModelCanary:
    """The arms of one model and the comparisons of its candidates with its baseline."""

    def __init__(self, model: str, settings: CanaryConfig) -> None:
        self.model = model
        self.settings = settings
        self.arms: dict[str, _Arm] = {}
        self.baseline: str | None = settings.baselines.get(model)
        self.tail_threshold: float | None = None
        self.comparisons: dict[str, Comparison] = {}

    # -- updates ----------------------------------------------------------------------------

    def add_events(self, variant: str, version: str, events: Sequence[InferenceEvent]) -> None:
        arm = self._arm(variant, version)
        arm.requests += len(events)
        m = arm.moments
        m["error_rate"].add_binary(len(events), sum(1 for e in events if e.status == "error"))
        lat = [x for e in events if (x := e.latency_ms) is not None and x > 0]
        if lat:
            values = np.asarray(lat)
            m["latency"].add(np.log(values))
            if variant == self.baseline and self.tail_threshold is None:
                self._warm_up(arm, lat)
            elif self.tail_threshold is not None:
                m["latency_tail"].add_binary(len(lat), int(np.count_nonzero(values > self.tail_threshold)))
        scores = [x for e in events if (x := e.score) is not None]
        if scores:
            m["prediction_shift"].add(np.asarray(scores))

    def add_graded(self, variant: str, version: str, wrong: Sequence[bool]) -> None:
        arm = self.arms.get(variant)
        if arm is not None and arm.version == version:
            arm.moments["accuracy"].add_binary(len(wrong), len(wrong) - sum(wrong))

    def _arm(self, variant: str, version: str) -> _Arm:
        arm = self.arms.get(variant)
        if arm is None or arm.version != version:
            # A new version: its numbers start afresh, and so does every comparison it is in.
            arm = self.arms[variant] = _Arm(version)
            if variant == self.baseline:
                self.tail_threshold = None
                self.comparisons.clear()
            else:
                self.comparisons.pop(variant, None)
        return arm

    def _warm_up(self, arm: _Arm, latencies: list[float]) -> None:
        arm.warmup.extend(latencies)
        n = self.settings.min_requests
        if len(arm.warmup) >= n:
            ordered = sorted(arm.warmup[:n])
            self.tail_threshold = ordered[min(n - 1, math.ceil(self.settings.tail_quantile * n) - 1)]
            arm.warmup = []

    # -- verdicts ---------------------------------------------------------------------------

    def evaluate(self) -> list[Comparison]:
        """Update every candidate's verdict; return the comparisons whose verdict changed."""
        if self.baseline is None:
            self.baseline = self._pick_baseline()
            if self.baseline is None:
                return []
        base = self.arms.get(self.baseline)
        if base is None:
            return []
        changed = []
        for variant, arm in self.arms.items():
            if variant == self.baseline:
                continue
            comp = self.comparisons.get(variant)
            if comp is None:
                comp = self.comparisons[variant] = Comparison(variant, arm.version, self.baseline, self._tests())
            before = (comp.verdict, comp.reset)
            self._judge(comp, base, arm)
            if comp.reset or (comp.verdict, comp.reset) != before:
                changed.append(comp)
        return changed

    def _pick_baseline(self) -> str | None:
        for name in BASELINE_NAMES:
            if name in self.arms:
                return name
        if len(self.arms) < 2:
            return None
        busiest = max(self.arms, key=lambda v: self.arms[v].requests)
        return busiest if self.arms[busiest].requests >= self.settings.min_requests else None

    def _tests(self) -> dict[str, list[SequentialDifference]]:
        """Per metric, the mSPRT of "no worse than the tolerance" (both sides for a shift)."""
        alpha, planned = self.settings.alpha, self.settings.planned_requests
        tests = {}
        for name in METRICS:
            tol = self._tolerance(name)
            sides = [WORSE[name]] if WORSE[name] else [1, -1]
            tests[name] = [SequentialDifference(alpha, side * tol, planned) for side in sides]
        return tests

    def _tolerance(self, name: str) -> float:
        s = self.settings
        return {
            "error_rate": s.error_rate_tolerance,
            "latency": math.log1p(s.latency_tolerance),
            "latency_tail": s.tail_tolerance,
            "accuracy": s.accuracy_tolerance,
            "prediction_shift": s.prediction_shift_tolerance,
        }[name]

    def _judge(self, comp: Comparison, base: _Arm, cand: _Arm) -> None:
        s = self.settings
        comp.requests = (base.requests, cand.requests)
        if min(comp.requests) < s.min_requests:
            comp.verdict, comp.score = "inconclusive", 50.0
            comp.reasons = [f"waiting for {s.min_requests} requests per arm"]
            return
        readings: dict[str, MetricReading] = {}
        p_values: dict[str, float] = {}
        for name in METRICS:
            a, b = base.moments[name], cand.moments[name]
            if a.n < 2 or b.n < 2:
                continue
            looks = [t.look(a.n, *a.mean_var(), b.n, *b.mean_var()) for t in comp.tests[name]]
            if any(lk is None for lk in looks):
                continue
            look = looks[0]
            assert look is not None
            tol = self._tolerance(name)
            worse = WORSE[name]
            # worse_side: the estimate itself lies past the tolerance on the worse side.
            if worse > 0:
                beyond, within, worse_side = look.lower > tol, look.upper <= tol, look.effect > tol
            elif worse < 0:
                beyond, within, worse_side = look.upper < -tol, look.lower >= -tol, look.effect < -tol
            else:
                beyond = look.lower > tol or look.upper < -tol
                within, worse_side = -tol <= look.lower and look.upper <= tol, abs(look.effect) > tol
            verdict: Verdict = "fail" if beyond else "pass" if within else "inconclusive"
            readings[name] = MetricReading(verdict, look, tol)
            # p of "exactly at the tolerance" (two sides: Bonferroni); it speaks of "worse than the
            # tolerance" only when the estimate is past it.
            p = min(1.0, len(looks) * min(lk.p_value for lk in looks if lk is not None))
            p_values[name] = p if worse_side else 1.0
        critical = [n for n in readings if n in s.critical]
        others = [n for n in readings if n not in s.critical]
        failing: list[str] = [n for n in critical if readings[n].verdict == "fail"]
        rejected = benjamini_hochberg([p_values[n] for n in others], s.alpha) if others else []
        failing += [n for n, r in zip(others, rejected, strict=True) if r and readings[n].verdict != "pass"]
        points = {"pass": 1.0, "inconclusive": 0.5, "fail": 0.0}
        comp.score = 100.0 * sum(points[r.verdict] for r in readings.values()) / len(readings) if readings else 50.0
        comp.metrics = readings
        if comp.verdict == "fail":
            return  # a sequential test stops at its first rejection: fail stands until a reset
        if failing:
            comp.verdict = "fail"
            comp.reasons = [_reason(n, readings[n]) for n in failing]
        elif readings and all(r.verdict == "pass" for r in readings.values()):
            comp.verdict, comp.reasons = "pass", []
        else:
            comp.verdict, comp.reasons = "inconclusive", []

    def timeline_entry(self, comp: Comparison, index: int) -> dict[str, Any]:
        entry = {
            "index": index,
            "model": self.model,
            "variant": comp.variant,
            "baseline": comp.baseline,
            "version": comp.version,
            "verdict": comp.verdict,
            "score": comp.score,
            "reasons": list(comp.reasons),
            "reset": comp.reset,
        }
        comp.reset = False
        return entry

    # -- checkpoints ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """All of this model's state, JSON-ready (non-finite floats as "inf", "-inf", "nan").

        Arms and comparisons are lists, in the order they were created: that order is the order
        of `evaluate()`'s changes and of the report, and a JSON object may not keep it.
        """
        return {
            "version": SNAPSHOT_VERSION,
            "model": self.model,
            "baseline": self.baseline,
            "tail_threshold": None if self.tail_threshold is None else _encode_float(self.tail_threshold),
            "arms": [arm.snapshot(variant) for variant, arm in self.arms.items()],
            "comparisons": [comp.snapshot() for comp in self.comparisons.values()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take the state of a `snapshot()` of this model (built with the same settings); all or nothing."""
        _check_version(state, "model canary")
        try:
            model = state["model"]
            if model != self.model:
                raise ValueError(f"snapshot of model {model!r} restored into model {self.model!r}")
            baseline = state["baseline"]
            threshold = state["tail_threshold"]
            arms = _unique((_Arm.from_snapshot(a) for a in state["arms"]), "arm")
            comparisons = _unique(
                ((c.variant, c) for c in map(Comparison.from_snapshot, state["comparisons"])), "comparison"
            )
            restored = (
                None if baseline is None else _str(baseline),
                None if threshold is None else _decode_float(threshold),
            )
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"malformed canary snapshot of model {self.model!r}: {e!r}") from e
        self.baseline, self.tail_threshold = restored
        self.arms, self.comparisons = arms, comparisons


def _reason(name: str, r: MetricReading) -> str:
    lk = r.look
    if name == "latency":  # on the log scale: report relative changes
        pct = [100 * math.expm1(x) for x in (lk.effect, lk.lower, lk.upper, r.tolerance)]
        return f"latency {pct[0]:+.1f}% (CI {pct[1]:+.1f}%..{pct[2]:+.1f}%) beyond +{pct[3]:.1f}%"
    return f"{name} {lk.effect:+.4f} (CI {lk.lower:+.4f}..{lk.upper:+.4f}) beyond ±{r.tolerance:.4f}"


class CanaryMonitor:
    """All models' canaries; the pipeline feeds it per key and per batch."""

    def __init__(self, settings: CanaryConfig) -> None:
        self.settings = settings
        self.models: dict[str, ModelCanary] = {}

    def model(self, name: str) -> ModelCanary:
        m = self.models.get(name)
        if m is None:
            m = self.models[name] = ModelCanary(name, self.settings)
        return m

    def report(self, model: str | None = None) -> dict[str, Any]:
        def one(m: ModelCanary) -> dict[str, Any]:
            return {
                "model": m.model,
                "baseline": m.baseline,
                "variants": {v: c.report() for v, c in m.comparisons.items()},
            }

        if model is not None:
            return one(self.models[model])
        return {"models": {name: one(m) for name, m in self.models.items()}}

    def snapshot(self, models: Collection[str] | None = None) -> dict[str, Any]:
        """Every model's canary state, or `models`' only, JSON-ready:
        `{"version": 1, "models": [ModelCanary.snapshot(), ...]}`."""
        chosen = [m for name, m in self.models.items() if models is None or name in models]
        return {"version": SNAPSHOT_VERSION, "models": [m.snapshot() for m in chosen]}

    def restore(self, state: dict[str, Any]) -> None:
        """Take the models of a `snapshot()` (taken under the same settings), replacing those of
        the same name; all or nothing."""
        _check_version(state, "canary")
        try:
            models: dict[str, ModelCanary] = {}
            for entry in state["models"]:
                m = ModelCanary(_str(entry["model"]), self.settings)
                if m.model in models:
                    raise ValueError(f"canary snapshot: model {m.model!r} appears twice")
                m.restore(entry)
                models[m.model] = m
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"malformed canary snapshot: {e!r}") from e
        self.models.update(models)

    def drop(self, models: Collection[str]) -> None:
        """Forget `models` (their partitions went to another replica)."""
        for name in models:
            self.models.pop(name, None)


# -- snapshot decoding: a wrong type is a ValueError, not a silent different run ---------------

_T = TypeVar("_T")


def _check_version(state: Any, what: str) -> None:
    if not isinstance(state, dict):
        raise ValueError(f"{what} snapshot must be a JSON object, got {type(state).__name__}")
    version = state.get("version")
    if type(version) is not int or version != SNAPSHOT_VERSION:
        raise ValueError(
            f"unsupported {what} snapshot version {version!r}: this build reads version {SNAPSHOT_VERSION}"
        )


def _int(value: Any) -> int:
    if type(value) is not int:
        raise ValueError(f"snapshot: expected an integer, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"snapshot: expected a string, got {value!r}")
    return value


def _verdict(value: Any) -> Verdict:
    if value in ("pass", "fail", "inconclusive"):
        return cast(Verdict, value)
    raise ValueError(f"snapshot: unknown verdict {value!r}")


def _known_names(per_metric: Any, what: str) -> None:
    if not isinstance(per_metric, dict) or set(per_metric) != set(METRICS):
        names = sorted(per_metric) if isinstance(per_metric, dict) else per_metric
        raise ValueError(f"snapshot: {what} must name exactly the metrics {METRICS}, got {names!r}")


def _unique(pairs: Iterable[tuple[str, _T]], what: str) -> dict[str, _T]:
    out: dict[str, _T] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"snapshot: {what} {name!r} appears twice")
        out[name] = value
    return out
