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

Looks: a model's comparisons are read after every `look_every_requests` of its requests, with
the moments as they stood at that request: verdicts depend on the stream, not on where polls cut
it. Verdict, once both arms have `min_requests` requests: `fail` when a critical metric's
confidence sequence lies beyond its tolerance on the worse side (at α), or when
Benjamini-Hochberg at q = α rejects "no worse than the tolerance" for a non-critical metric
that is worse; `pass` when every metric with data has its worse-side bound within tolerance;
`inconclusive` otherwise. A `fail` stands until the comparison restarts: a sequential test stops
at its first rejection. The score is Kayenta-like: 100 × the mean over metrics of 1 (pass),
0.5 (inconclusive) or 0 (fail). A new version of either arm restarts the comparison.

Storage: every arm of a partition's models has a row of moments (n, Σx, Σx² per metric) in one
array, which a batch updates at once.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, cast

import numpy as np
import numpy.typing as npt

from daemon.config import CanaryConfig
from daemon.export.families import Sink, labels
from daemon.ingest.batch import Batch, Key
from daemon.monitors.arrays import capacity, grown
from daemon.monitors.graded import PendingGrades
from daemon.monitors.names import OTHER
from detectors.quantiles import LogBuckets
from detectors.sequential import Look, SequentialDifference, benjamini_hochberg

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Verdict = Literal["pass", "fail", "inconclusive"]
VERDICT_VALUE: dict[str, int] = {"pass": 1, "inconclusive": 0, "fail": -1}
# Latency-like measures, each with its batch column (ms): a mean-of-logs test and a tail test.
LATENCY_LIKE = {"latency": "latency_ms", "ttft": "ttft_ms", "tpot": "tpot_ms"}
METRICS = (
    "error_rate",
    *(m for name in LATENCY_LIKE for m in (name, f"{name}_tail", f"{name}_tail_share")),
    "goodput",
    "accuracy",
    "prediction_shift",
)
ERROR, GOODPUT, ACCURACY, SHIFT = (METRICS.index(m) for m in ("error_rate", "goodput", "accuracy", "prediction_shift"))
LOG = {name: METRICS.index(name) for name in LATENCY_LIKE}
TAIL = {name: METRICS.index(f"{name}_tail") for name in LATENCY_LIKE}
SHARE = {name: METRICS.index(f"{name}_tail_share") for name in LATENCY_LIKE}
TAILS = {f"{name}_tail" for name in LATENCY_LIKE}
SHARES = {f"{name}_tail_share" for name in LATENCY_LIKE}
# What an LLM's answer length moves: reported, not judged, unless `llm_judge_e2e_latency`.
E2E = ("latency", "latency_tail", "latency_tail_share")
# Per-quantile effects reported for every latency-like measure, with their confidence sequences.
QUANTILES = (0.5, 0.9, 0.99)
BUCKETS = LogBuckets(relative_accuracy=0.02, min_value=1e-3, max_value=1e7)  # ms
# A line needs this many of the baseline's warm-up values.
MIN_LINE_VALUES = 10
# A tail test waits for this many requests past the line in each arm: before, its mean and
# variance rest on a handful of values, and the normal approximation of the mSPRT fails.
MIN_PAST_LINE = 10
# A key's version in its arm: the arm's current one, one it had before (left out), or a new one.
CURRENT, STALE, NEW = 0, 1, 2
BASELINE_NAMES = ("control", "baseline", "stable", "primary")
# Worse direction: +1 higher is worse, -1 lower is worse, 0 either way.
WORSE = {**{m: 1 for m in METRICS}, "goodput": -1, "accuracy": -1, "prediction_shift": 0}


@dataclass
class MetricReading:
    verdict: Verdict
    look: Look
    tolerance: float
    judged: bool = True  # False: reported only (an LLM's end-to-end latency)

    def report(self) -> dict[str, Any]:
        lk = self.look
        return {
            "verdict": self.verdict,
            "judged": self.judged,
            "effect": lk.effect,
            "lower": lk.lower,
            "upper": lk.upper,
            "p_value": lk.p_value,
            "tolerance": self.tolerance,
        }


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
    failing: list[str] = field(default_factory=list)  # every metric that has failed since the start

    def report(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "score": self.score,
            "version": self.version,
            "requests": {"baseline": self.requests[0], "candidate": self.requests[1]},
            "metrics": {name: m.report() for name, m in self.metrics.items()},
            "reasons": list(self.reasons),
        }


class Outcomes(NamedTuple):
    """What each event of a batch came to, beyond its columns: right (1), wrong (0) or not graded
    (NaN) by a label it carries, and whether it met its model's SLOs."""

    right: Floats
    good: Bools


class ArmMoments:
    """One arm's figures at a look: requests and n, Σx, Σx² per metric."""

    __slots__ = ("moments", "requests")

    def __init__(self, requests: int, moments: Floats) -> None:
        self.requests = requests
        self.moments = moments  # [metric, (n, s, ss)]

    def figures(self) -> list[tuple[int, float, float]]:
        """Per metric: n, mean and sample variance (mean and variance 0 where n is 0)."""
        out = []
        for n, s, ss in self.moments.tolist():
            mean = s / n if n else 0.0
            out.append((int(n), mean, max(ss / n - mean * mean, 0.0) * n / max(n - 1, 1) if n else 0.0))
        return out


