"""mSPRT and Benjamini-Hochberg against values computed here, straight from references.md."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detectors.sequential import SequentialDifference, benjamini_hochberg, half_width, log_mixture_lr, rho2


def reference_lambda(delta: float, v: float, n: int, tau2: float, theta0: float) -> float:
    """Λn = √(V/(V+nτ²)) · exp(n²τ²(Δ̂ₙ−θ₀)² / (2V(V+nτ²))), n per arm, V = σ²_A + σ²_B."""
    return float(np.sqrt(v / (v + n * tau2)) * np.exp(n**2 * tau2 * (delta - theta0) ** 2 / (2 * v * (v + n * tau2))))


def reference_half_width(v: float, n: int, tau2: float, alpha: float) -> float:
    """√( 2V(V+nτ²)/(n²τ²) · ln( √((V+nτ²)/V) / α ) )."""
    return float(np.sqrt(2 * v * (v + n * tau2) / (n**2 * tau2) * np.log(np.sqrt((v + n * tau2) / v) / alpha)))


@pytest.mark.parametrize(
    ("delta", "var_a", "var_b", "n", "tau2", "theta0"),
    [(0.1, 1.0, 1.5, 400, 0.01, 0.0), (-0.03, 0.05, 0.06, 2_000, 0.002, 0.01), (0.0, 2.0, 2.0, 50, 0.5, 0.2)],
)
def test_mixture_lr_and_interval_equal_the_reference_formulas(
    delta: float, var_a: float, var_b: float, n: int, tau2: float, theta0: float
) -> None:
    v = var_a + var_b
    s2 = var_a / n + var_b / n  # equal arms: s² = V/n
    assert math.exp(log_mixture_lr(delta, s2, tau2, theta0)) == pytest.approx(
        reference_lambda(delta, v, n, tau2, theta0), rel=1e-12
    )
    # The reference's τ² multiplies n; ours is on the scale of Δ̂'s variance: τ² here is the same prior.
    assert half_width(s2, tau2, 0.05) == pytest.approx(reference_half_width(v, n, tau2, 0.05), rel=1e-12)


def test_growthbook_rho2() -> None:
    a = -2 * math.log(0.05)
    assert rho2(0.05, 1_000) == pytest.approx((a + math.log(a + 1)) / 1_000)


def test_look_uses_tau2_rho2_v_and_keeps_the_running_minimum_p() -> None:
    t = SequentialDifference(alpha=0.05, theta0=0.0, planned=1_000)
    first = t.look(400, 0.0, 1.0, 400, 0.3, 1.0)
    assert first is not None
    tau2 = rho2(0.05, 1_000) * 2.0
    lam = reference_lambda(0.3, 2.0, 400, tau2, 0.0)
    assert first.p_value == pytest.approx(min(1.0, 1 / lam))
    h = reference_half_width(2.0, 400, tau2, 0.05)
    assert (first.lower, first.upper) == pytest.approx((0.3 - h, 0.3 + h))
    # A later look with no effect does not raise the p-value: it is a running minimum.
    later = t.look(800, 0.0, 1.0, 800, 0.0, 1.0)
    assert later is not None and later.p_value == first.p_value
    assert t.look(1, 0.0, 1.0, 400, 0.3, 1.0) is None  # too few to have a variance


def test_rejecting_when_the_interval_excludes_theta0_agrees_with_p_below_alpha() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(50, 5_000))
        effect = float(rng.normal(0, 0.2))
        t = SequentialDifference(alpha=0.05, theta0=0.0)
        lk = t.look(n, 0.0, 1.0, n, effect, 1.0)
        assert lk is not None
        assert (lk.p_value < 0.05) == (lk.lower > 0 or lk.upper < 0)


def test_benjamini_hochberg_by_hand() -> None:
    # m = 5, q = 0.05: thresholds 0.01, 0.02, 0.03, 0.04, 0.05. Sorted p: 0.001, 0.012, 0.029,
    # 0.041, 0.9; the largest rank with p <= rank q / m is 4 (0.041 <= 0.04 fails: rank 3).
    p = [0.9, 0.029, 0.001, 0.041, 0.012]
    assert benjamini_hochberg(p, 0.05) == [False, True, True, False, True]
    assert benjamini_hochberg([0.2, 0.3], 0.05) == [False, False]
    assert benjamini_hochberg([], 0.05) == []


def test_alpha_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="alpha"):
        SequentialDifference(alpha=1.5)
