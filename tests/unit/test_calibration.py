"""Calibrated detectors: quiet on stationary data, still detect a shift, deterministic, strict inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from detectors.calibration import NOT_CALIBRATABLE, Calibration, calibrate
from detectors.registry import DETECTORS

NUMERIC = ["scan", "ks", "wasserstein", "psi", "page_hinkley", "adwin"]
BINARY = ["ddm", "hddm_a", "fhddm", "error_rate"]
CATEGORICAL = ["scan_categorical", "chi2", "jensen_shannon", "psi_categorical"]
LEVELS = np.array(["a", "b", "c", "d", "e"])
BEFORE = [0.4, 0.3, 0.15, 0.1, 0.05]
AFTER = [0.3, 0.3, 0.15, 0.1, 0.15]
# A 10M-event ERT makes an alarm in a 200k-event stream a ~2% event (1 - exp(-0.02)).
TARGET = 10_000_000
STATIONARY = 200_000


def stream(kind: str, seed: int, n: int, shifted: bool = False) -> list[Any]:
    rng = np.random.default_rng(seed)
    if kind == "numeric":
        return [float(v) for v in rng.normal(1.0 if shifted else 0.0, 1.0, n)]
    if kind == "binary":
        return [bool(v) for v in rng.random(n) < (0.10 if shifted else 0.05)]
    return [str(v) for v in rng.choice(LEVELS, p=AFTER if shifted else BEFORE, size=n)]


_CACHE: dict[str, Calibration] = {}


def calibrated(name: str) -> Calibration:
    if name not in _CACHE:
        ref = stream(DETECTORS[name].input_kind, seed=1, n=10_000)
        # FHDDM's default 100-event window cannot see 5% -> 10% at a 10M ERT: give it 1,000.
        params = {"sliding_window_size": 1000} if name == "fhddm" else None
        # HDDM updates are slow (~0.2M/s); half the default budget keeps this file under 30 s.
        budget = 500_000 if name.startswith("hddm") else 1_000_000
        _CACHE[name] = calibrate(name, ref, TARGET, seed=0, params=params, budget_events=budget)
    return _CACHE[name]


def test_every_registered_detector_is_calibratable_or_excluded() -> None:
    assert sorted(NUMERIC + BINARY + CATEGORICAL + list(NOT_CALIBRATABLE)) == sorted(DETECTORS)


@pytest.mark.parametrize("name", NUMERIC + BINARY + CATEGORICAL)
def test_calibrated_detector_is_quiet_on_stationary_data_and_detects_a_shift(name: str) -> None:
    cal = calibrated(name)
    assert cal.estimated_ert == pytest.approx(TARGET, rel=0.01)
    kind = DETECTORS[name].input_kind
    det = cal.build()
    assert det.update_many(stream(kind, seed=2, n=STATIONARY)) == []
    # A fresh instance finds a lasting shift (1 sd; 5% -> 10% errors; a level-mix change) within 20k
    # events of it. (DDM's memory is cumulative, so its delay grows with the time since its last reset.)
    det = cal.build()
    hits = det.update_many(stream(kind, seed=3, n=20_000) + stream(kind, seed=4, n=20_000, shifted=True))
    assert hits, f"{name} missed the shift with {cal.params}"
    assert 20_000 <= hits[0] < 40_000


@pytest.mark.parametrize("name", NUMERIC + BINARY + CATEGORICAL)
def test_calibration_is_tighter_than_the_default(name: str) -> None:
    """Defaults fire far more often than once per 10M events: calibration must move the knob the right way."""
    cal = calibrated(name)
    defaults = DETECTORS[name]()
    key = next(
        k
        for k in (
            "threshold",
            "alpha",
            "delta",
            "drift_threshold",
            "drift_confidence",
            "confidence_level",
            "target_ert",
        )
        if k in cal.params and getattr(defaults, k, None) is not None
    )
    if name == "page_hinkley" or name == "ddm" or name in ("wasserstein", "psi", "jensen_shannon", "psi_categorical"):
        assert cal.params[key] > 0
    higher_is_stricter = key in ("threshold", "drift_threshold", "target_ert")
    if name in ("page_hinkley", "ddm") or key == "target_ert":
        assert cal.params[key] > getattr(defaults, key)
    elif not higher_is_stricter:
        assert 0 < cal.params[key] < 0.5


def test_calibration_is_deterministic_for_a_seed() -> None:
    ref = stream("numeric", seed=4, n=5_000)
    a = calibrate("page_hinkley", ref, 1_000_000, seed=7, budget_events=200_000)
    b = calibrate("page_hinkley", ref, 1_000_000, seed=7, budget_events=200_000)
    assert a == b
    c = calibrate("wasserstein", ref, 1_000_000, seed=7)
    assert c == calibrate("wasserstein", ref, 1_000_000, seed=7)
    assert c.params != calibrate("wasserstein", ref, 1_000_000, seed=8).params


def test_higher_target_gives_stricter_threshold() -> None:
    ref = stream("numeric", seed=4, n=5_000)
    low = calibrate("page_hinkley", ref, 100_000, budget_events=200_000).params["threshold"]
    high = calibrate("page_hinkley", ref, 10_000_000, budget_events=200_000).params["threshold"]
    assert low < high
    assert calibrate("ks", ref, 100_000).params["alpha"] > calibrate("ks", ref, 10_000_000).params["alpha"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "ks", "reference": []}, "reference"),
        ({"name": "ddm", "reference": []}, "reference"),
        ({"name": "chi2", "reference": ["a"]}, "reference"),
        ({"name": "ddm", "reference": [False] * 100}, "reference"),
        ({"name": "ks", "reference": [0.0, 1.0], "target_ert": 0}, "target_ert"),
        ({"name": "ks", "reference": [0.0, 1.0], "target_ert": -5.0}, "target_ert"),
        ({"name": "ks", "reference": [0.0, 1.0], "target_ert": float("nan")}, "target_ert"),
        ({"name": "nope", "reference": [0.0, 1.0]}, "name"),
        ({"name": "kswin", "reference": [0.0, 1.0]}, "name"),
        ({"name": "eddm", "reference": [True, False]}, "name"),
        ({"name": "ks", "reference": [0.0, 1.0], "budget_events": 10}, "budget_events"),
        ({"name": "ks", "reference": [0.0, 1.0], "params": {"window_size": 1}}, "window_size"),
    ],
)
def test_bad_input_raises_value_error_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        calibrate(**kwargs)