class ModelCanary:
    """A model's baseline, tail threshold and the comparisons of its candidates with the baseline."""

    def __init__(self, model: str, settings: CanaryConfig) -> None:
        self.model = model
        self.settings = settings
        self.baseline: str | None = settings.baselines.get(model)
        # The baseline's tail lines per latency-like measure (NaN: too few values), once set.
        self.tail_lines: tuple[float, ...] | None = None
        # The baseline's (latency, TTFT, TPOT) per timed request until the lines are set.
        self.warmup: list[list[float]] = []
        self.comparisons: dict[str, Comparison] = {}
        self.requests = 0  # of every arm: looks come every look_every_requests of them
        self.late_labels = 0  # labels too late for accuracy (daemon/monitors/graded.py)

    def evaluate(self, arms: dict[str, tuple[str, ArmMoments]]) -> list[Comparison]:
        """Judge every candidate against the baseline (arms: variant -> (version, figures));
        return the comparisons whose verdict changed."""
        if self.baseline is None:
            self.baseline = self._pick_baseline(arms)
            if self.baseline is None:
                return []
        if self.baseline not in arms:
            return []
        base = arms[self.baseline][1]
        changed = []
        for variant, (version, cand) in arms.items():
            if variant == self.baseline:
                continue
            comp = self.comparisons.get(variant)
            if comp is None:
                comp = self.comparisons[variant] = Comparison(variant, version, self.baseline, self._tests())
            before = (comp.verdict, comp.reset)
            self._judge(comp, base, cand)
            if comp.reset or (comp.verdict, comp.reset) != before:
                changed.append(comp)
        return changed

    def _pick_baseline(self, arms: dict[str, tuple[str, ArmMoments]]) -> str | None:
        for name in BASELINE_NAMES:
            if name in arms:
                return name
        if len(arms) < 2:
            return None
        busiest = max(arms, key=lambda v: arms[v][1].requests)
        return busiest if arms[busiest][1].requests >= self.settings.min_requests else None

    def _tests(self) -> dict[str, list[SequentialDifference]]:
        """Per metric, the mSPRT of "no worse than the tolerance" (both sides for a shift)."""
        alpha, planned = self.settings.alpha, self.settings.planned_requests
        # A tail test sees only the requests past the line: its prior is planned for as many.
        past = max(MIN_PAST_LINE, round(planned * (1.0 - self.settings.tail_quantile)))
        tests = {}
        for name in METRICS:
            tol = self._tolerance(name)
            sides = [WORSE[name]] if WORSE[name] else [1, -1]
            n = past if name in TAILS else planned
            tests[name] = [SequentialDifference(alpha, side * tol, n) for side in sides]
        return tests

    def _tolerance(self, name: str) -> float:
        s = self.settings
        if name in LATENCY_LIKE:
            return math.log1p(s.latency_tolerance)
        if name in TAILS:  # the mean of ln(value / line) over the requests past the line
            return math.log1p(s.tail_tolerance)
        if name in SHARES:
            return s.tail_share_tolerance
        return {
            "error_rate": s.error_rate_tolerance,
            "goodput": s.goodput_tolerance,
            "accuracy": s.accuracy_tolerance,
            "prediction_shift": s.prediction_shift_tolerance,
        }[name]

    def _judge(self, comp: Comparison, base: ArmMoments, cand: ArmMoments) -> None:
        s = self.settings
        comp.requests = (base.requests, cand.requests)
        if min(comp.requests) < s.min_requests:
            comp.verdict, comp.score = "inconclusive", 50.0
            comp.reasons = [f"waiting for {s.min_requests} requests per arm"]
            return
        base_f, cand_f = _figures(base, cand)
        llm = any(base_f[LOG[name]][0] and cand_f[LOG[name]][0] for name in ("ttft", "tpot"))
        readings: dict[str, MetricReading] = {}
        p_values: dict[str, float] = {}
        for name, (na, mean_a, var_a), (nb, mean_b, var_b) in zip(METRICS, base_f, cand_f, strict=True):
            if na < 2 or nb < 2:
                continue
            looks = [t.look(na, mean_a, var_a, nb, mean_b, var_b) for t in comp.tests[name]]
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
            judged = not (llm and name in E2E and not s.llm_judge_e2e_latency)
            readings[name] = MetricReading(verdict, look, tol, judged)
            # p of "exactly at the tolerance" (two sides: Bonferroni); it speaks of "worse than the
            # tolerance" only when the estimate is past it.
            p = min(1.0, len(looks) * min(lk.p_value for lk in looks if lk is not None))
            p_values[name] = p if worse_side else 1.0
        judged_names = [n for n in readings if readings[n].judged]
        critical = [n for n in judged_names if n in s.critical]
        others = [n for n in judged_names if n not in s.critical]
        failing: list[str] = [n for n in critical if readings[n].verdict == "fail"]
        rejected = benjamini_hochberg([p_values[n] for n in others], s.alpha) if others else []
        failing += [n for n, r in zip(others, rejected, strict=True) if r and readings[n].verdict != "pass"]
        comp.metrics = readings
        if failing or comp.verdict == "fail":
            # A sequential test stops at its first rejection: fail stands until a reset. Its
            # reasons name every metric that has failed since, with the values of this look.
            comp.failing = list(dict.fromkeys(comp.failing + failing))
            comp.verdict, comp.score = "fail", 0.0
            comp.reasons = [self._reason(n, readings[n]) for n in comp.failing if n in readings]
            return
        points = {"pass": 1.0, "inconclusive": 0.5, "fail": 0.0}
        counted = [readings[n] for n in judged_names]
        comp.score = 100.0 * sum(points[r.verdict] for r in counted) / len(counted) if counted else 50.0
        # A tail whose line is set but with too few requests past it yet: no pass before it is read.
        lines = self.tail_lines or (math.nan,) * len(LATENCY_LIKE)
        waiting = [
            name for name, line in zip(LATENCY_LIKE, lines, strict=True)
            if not math.isnan(line) and base_f[LOG[name]][0] and cand_f[LOG[name]][0]
            and not {f"{name}_tail", f"{name}_tail_share"} <= set(readings)
            and not (llm and name == "latency" and not s.llm_judge_e2e_latency)
        ]  # fmt: skip
        if counted and not waiting and all(r.verdict == "pass" for r in counted):
            comp.verdict, comp.reasons = "pass", []
        else:
            comp.verdict, comp.reasons = "inconclusive", []

    def _reason(self, name: str, r: MetricReading) -> str:
        lk = r.look
        if name in LATENCY_LIKE:  # on the log scale: relative changes
            pct = [100 * math.expm1(x) for x in (lk.effect, lk.lower, lk.upper, r.tolerance)]
            return f"{name} {pct[0]:+.1f}% (CI {pct[1]:+.1f}%..{pct[2]:+.1f}%) beyond +{pct[3]:.1f}%"
        if name in TAILS or name in SHARES:
            measure = name.split("_tail", 1)[0]
            lines = self.tail_lines or ()
            line = lines[list(LATENCY_LIKE).index(measure)] if lines else math.nan
            where = f"past the baseline's p{100 * self.settings.tail_quantile:g} ({line:.4g} ms)"
            if name in SHARES:  # a share of the requests: in points
                pts = [100 * x for x in (lk.effect, lk.lower, lk.upper, r.tolerance)]
                return f"{name} {pts[0]:+.2f} points {where} (CI {pts[1]:+.2f}..{pts[2]:+.2f}) beyond +{pts[3]:.2f}"
            # The mean rise of ln(value / line) of the requests past the line: a relative slowdown.
            pct = [100 * math.expm1(x) for x in (lk.effect, lk.lower, lk.upper, r.tolerance)]
            return f"{name} {pct[0]:+.1f}% {where} (CI {pct[1]:+.1f}%..{pct[2]:+.1f}%) beyond +{pct[3]:.1f}%"
        return f"{name} {lk.effect:+.4f} (CI {lk.lower:+.4f}..{lk.upper:+.4f}) beyond ±{r.tolerance:.4f}"

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

    def report(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "baseline": self.baseline,
            "late_labels": self.late_labels,
            "variants": {v: c.report() for v, c in self.comparisons.items()},
        }


