"""Always-valid two-arm inference (mSPRT) and Benjamini-Hochberg, for canary verdicts.

The mixture sequential probability ratio test of Johari, Pekelis & Walsh ("Always Valid
Inference", Operations Research 2022), in the normal approximation for a difference of means
or proportions, as GrowthBook and Eppo implement it. With s² the variance of the estimate Δ̂
(σ²_B/n_B + σ²_A/n_A; with n per arm and V = σ²_A + σ²_B this is V/n, the reference's form)
and a N(θ₀, τ²) mixing prior on the true difference:

    Λ = √(s² / (s² + τ²)) · exp( τ² (Δ̂ − θ₀)² / (2 s² (s² + τ²)) )

H₀: Δ = θ₀ is rejected at the first look with Λ ≥ 1/α; p = min over looks of 1/Λ is a p-value
that stays valid however often it is read, and

    Δ̂ ± √( 2 s² (s² + τ²) / τ² · ln( √((s² + τ²) / s²) / α ) )

is a (1 − α) confidence sequence: it holds at every look at once, so the running intersection
of its intervals holds too, and that is what a look reports (bounds that only narrow, so a
verdict read from them does not flap at a bound). τ² = ρ²·V with GrowthBook's
ρ² = (−2 ln α + ln(−2 ln α + 1)) / N*, which makes the interval narrowest near N* requests per
arm (`PLANNED_REQUESTS`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# N*: the sample per arm at which the confidence sequence is tightest. Canary analyses usually
# decide within a few thousand requests per arm.
PLANNED_REQUESTS = 5_000


def rho2(alpha: float, planned: int = PLANNED_REQUESTS) -> float:
    """GrowthBook's ρ², so that τ² = ρ² V."""
    a = -2.0 * math.log(alpha)
    return (a + math.log(a + 1.0)) / planned


def log_mixture_lr(delta_hat: float, s2: float, tau2: float, theta0: float = 0.0) -> float:
    """ln Λ of the mSPRT for H₀: Δ = θ₀, given the estimate and its variance s²."""
    return 0.5 * math.log(s2 / (s2 + tau2)) + tau2 * (delta_hat - theta0) ** 2 / (2.0 * s2 * (s2 + tau2))


def half_width(s2: float, tau2: float, alpha: float) -> float:
    """Half-width of the (1 − α) confidence sequence."""
    return math.sqrt(2.0 * s2 * (s2 + tau2) / tau2 * math.log(math.sqrt((s2 + tau2) / s2) / alpha))


@dataclass(frozen=True, slots=True)
class Look:
    """One reading of a sequential comparison: arm B (the candidate) minus arm A (the baseline)."""

    n_a: int
    n_b: int
    effect: float
    lower: float
    upper: float
    # Always-valid p-value for H₀: Δ = θ₀ (running minimum over looks).
    p_value: float


class SequentialDifference:
    """An always-valid comparison of two means (or proportions), read after every batch.

    `theta0` is the null difference the p-value tests (a tolerance, for a test of "worse by
    more than the tolerance"). The p-value is the running minimum of 1/Λ, so it never goes up;
    the bounds are the running intersection of the intervals (the current one, if the data
    leave it empty: the arms did not stay alike).
    """

    def __init__(self, alpha: float, theta0: float = 0.0, planned: int = PLANNED_REQUESTS) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        self.alpha = alpha
        self.theta0 = theta0
        self._rho2 = rho2(alpha, planned)
        self.p_value = 1.0
        self.lower, self.upper = -math.inf, math.inf

    def look(self, n_a: int, mean_a: float, var_a: float, n_b: int, mean_b: float, var_b: float) -> Look | None:
        """Read the arms' current means and variances; None while either arm has no spread."""
        if n_a < 2 or n_b < 2:
            return None
        s2 = var_a / n_a + var_b / n_b
        v = var_a + var_b
        if not s2 > 0.0:
            return None
        tau2 = self._rho2 * v
        effect = mean_b - mean_a
        p = math.exp(-max(0.0, log_mixture_lr(effect, s2, tau2, self.theta0)))
        self.p_value = min(self.p_value, p)
        h = half_width(s2, tau2, self.alpha)
        lower, upper = max(self.lower, effect - h), min(self.upper, effect + h)
        if lower > upper:
            lower, upper = effect - h, effect + h
        self.lower, self.upper = lower, upper
        return Look(n_a, n_b, effect, lower, upper, self.p_value)

    def snapshot(self) -> dict[str, Any]:
        """The test's state, JSON-ready: ρ² is kept as computed, so a restore needs no `planned`."""
        return {
            "alpha": _encode_float(self.alpha),
            "theta0": _encode_float(self.theta0),
            "rho2": _encode_float(self._rho2),
            "p_value": _encode_float(self.p_value),
            "lower": _encode_float(self.lower),
            "upper": _encode_float(self.upper),
        }

    @classmethod
    def from_snapshot(cls, state: dict[str, Any]) -> SequentialDifference:
        """The test a `snapshot()` was taken of, running minimum of the p-value included."""
        test = cls(_decode_float(state["alpha"]), _decode_float(state["theta0"]))
        test._rho2 = _decode_float(state["rho2"])
        test.p_value = _decode_float(state["p_value"])
        # Snapshots before the running intersection have none: it starts afresh.
        test.lower = _decode_float(state.get("lower", "-inf"))
        test.upper = _decode_float(state.get("upper", "inf"))
        return test


_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _encode_float(x: float) -> float | str:
    """A float for a JSON snapshot: finite as itself, inf, -inf and nan as those strings."""
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else "inf" if x > 0 else "-inf"


def _decode_float(value: Any) -> float:
    """The inverse of `_encode_float`; ValueError for anything else."""
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"snapshot: expected a number or 'inf', '-inf', 'nan', got {value!r}")


def benjamini_hochberg(p_values: Sequence[float], q: float) -> list[bool]:
    """Which hypotheses BH rejects at false discovery rate q (step-up on the sorted p-values)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    cutoff = 0
    for rank, i in enumerate(order, 1):
        if p_values[i] <= rank * q / m:
            cutoff = rank
    rejected = [False] * m
    for i in order[:cutoff]:
        rejected[i] = True
    return rejected