class Canary:
    """The canaries of a partition's models: arm moments in arrays, verdicts per model."""

    def __init__(self, settings: CanaryConfig, keys: list[Key]) -> None:
        self.settings = settings
        self.keys = keys
        self.look_every = settings.look_every_requests
        self.models: dict[str, ModelCanary] = {}
        self._model_ids: dict[str, int] = {}
        self._model_names: list[str] = []
        # Per model: its tail lines per latency-like measure (NaN: not set) and whether its state
        # can change within a batch (no baseline yet, or lines still warming up): such models go
        # event by event.
        self.threshold = np.zeros((0, len(LATENCY_LIKE)), dtype=np.float64)
        self.unsettled = np.zeros(0, dtype=np.bool_)
        self.arm_count = np.zeros(0, dtype=np.int64)
        self.baseline_arm = np.zeros(0, dtype=np.int64)  # -1: no baseline yet
        self.warmup_len = np.zeros(0, dtype=np.int64)
        # Per model its clock: the newest event time of its requests (-inf: none timed yet). Labels
        # count towards accuracy by it, held until then in `pending` (daemon/monitors/graded.py).
        self.clock = np.zeros(0, dtype=np.float64)
        self.pending = PendingGrades(settings.label_wait_seconds)
        # Arms: (model, variant) -> id; per arm its model id, variant and current version.
        self._arm_ids: dict[tuple[str, str], int] = {}
        self.arm_model = np.zeros(0, dtype=np.int64)
        self.arm_variant: list[str] = []
        self.arm_version: list[str] = []
        self.arm_versions: list[set[str]] = []  # every version the arm has had
        self.arm_rows: list[list[int]] = []
        self.requests = np.zeros(0, dtype=np.int64)
        self.moments = np.zeros((0, len(METRICS), 3), dtype=np.float64)
        # Per arm and latency-like measure: counts of values per log bucket, for quantile bands.
        self.hist = np.zeros((0, len(LATENCY_LIKE), BUCKETS.n_buckets), dtype=np.int64)
        # Per key row: its arm (-1: none, the overflow key), and where its version stands there.
        self.row_arm = np.zeros(0, dtype=np.int64)
        self.row_state = np.zeros(0, dtype=np.int8)
        self.rows = 0

    # -- rows, models, arms -------------------------------------------------------------------

    def add_rows(self, n: int) -> None:
        start = self.rows
        self.rows += n
        if self.rows > len(self.row_arm):
            cap = capacity(self.rows, len(self.row_arm))
            self.row_arm = grown(self.row_arm, cap, -1)
            self.row_state = grown(self.row_state, cap, CURRENT)
        for row in range(start, self.rows):
            model, version, variant = self.keys[row]
            if OTHER in (model, version, variant):
                continue
            self.model(model)
            arm = self._arm_ids.get((model, variant))
            if arm is None:
                arm = self._new_arm(model, variant, version)
            self.row_arm[row] = arm
            self.arm_rows[arm].append(row)
            self.row_state[row] = self._state(arm, version)

    def _state(self, arm: int, version: str) -> int:
        if version == self.arm_version[arm]:
            return CURRENT
        return STALE if version in self.arm_versions[arm] else NEW

    def model(self, name: str) -> ModelCanary:
        m = self.models.get(name)
        if m is None:
            m = self.models[name] = ModelCanary(name, self.settings)
            i = self._model_ids[name] = len(self._model_names)
            self._model_names.append(name)
            if i >= len(self.threshold):
                cap = capacity(i + 1, len(self.threshold))
                self.threshold = grown(self.threshold, cap, math.nan)
                self.unsettled = grown(self.unsettled, cap, True)
                self.arm_count = grown(self.arm_count, cap, 0)
                self.baseline_arm = grown(self.baseline_arm, cap, -1)
                self.warmup_len = grown(self.warmup_len, cap, 0)
                self.clock = grown(self.clock, cap, -math.inf)
            self._sync(m)
        return m

    def _sync(self, m: ModelCanary) -> None:
        """The model's arrays after its baseline or tail threshold changed."""
        i = self._model_ids[m.model]
        self.threshold[i] = math.nan if m.tail_lines is None else m.tail_lines
        # Without a baseline a look may pick the busiest arm (two or more); with one, the tail
        # lines may still be warming up.
        self.unsettled[i] = self.arm_count[i] >= 2 if m.baseline is None else m.tail_lines is None
        self.baseline_arm[i] = -1 if m.baseline is None else self._arm_ids.get((m.model, m.baseline), -1)
        self.warmup_len[i] = len(m.warmup)

    def _new_arm(self, model: str, variant: str, version: str) -> int:
        arm = self._arm_ids[(model, variant)] = len(self.arm_variant)
        if arm >= len(self.requests):
            cap = capacity(arm + 1, len(self.requests))
            self.arm_model = grown(self.arm_model, cap, -1)
            self.requests = grown(self.requests, cap)
            self.moments = grown(self.moments, cap)
            self.hist = grown(self.hist, cap)
        self.arm_model[arm] = self._model_ids[model]
        self.arm_variant.append(variant)
        self.arm_version.append(version)
        self.arm_versions.append({version})
        self.arm_rows.append([])
        self.arm_count[self._model_ids[model]] += 1
        m = self.models[model]
        if m.baseline is None:
            # A variant named like a baseline is one from the start; the busiest arm only at a look.
            m.baseline = next((v for v in BASELINE_NAMES if (model, v) in self._arm_ids), None)
        self._sync(m)
        return arm

    def _switch(self, row: int) -> None:
        """A new version of the row's arm: its numbers start afresh, and so does every comparison
        it is in. The versions it had before are stale: their late requests are left out (two
        versions serving one variant during a rollout must not restart the comparison at every
        request)."""
        model, version, variant = self.keys[row]
        arm = int(self.row_arm[row])
        self.arm_version[arm] = version
        self.arm_versions[arm].add(version)
        self.requests[arm] = 0
        self.moments[arm] = 0.0
        self.hist[arm] = 0
        self.pending.drop(arm)
        m = self.models[model]
        if variant == m.baseline:
            m.tail_lines, m.warmup = None, []
            m.comparisons.clear()
            self._sync(m)
        else:
            m.comparisons.pop(variant, None)
        for r in self.arm_rows[arm]:
            self.row_state[r] = self._state(arm, self.keys[r][1])

    def _arms_of(self, model: int) -> list[int]:
        return np.flatnonzero(self.arm_model[: len(self.arm_variant)] == model).tolist()

    # -- batches ------------------------------------------------------------------------------

    def update(
        self, rows: Ints, batch: Batch, accuracy: Floats | None = None, good: Bools | None = None
    ) -> list[dict[str, Any]]:
        """Fold in a batch; return the timeline entries of the looks it held (changes of verdict).
        `accuracy[i]` is 1 (right) or 0 (wrong) for an event graded by the label it carries, NaN
        otherwise: it counts at its request, like the others. `good[i]`: the request met its
        model's SLOs (`Slo.update`); without it, a request is good unless it is an error."""
        outcomes = Outcomes(
            np.full(len(rows), np.nan) if accuracy is None else accuracy, ~batch.error if good is None else good
        )
        arms = self.row_arm[rows]
        events = np.flatnonzero((arms >= 0) & (self.row_state[rows] != STALE))
        if not len(events):
            return []
        ev_arms = arms[events]
        models = self.arm_model[ev_arms]
        slow = set(models[self.row_state[rows[events]] != CURRENT].tolist())  # a version to switch to
        n_models = len(self._model_names)
        warming = np.zeros(0, dtype=np.int64)
        if self.unsettled[models].any():
            # A model whose state may change within this batch goes event by event; one that cannot
            # (its tail threshold will not complete here, its busiest arm cannot be chosen yet)
            # stays on the path for all, which only collects its warm-up latencies.
            lat = batch.latency_ms[events]
            base = self.baseline_arm[models]
            timed_base = (ev_arms == base) & (lat > 0)
            need = self.settings.min_requests - self.warmup_len[:n_models]
            got = np.bincount(models[timed_base], minlength=n_models)
            per_arm = self.requests[: len(self.arm_variant)] + np.bincount(ev_arms, minlength=len(self.arm_variant))
            busiest = np.zeros(n_models, dtype=np.int64)
            np.maximum.at(busiest, self.arm_model[: len(self.arm_variant)], per_arm)
            warming_model = (self.baseline_arm[:n_models] >= 0) & np.isnan(self.threshold[:n_models, 0])
            choosing = (self.baseline_arm[:n_models] < 0) & (self.arm_count[:n_models] >= 2)
            present = np.zeros(n_models, dtype=np.bool_)
            present[models] = True
            slow |= set(np.flatnonzero(present & warming_model & (got >= need)).tolist())
            slow |= set(np.flatnonzero(present & choosing & (busiest >= self.settings.min_requests)).tolist())
            warming = np.flatnonzero(warming_model & (got > 0) & (got < need))
            for model in warming.tolist():
                m = self.models[self._model_names[model]]
                m.warmup.extend(_measures(batch, events[timed_base & (models == model)]).tolist())
                self.warmup_len[model] = len(m.warmup)
        entries: list[dict[str, Any]] = []
        if slow:
            fast = ~np.isin(models, list(slow))
            entries += self._segment(rows, events[fast], batch, outcomes)
            for model in sorted(slow):
                entries += self._slow(rows, events[models == model], batch, outcomes)
        else:
            entries += self._segment(rows, events, batch, outcomes)
        for arm in self.pending.arms():  # graded predictions whose time has come, for good
            graded, right = self.pending.settle(arm, float(self.clock[self.arm_model[arm]]))
            self.moments[arm, ACCURACY] += (graded, right, right)
        return entries

    def _slow(self, rows: Ints, events: Ints, batch: Batch, outcomes: Outcomes) -> list[dict[str, Any]]:
        """One model's events in segments within which nothing but the moments changes: a new
        version, the tail threshold set, a baseline chosen at a look."""
        entries: list[dict[str, Any]] = []
        m = self.models[self.keys[int(rows[events[0]])][0]]
        while len(events):
            state = self.row_state[rows[events]]
            if state[0] == NEW:
                self._switch(int(rows[events[0]]))
                continue
            if (state == STALE).any():  # a switch made some versions stale
                events = events[state != STALE]
                continue
            current = state == CURRENT
            end = int(np.argmin(current)) if not current.all() else len(events)
            seg = events[:end]
            threshold = None
            if m.baseline is not None and m.tail_lines is None:
                seg, threshold = self._warm_up(m, rows, seg, batch)
            elif m.baseline is None:
                looks = self._look_positions(self._model_ids[m.model], len(seg))
                if len(looks):
                    seg = seg[: looks[0] + 1]
            entries += self._segment(rows, seg, batch, outcomes)
            if threshold is not None:  # the requests after the one that completed it count against it
                m.tail_lines, m.warmup = threshold, []
                self._sync(m)
            events = events[len(seg) :]
        return entries

    def _warm_up(self, m: ModelCanary, rows: Ints, seg: Ints, batch: Batch) -> tuple[Ints, tuple[float, ...] | None]:
        """Collect the baseline's timed requests in `seg` for the tail lines; when they complete
        them, cut the segment after the event that did and return the lines (the requests after
        it count against them)."""
        arm = self._arm_ids.get((m.model, m.baseline or ""))
        lat = batch.latency_ms[seg]
        mine = (self.row_arm[rows[seg]] == arm) & (lat > 0)
        need = self.settings.min_requests - len(m.warmup)
        where = np.flatnonzero(mine)
        if len(where) < need:
            m.warmup.extend(_measures(batch, seg[where]).tolist())
            self.warmup_len[self._model_ids[m.model]] = len(m.warmup)
            return seg, None
        cut = int(where[need - 1]) + 1
        m.warmup.extend(_measures(batch, seg[where[:need]]).tolist())
        q = self.settings.tail_quantile
        lines = []
        for column in np.asarray(m.warmup[: self.settings.min_requests]).T:
            ordered = np.sort(column[column > 0])  # NaN compares False
            n = len(ordered)
            lines.append(float(ordered[min(n - 1, math.ceil(q * n) - 1)]) if n >= MIN_LINE_VALUES else math.nan)
        return seg[:cut], tuple(lines)

    def _look_positions(self, model: int, n: int) -> Ints:
        """Positions among the next n requests of `model` at which a look falls."""
        done = self.models[self._model_names[model]].requests
        first = (-done - 1) % self.look_every  # position of the next multiple of look_every
        return np.arange(first, n, self.look_every)

    def _segment(self, rows: Ints, events: Ints, batch: Batch, outcomes: Outcomes) -> list[dict[str, Any]]:
        """Events whose arms, versions, baselines and tail thresholds do not change: their moments
        added at once, looks read at the requests they fall on."""
        if not len(events):
            return []
        arms = self.row_arm[rows[events]]
        models = self.arm_model[arms]
        x = np.zeros((len(events), len(METRICS), 3))
        x[:, ERROR, :] = _moments(np.ones(len(events), dtype=np.bool_), batch.error[events].astype(np.float64))
        lines = self.threshold[models]
        for i, (name, column) in enumerate(LATENCY_LIKE.items()):
            v = getattr(batch, column)[events]
            timed = v > 0  # NaN compares False
            ln = np.log(np.where(timed, v, 1.0))
            x[:, LOG[name], :] = _moments(timed, ln)
            # The requests past the baseline's line: how far, as ln(value / line).
            excess = ln - np.log(np.where(np.isnan(lines[:, i]), np.inf, lines[:, i]))
            x[:, TAIL[name], :] = _moments(timed & (excess > 0), excess)
            x[:, SHARE[name], :] = _moments(timed & ~np.isnan(lines[:, i]), (excess > 0).astype(np.float64))
            flat = (arms[timed] * len(LATENCY_LIKE) + i) * BUCKETS.n_buckets + BUCKETS.index(v[timed])
            np.add.at(self.hist.reshape(-1), flat, 1)
        x[:, SHIFT, :] = _moments(batch.score_given[events], np.nan_to_num(batch.score[events]))
        x[:, GOODPUT, :] = _moments(np.ones(len(events), dtype=np.bool_), outcomes.good[events].astype(np.float64))
        right = outcomes.right[events]
        x[:, ACCURACY, :] = _moments(~np.isnan(right), np.nan_to_num(right))
        entries = self._looks(events, arms, models, x, batch)
        np.fmax.at(self.clock, models, batch.time[events])
        np.add.at(self.moments, arms, x)
        np.add.at(self.requests, arms, 1)
        for model, n in zip(*np.unique(models, return_counts=True), strict=True):
            self.models[self._model_names[model]].requests += int(n)
        return entries

    def _looks(self, events: Ints, arms: Ints, models: Ints, x: Floats, batch: Batch) -> list[dict[str, Any]]:
        """Read the comparisons of each model at every look_every-th of its requests here."""
        order = np.argsort(models, kind="stable")
        sorted_models = models[order]
        starts = np.flatnonzero(np.r_[True, sorted_models[1:] != sorted_models[:-1]])
        lengths = np.diff(np.r_[starts, len(order)])
        looks: list[tuple[int, int, float]] = []  # (event position in `events`, model, its clock)
        for s, n in zip(starts.tolist(), lengths.tolist(), strict=True):
            model = int(sorted_models[s])
            if self.arm_count[model] < 2:
                continue  # one arm: nothing to compare, and its baseline needs no look
            at = self._look_positions(model, n)
            if len(at):
                times = batch.time[events[order[s : s + n]]]
                clocks = np.fmax.accumulate(np.r_[self.clock[model], times])[1:][at]
                looks += zip(order[s + at].tolist(), [model] * len(at), clocks.tolist(), strict=True)
        if not looks:
            return []
        looks.sort()
        # Each arm's moments as of every one of its events in this segment (inclusive).
        by_arm = np.argsort(arms, kind="stable")
        cum = np.cumsum(x[by_arm], axis=0)
        arm_sorted = arms[by_arm]
        arm_starts = np.flatnonzero(np.r_[True, arm_sorted[1:] != arm_sorted[:-1]])
        first_of = dict(zip(arm_sorted[arm_starts].tolist(), arm_starts.tolist(), strict=True))
        ends = np.r_[arm_starts[1:], len(by_arm)]
        end_of = dict(zip(arm_sorted[arm_starts].tolist(), ends.tolist(), strict=True))
        entries = []
        for pos, model, clock in looks:
            m = self.models[self._model_names[model]]
            figures: dict[str, tuple[str, ArmMoments]] = {}
            for arm in self._arms_of(model):
                moments, requests = self.moments[arm].copy(), int(self.requests[arm])
                graded, right = self.pending.due(arm, clock)
                moments[ACCURACY] += (graded, right, right)
                a = first_of.get(arm)
                if a is not None:
                    # This arm's events up to the look: positions in `by_arm` order are ascending.
                    k = a + int(np.searchsorted(by_arm[a : end_of[arm]], pos, side="right"))
                    if k > a:
                        moments += cum[k - 1] - (cum[a - 1] if a else 0.0)
                        requests += k - a
                figures[self.arm_variant[arm]] = (self.arm_version[arm], ArmMoments(requests, moments))
            index = int(batch.index[events[pos]])
            entries += [m.timeline_entry(c, index) for c in m.evaluate(figures)]
            self._sync(m)
        return entries

    def add_graded(
        self, row: int, wrong: Sequence[bool], times: Sequence[float | None], label_times: Sequence[float | None]
    ) -> None:
        """Labelled predictions of a key (wrong or not, the predictions' and the labels' times):
        right ones count towards its arm's accuracy, by its model's clock (`PendingGrades`);
        predictions without a time at once."""
        arm = int(self.row_arm[row])
        if arm < 0 or self.row_state[row] != CURRENT:
            return
        # Predictions without a time (None, or NaN: NaN != NaN) count at once.
        timed = [(t, at, w) for w, t, at in zip(wrong, times, label_times, strict=True) if t is not None and t == t]
        if len(timed) < len(wrong):
            untimed = [w for w, t in zip(wrong, times, strict=True) if t is None or t != t]
            right = float(len(untimed) - sum(untimed))
            self.moments[arm, ACCURACY] += (len(untimed), right, right)
        if timed:
            model = int(self.arm_model[arm])
            clock = float(self.clock[model])
            self.models[self._model_names[model]].late_labels += self.pending.add(arm, clock, timed)

    # -- reading ------------------------------------------------------------------------------

    def report(self, model: str | None = None) -> dict[str, Any]:
        if model is None:
            return {"models": {name: self.report(name) for name in self.models}}
        out = self.models[model].report()
        for variant, comp in self.models[model].comparisons.items():
            out["variants"][variant]["quantiles"] = self.quantiles(model, comp)
        return out

    def quantiles(self, model: str, comp: Comparison) -> dict[str, dict[str, dict[str, float | None]]]:
        """Per latency-like measure both arms log, the candidate's p50, p90 and p99 relative to the
        baseline's (candidate / baseline − 1), with a band valid at every look: each arm's quantile
        confidence sequence at α/2, the band their worst ratios (None: unbounded)."""
        base, cand = self._arm_ids[(model, comp.baseline)], self._arm_ids[(model, comp.variant)]
        alpha = self.settings.alpha / 2
        out: dict[str, dict[str, dict[str, float | None]]] = {}
        for i, name in enumerate(LATENCY_LIKE):
            hb, hc = self.hist[base, i], self.hist[cand, i]
            if not (hb.any() and hc.any()):
                continue
            out[name] = {}
            for q in QUANTILES:
                b, b_lo, b_hi = BUCKETS.band(hb, q, alpha)
                c, c_lo, c_hi = BUCKETS.band(hc, q, alpha)
                out[name][f"p{100 * q:g}"] = {
                    "baseline_ms": b,
                    "candidate_ms": c,
                    "effect": c / b - 1.0,
                    "lower": c_lo / b_hi - 1.0 if math.isfinite(b_hi) else -1.0,
                    "upper": c_hi / b_lo - 1.0 if b_lo > 0 and math.isfinite(c_hi) else None,
                }
        return out

    def snapshot(self) -> dict[str, Any]:
        """The models' state and the arms' moments (a partition's checkpoint part)."""
        n = len(self.arm_variant)
        return {
            "models": [_model_state(m) for m in self.models.values()],
            "arms": [
                [self._model_names[int(self.arm_model[a])], self.arm_variant[a], self.arm_version[a]] for a in range(n)
            ],
            "requests": self.requests[:n].copy(),
            "metrics": list(METRICS),  # the moments' columns
            "moments": self.moments[:n].copy(),
            # The quantile histograms, sparse: flat positions in (arm, measure, bucket) and counts.
            "hist": [np.flatnonzero(self.hist[:n]), self.hist[:n].ravel()[np.flatnonzero(self.hist[:n])]],
            # The models' clocks (in the order of "models") and the graded predictions held by them.
            "clocks": self.clock[: len(self.models)].copy(),
            "pending": self.pending.snapshot(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take a snapshot into this empty canary (rows are added after it, by the partition)."""
        # Before the LLM measures (issue 16) the columns were these, and latency_tail was the
        # share of requests over the line, now latency_tail_share.
        renamed = {} if "metrics" in state else {"latency_tail": "latency_tail_share"}
        columns = [_metric(renamed.get(name, name)) for name in state.get("metrics", LEGACY_METRICS)]
        for ms in state["models"]:
            m = self.model(_str(ms["model"]))
            _restore_model(m, ms, renamed)
            self._sync(m)
        if not len(state["arms"]) == len(state["requests"]) == len(state["moments"]):
            raise ValueError("canary snapshot: its arms and their figures differ in number")
        moments = np.asarray(state["moments"], dtype=np.float64)
        if moments.shape[1:] != (len(columns), 3):
            raise ValueError(f"canary snapshot: moments of shape {moments.shape} for {len(columns)} metrics")
        where = [METRICS.index(name) for name in columns]
        seen: set[tuple[str, str]] = set()
        for a, (model, variant, version) in enumerate(state["arms"]):
            if (model, variant) in seen:
                raise ValueError(f"canary snapshot: arm {variant!r} of model {model!r} appears twice")
            seen.add((model, variant))
            self.model(model)
            arm = self._new_arm(model, variant, version)
            self.requests[arm] = state["requests"][a]
            self.moments[arm, where] = moments[a]
        if "hist" in state:
            n = len(state["arms"])
            index, counts = (np.asarray(x, dtype=np.int64) for x in state["hist"])
            if len(index) != len(counts) or (len(index) and not 0 <= index.min() <= index.max() < self.hist[:n].size):
                raise ValueError("canary snapshot: quantile histograms out of range")
            self.hist[:n].reshape(-1)[index] = counts
        if "clocks" in state:  # before issue 16's part 4 labels counted at their arrival
            clocks = np.asarray(state["clocks"], dtype=np.float64)
            if len(clocks) != len(state["models"]):
                raise ValueError("canary snapshot: its models and their clocks differ in number")
            for ms, clock in zip(state["models"], clocks.tolist(), strict=True):
                self.clock[self._model_ids[ms["model"]]] = clock
            self.pending.restore(state["pending"], len(state["arms"]))


Figures = list[tuple[int, float, float]]


def _figures(base: ArmMoments, cand: ArmMoments) -> tuple[Figures, Figures]:
    """Both arms' figures for the tests. A tail test (how far past the line) waits for
    `MIN_PAST_LINE` requests past the line in each arm, a share test for twice as many in both
    together: before, their means and variances rest on a handful of values and the normal
    approximation of the mSPRT fails. Their variances are pooled over the arms, which a few
    large values in one arm would otherwise make unstable."""
    base_f, cand_f = base.figures(), cand.figures()
    for name in LATENCY_LIKE:
        tail, share = TAIL[name], SHARE[name]
        # Requests past the line: a tail's n (the fewer of the arms'), a share's sum (their mean).
        past = {
            tail: min(base.moments[tail, 0], cand.moments[tail, 0]),
            share: (base.moments[share, 1] + cand.moments[share, 1]) / 2,
        }
        for i, enough in past.items():
            (na, sa, ssa), (nb, sb, ssb) = base.moments[i].tolist(), cand.moments[i].tolist()
            if enough < MIN_PAST_LINE:
                base_f[i] = cand_f[i] = (0, 0.0, 0.0)
                continue
            n, mean = na + nb, (sa + sb) / (na + nb)
            pooled = max((ssa + ssb) / n - mean * mean, 0.0) * n / (n - 1)
            base_f[i], cand_f[i] = (int(na), sa / na, pooled), (int(nb), sb / nb, pooled)
    return base_f, cand_f


def _measures(batch: Batch, events: Ints) -> Floats:
    """Per event its latency-like measures (ms, NaN where not logged), one column each."""
    return np.stack([getattr(batch, column)[events] for column in LATENCY_LIKE.values()], axis=1)


def _moments(present: npt.NDArray[np.bool_], x: Floats) -> Floats:
    """Per event (n, x, x²), zero where not present."""
    p = present.astype(np.float64)
    xp = np.where(present, x, 0.0)
    return np.stack([p, xp, xp * xp], axis=1)


# -- snapshots: a wrong type is a ValueError, not a silent different run ----------------------


def _model_state(m: ModelCanary) -> dict[str, Any]:
    return {
        "model": m.model,
        "baseline": m.baseline,
        "tail_lines": None if m.tail_lines is None else list(m.tail_lines),
        "warmup": np.asarray(m.warmup, dtype=np.float64).reshape(-1, len(LATENCY_LIKE)),
        "requests": m.requests,
        "late_labels": m.late_labels,
        "comparisons": [
            {
                "variant": c.variant,
                "model_version": c.version,
                "baseline": c.baseline,
                "tests": {name: [t.snapshot() for t in c.tests[name]] for name in METRICS},
                "verdict": c.verdict,
                "score": c.score,
                "metrics": [
                    [name, r.verdict, [r.look.n_a, r.look.n_b, r.look.effect, r.look.lower, r.look.upper,
                                       r.look.p_value], r.tolerance, r.judged]
                    for name, r in c.metrics.items()
                ],
                "reasons": list(c.reasons),
                "failing": list(c.failing),
                "requests": list(c.requests),
                "reset": c.reset,
            }
            for c in m.comparisons.values()
        ],
    }  # fmt: skip


def _restore_model(m: ModelCanary, state: dict[str, Any], renamed: dict[str, str]) -> None:
    """`renamed`: metrics of an older snapshot under their new names. A snapshot from before the
    LLM measures has one latency tail line, and its warm-up has latencies only."""
    try:
        baseline = state["baseline"]
        m.baseline = None if baseline is None else _str(baseline)
        if "tail_lines" in state:
            lines = state["tail_lines"]
            m.tail_lines = None if lines is None else tuple(float(x) for x in lines)
            warmup = np.asarray(state["warmup"], dtype=np.float64).reshape(-1, len(LATENCY_LIKE))
        else:
            threshold = state["tail_threshold"]
            m.tail_lines = None if threshold is None else (float(threshold), math.nan, math.nan)
            warmup = np.full((len(state["warmup"]), len(LATENCY_LIKE)), math.nan)
            warmup[:, 0] = [float(x) for x in state["warmup"]]
        if m.tail_lines is not None and len(m.tail_lines) != len(LATENCY_LIKE):
            raise ValueError(f"canary snapshot: {len(m.tail_lines)} tail lines for {len(LATENCY_LIKE)} measures")
        m.warmup = warmup.tolist()
        m.requests = _int(state["requests"])
        m.late_labels = _int(state.get("late_labels", 0))
        fresh = m._tests()
        comparisons: dict[str, Comparison] = {}
        for c in state["comparisons"]:
            tests = c["tests"]
            if not isinstance(tests, dict) or not set(tests) <= set(METRICS):
                raise ValueError(f"canary snapshot: tests must name metrics among {METRICS}")
            variant = _str(c["variant"])
            if variant in comparisons:
                raise ValueError(f"canary snapshot: comparison {variant!r} appears twice")
            metrics = {
                _metric(renamed.get(r[0], r[0])): MetricReading(
                    _verdict(r[1]),
                    Look(int(r[2][0]), int(r[2][1]), *map(float, r[2][2:])),
                    float(r[3]),
                    bool(r[4]) if len(r) > 4 else True,
                )
                for r in c["metrics"]
            }
            tests = {renamed.get(k, k): v for k, v in tests.items()}
            reasons = [_str(r) for r in c["reasons"]]
            comparisons[variant] = Comparison(
                variant,
                _str(c["model_version"]),
                _str(c["baseline"]),
                {
                    name: [SequentialDifference.from_snapshot(t) for t in tests[name]] if name in tests else fresh[name]
                    for name in METRICS
                },
                _verdict(c["verdict"]),
                float(c["score"]),
                metrics,
                reasons,
                (_int(c["requests"][0]), _int(c["requests"][1])),
                bool(c["reset"]),
                # Older snapshots: the failing metrics are the reasons' first words.
                [_metric(x) for x in c["failing"]]
                if "failing" in c
                else [renamed.get(r.split(" ", 1)[0], r.split(" ", 1)[0]) for r in reasons],
            )
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"malformed canary snapshot of model {m.model!r}: {e!r}") from e
    m.comparisons = comparisons


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"snapshot: expected an integer, got {value!r}")
    return int(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"snapshot: expected a string, got {value!r}")
    return value


# The moments' columns of a snapshot without a "metrics" list (before issue 16).
LEGACY_METRICS = ("error_rate", "latency", "latency_tail", "accuracy", "prediction_shift")


def _metric(value: Any) -> str:
    if value not in METRICS:
        raise ValueError(f"snapshot: unknown metric {value!r}")
    return cast(str, value)


def _verdict(value: Any) -> Verdict:
    if value in ("pass", "fail", "inconclusive"):
        return cast(Verdict, value)
    raise ValueError(f"snapshot: unknown verdict {value!r}")


# -- the exposition: a copy under the lock, samples outside it ---------------------------------

# (model, variant, baseline, verdict, score, requests, ((metric, verdict, p, effect, lower, upper), ...),
#  ((metric, quantile, effect, lower, upper), ...))
CanaryCopy = list[
    tuple[
        str, str, str, str, float, tuple[int, int],
        tuple[tuple[str, str, float, float, float, float], ...],
        tuple[tuple[str, str, float, float, float], ...],
    ]
]  # fmt: skip


def copy(c: Canary, models: Collection[str]) -> CanaryCopy:
    """The comparisons of `models` (the ones this partition shows), copied under the lock."""
    return [
        (
            name, variant, comp.baseline, comp.verdict, comp.score, comp.requests,
            tuple(
                (metric, r.verdict, r.look.p_value, r.look.effect, r.look.lower, r.look.upper)
                for metric, r in comp.metrics.items()
            ),
            tuple(
                (metric, q[1:], cast(float, e["effect"]), cast(float, e["lower"]), _or_inf(e["upper"]))
                for metric, per in c.quantiles(name, comp).items()
                for q, e in per.items()
            ),
        )
        for name, m in c.models.items()
        if name in models
        for variant, comp in m.comparisons.items()
    ]  # fmt: skip


def _or_inf(x: float | None) -> float:
    return math.inf if x is None else x


def collect(c: CanaryCopy, out: Sink) -> None:
    if not c:
        return
    sets = [labels(model=model, variant=variant, baseline=baseline) for model, variant, baseline, *_ in c]
    out.samples("inferwatch_canary_verdict", sets, [VERDICT_VALUE[x[3]] for x in c])
    out.samples("inferwatch_canary_score", sets, [x[4] for x in c])
    out.samples(
        "inferwatch_canary_requests",
        [f'{s},arm="{arm}"' for s in sets for arm in ("baseline", "candidate")],
        [n for x in c for n in x[5]],
    )
    metric_sets = [f'{s},metric="{m[0]}"' for s, x in zip(sets, c, strict=True) for m in x[6]]
    readings = [m for x in c for m in x[6]]
    out.samples("inferwatch_canary_metric_verdict", metric_sets, [VERDICT_VALUE[m[1]] for m in readings])
    for i, family in enumerate(
        (
            "inferwatch_canary_metric_p_value",
            "inferwatch_canary_metric_effect",
            "inferwatch_canary_metric_effect_lower",
            "inferwatch_canary_metric_effect_upper",
        ),
        start=2,
    ):
        out.samples(family, metric_sets, [m[i] for m in readings])
    quantile_sets = [f'{s},metric="{q[0]}",percentile="p{q[1]}"' for s, x in zip(sets, c, strict=True) for q in x[7]]
    quantiles = [q for x in c for q in x[7]]
    for i, family in enumerate(
        (
            "inferwatch_canary_quantile_effect",
            "inferwatch_canary_quantile_effect_lower",
            "inferwatch_canary_quantile_effect_upper",
        ),
        start=2,
    ):
        out.samples(family, quantile_sets, [q[i] for q in quantiles])
