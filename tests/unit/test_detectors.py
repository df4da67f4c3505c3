from __future__ import annotations

import inspect
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.base import Detector
from detectors.registry import DETECTORS

NAMES = sorted(DETECTORS)
LEVELS = ["a", "b", "c", "d", "e"]


def fast_params(cls: type) -> dict[str, Any]:
    """Small windows for the window-vs-reference tests, so short streams cover several windows."""
    if "reference_size" in inspect.signature(cls).parameters:
        return {"reference_size": 60, "window_size": 30}
    return {}


def make(name: str, **kw: Any) -> Any:
    cls = DETECTORS[name]
    return cls(**{**fast_params(cls), **kw})


def numeric(seed: int, n: int, change_at: int, shift: float) -> list[float]:
    x = np.random.default_rng(seed).normal(size=n)
    x[change_at:] += shift
    return [float(v) for v in x]


def errors(seed: int, n: int, change_at: int, before: float, after: float) -> list[bool]:
    u = np.random.default_rng(seed).random(n)
    p = np.where(np.arange(n) < change_at, before, after)
    return [bool(v) for v in u < p]


def categories(seed: int, n: int, change_at: int, before: list[float], after: list[float]) -> list[str]:
    rng = np.random.default_rng(seed)
    a = rng.choice(LEVELS, p=before, size=change_at)
    b = rng.choice(LEVELS, p=after, size=n - change_at)
    return [str(v) for v in np.concatenate([a, b])]


CAT_BEFORE = [0.4, 0.3, 0.15, 0.1, 0.05]
CAT_AFTER = [0.15, 0.3, 0.15, 0.1, 0.3]


def drifting_stream(name: str, seed: int = 0) -> list[Any]:
    """A stream with a large change halfway, which every detector (fast params) reports."""
    kind = DETECTORS[name].input_kind
    n = 800
    if kind == "numeric":
        return numeric(seed, n, n // 2, 3.0)
    if kind == "binary":
        return errors(seed, n, n // 2, 0.05, 0.6)
    return categories(seed, n, n // 2, CAT_BEFORE, [0.05, 0.05, 0.05, 0.05, 0.8])


def run_one_by_one(det: Any, xs: list[Any]) -> list[int]:
    hits = []
    for i, x in enumerate(xs):
        det.update(x)
        if det.drift_detected:
            hits.append(i)
    return hits


# -- generic suite, one case per registry entry ---------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_shape(name: str) -> None:
    cls = DETECTORS[name]
    det = cls()
    assert isinstance(det, Detector)
    assert cls.input_kind in ("numeric", "binary", "categorical")
    assert det.drift_detected is False
    with pytest.raises(AttributeError):
        det.drift_detected = True
    # Constructor arguments are stored under the same public name.
    for p in inspect.signature(cls).parameters.values():
        assert getattr(det, p.name) == p.default, p.name


@pytest.mark.parametrize("name", NAMES)
def test_the_drifting_stream_is_detected_and_update_many_matches_update(name: str) -> None:
    xs = drifting_stream(name)
    hits = make(name).update_many(xs)
    assert hits, "the generic stream must exercise a detection"
    assert any(h >= len(xs) // 2 - 1 for h in hits)
    assert run_one_by_one(make(name), xs) == hits


@pytest.mark.parametrize("name", NAMES)
def test_clone_behaves_like_a_fresh_instance(name: str) -> None:
    xs = drifting_stream(name)
    used = make(name)
    used.update_many(drifting_stream(name, seed=1)[:500])
    clone = used.clone()
    assert type(clone) is type(used) and clone is not used
    expected = make(name).update_many(xs)
    assert expected
    # `used` has seen a change point; a clone that copied its state would not match.
    assert clone.update_many(xs) == expected


@pytest.mark.parametrize("name", NAMES)
def test_snapshot_restore_continue_equals_an_uninterrupted_run(name: str) -> None:
    xs = drifting_stream(name)
    expected = make(name).update_many(xs)
    assert expected
    # Cut before any window, mid-stream, and right after a detection (the reset is still pending).
    for cut in (7, 45, len(xs) // 2 + 13, expected[0] + 1):
        first = make(name)
        hits = first.update_many(xs[:cut])
        state = json.loads(json.dumps(first.snapshot()))
        second = make(name)
        second.restore(state)
        assert second.drift_detected == first.drift_detected
        hits += [cut + i for i in second.update_many(xs[cut:])]
        assert hits == expected, cut


@pytest.mark.parametrize("name", NAMES)
def test_restore_refuses_a_snapshot_with_other_parameters(name: str) -> None:
    state = make(name).snapshot()
    state["params"] = {**state["params"], "extra": 1}
    with pytest.raises(ValueError, match="parameters"):
        make(name).restore(state)


@pytest.mark.parametrize("name", NAMES)
def test_constant_stream_raises_no_alarm(name: str) -> None:
    kind = DETECTORS[name].input_kind
    n = 1000 if name == "kswin" else 5000
    constants: list[Any] = {"numeric": [0.0, 7.5], "binary": [False, True], "categorical": ["a"]}[kind]
    for c in constants:
        assert make(name).update_many([c] * n) == [], c
        assert DETECTORS[name]().update_many([c] * n) == [], c


VALUES = {
    "numeric": st.floats(allow_nan=False, allow_infinity=False),
    "binary": st.booleans(),
    "categorical": st.sampled_from([*LEVELS, "z", ""]),
}


@pytest.mark.parametrize("name", NAMES)
def test_finite_input_never_raises_and_scores_stay_finite(name: str) -> None:
    @settings(max_examples=30, deadline=None)
    @given(st.lists(VALUES[DETECTORS[name].input_kind], max_size=250))
    def prop(xs: list[Any]) -> None:
        det = make(name)
        for x in xs:
            det.update(x)
            score = getattr(det, "score", None)
            assert score is None or math.isfinite(score)
        state = json.loads(json.dumps(det.snapshot()))
        twin = make(name)
        twin.restore(state)
        assert twin.snapshot() == det.snapshot()

    prop()


@pytest.mark.parametrize("name", [n for n in NAMES if DETECTORS[n].input_kind == "numeric"])
def test_non_finite_numbers_are_skipped(name: str) -> None:
    xs = drifting_stream(name)
    dirty: list[float] = []
    where: list[int] = []
    for i, x in enumerate(xs):
        if i % 50 == 3:
            dirty += [math.nan, math.inf, -math.inf]
        where.append(len(dirty))
        dirty.append(x)
    expected = make(name).update_many(xs)
    assert make(name).update_many(dirty) == [where[i] for i in expected]


# Out-of-range values per detector; a new registry entry fails test_every_detector_has_bad_params
# until it gets some.
BAD_PARAMS: dict[str, list[dict[str, Any]]] = {
    "adwin": [{"delta": 0.0}, {"delta": 1.0}, {"clock": 0}, {"max_buckets": 1}, {"grace_period": 0}],
    "page_hinkley": [{"threshold": 0.0}, {"delta": -0.1}, {"alpha": 0.0}, {"alpha": 1.5}, {"mode": "sideways"}],
    "kswin": [{"alpha": 0.0}, {"window_size": 1}, {"stat_size": 60}, {"stat_size": 0}, {"seed": -1}],
    "ddm": [{"warm_start": 0}, {"warning_threshold": 0.0}, {"drift_threshold": 1.0}],
    "eddm": [{"alpha": 1.0}, {"beta": 0.99}, {"beta": 0.0}, {"warm_start": 0}],
    "hddm_a": [{"drift_confidence": 0.0}, {"warning_confidence": 1.0}, {"two_sided_test": 1}],
    "hddm_w": [{"drift_confidence": 1.5}, {"lambda_val": 0.0}, {"lambda_val": 1.01}, {"two_sided_test": "yes"}],
    "fhddm": [{"sliding_window_size": 0}, {"confidence_level": 1.0}, {"short_window_size": 101}],
    "ks": [{"alpha": 0.0}, {"alpha": 1.0}, {"reference_size": 1}, {"window_size": 0}],
    "error_rate": [{"threshold": 0.0}, {"threshold": math.inf}, {"reference_size": 1}],
    "wasserstein": [{"threshold": 0.0}, {"threshold": -1.0}, {"window_size": 1}],
    "psi": [{"threshold": 0.0}, {"n_bins": 1}, {"n_bins": 2000}],
    "chi2": [{"alpha": 0.0}, {"alpha": 2.0}, {"reference_size": 0}],
    "jensen_shannon": [{"threshold": 0.0}, {"threshold": 1.5}],
    "psi_categorical": [{"threshold": 0.0}, {"window_size": 1}],
    "scan": [{"target_ert": 0.5}, {"max_reference": 10}, {"window_size": 1}],
    "scan_categorical": [{"target_ert": math.inf}, {"reference_size": 1}],
}


def test_every_detector_has_bad_params() -> None:
    assert set(BAD_PARAMS) == set(DETECTORS)


@pytest.mark.parametrize(("name", "bad"), [(n, b) for n in NAMES for b in BAD_PARAMS.get(n, [])])
def test_bad_params_raise_value_error_naming_the_parameter(name: str, bad: dict[str, Any]) -> None:
    (param,) = bad
    with pytest.raises(ValueError, match=param):
        DETECTORS[name](**bad)


@pytest.mark.parametrize("name", NAMES)
def test_nan_or_wrongly_typed_params_raise_value_error(name: str) -> None:
    cls = DETECTORS[name]
    checked = 0
    for p in inspect.signature(cls).parameters.values():
        if isinstance(p.default, bool) or p.default is None:
            continue
        if isinstance(p.default, float):
            with pytest.raises(ValueError, match=p.name):
                cls(**{p.name: math.nan})
            checked += 1
        elif isinstance(p.default, int):
            with pytest.raises(ValueError, match=p.name):
                cls(**{p.name: 1.5})
            checked += 1
    assert checked


# -- pinned behaviour on seeded streams with known change points ----------------------------------
# Each range is the detection delay seen over 20 seeds for that setup; the stream here uses seed 0.


@pytest.mark.parametrize(
    ("name", "params", "n", "change_at", "shift", "first_in"),
    [
        ("adwin", {}, 7000, 5000, 1.0, (5000, 5100)),
        # River's default threshold 50 fires on stationary N(0, 1) about every 1.6k samples.
        ("page_hinkley", {"threshold": 200.0}, 7000, 5000, 1.0, (5000, 5250)),
        ("kswin", {"alpha": 1e-4}, 1000, 500, 1.0, (500, 600)),
        # Tumbling windows of 500 after a reference of 1000: the window ending at 3499 is the first
        # that holds shifted values.
        ("ks", {}, 5000, 3000, 1.0, (3499, 3499)),
        # Evidently's 0.1 fired before the change on 7 of 20 seeds with windows of 500.
        ("wasserstein", {"threshold": 0.2}, 5000, 3000, 1.0, (3499, 3499)),
        ("psi", {}, 5000, 3000, 1.0, (3499, 3499)),
    ],
)
def test_numeric_change_point(
    name: str, params: dict[str, Any], n: int, change_at: int, shift: float, first_in: tuple[int, int]
) -> None:
    hits = DETECTORS[name](**params).update_many(numeric(0, n, change_at, shift))
    assert hits, "no detection"
    assert first_in[0] <= hits[0] <= first_in[1], hits


@pytest.mark.parametrize(
    ("name", "params", "after", "first_in"),
    [
        # River's warm_start=30 fired before the change on 10 of 20 seeds.
        ("ddm", {"warm_start": 1000}, 0.3, (5000, 5250)),
        # EDDM's defaults fired early on 19 of 20 seeds; even these do on 1 of 20, and the delay
        # spread is 224-2,891, so this pin is loose.
        ("eddm", {"warm_start": 100, "alpha": 0.5, "beta": 0.4}, 0.5, (5000, 7900)),
        ("hddm_a", {}, 0.3, (5000, 5200)),
        ("hddm_w", {}, 0.3, (5000, 5550)),
        ("fhddm", {}, 0.3, (5000, 5250)),
        # Windows of 500 after a 1,000-value reference: the window 5000..5499 is the first after the change.
        ("error_rate", {}, 0.3, (5499, 5500)),
    ],
)
def test_error_rate_change_point(name: str, params: dict[str, Any], after: float, first_in: tuple[int, int]) -> None:
    hits = DETECTORS[name](**params).update_many(errors(0, 8000, 5000, 0.05, after))
    assert hits, "no detection"
    assert first_in[0] <= hits[0] <= first_in[1], hits


def test_fhddm_flags_a_rising_error_rate_not_a_falling_one() -> None:
    from river.drift.binary import FHDDM

    falling = errors(0, 8000, 5000, 0.3, 0.05)
    raw = FHDDM()
    raw_hits = []
    for i, x in enumerate(falling):
        raw.update(x)
        if raw.drift_detected:
            raw_hits.append(i)
    # River's FHDDM, fed errors, flags the fall (see FHDDMDetector's docstring); the adapter must not.
    assert any(5000 <= h < 5500 for h in raw_hits)
    assert not any(5000 <= h < 5500 for h in DETECTORS["fhddm"]().update_many(falling))


@pytest.mark.parametrize("name", ["chi2", "jensen_shannon", "psi_categorical"])
def test_categorical_change_point(name: str) -> None:
    t = DETECTORS[name]()
    assert t.update_many(categories(0, 5000, 3000, CAT_BEFORE, CAT_AFTER)) == [3499]
    assert t.score is not None and t.score > 0


@pytest.mark.parametrize("name", ["chi2", "jensen_shannon", "psi_categorical"])
def test_unseen_levels_count_under_other(name: str) -> None:
    before = categories(0, 1500, 1500, [0.2] * 5, [0.2] * 5)
    after = [("z" if i % 5 == 0 else x) for i, x in enumerate(categories(1, 500, 0, [0.2] * 5, [0.2] * 5))]
    t = DETECTORS[name]()
    assert t.update_many(before + after) == [1999]
    t2 = DETECTORS[name]()
    assert t2.update_many(before + categories(1, 500, 0, [0.2] * 5, [0.2] * 5)) == []


@pytest.mark.parametrize("name", [n for n in NAMES if "reference_size" in inspect.signature(DETECTORS[n]).parameters])
def test_windowed_state_stays_bounded(name: str) -> None:
    det = make(name)
    xs = drifting_stream(name)
    scored = 0
    for x in xs:
        det.update(x)
        state = det.snapshot()
        assert len(state["reference"] or []) in (0, det.reference_size)
        assert len(state["buffer"]) < max(det.reference_size, det.window_size)
        scored += state["score"] is not None
        assert state["p_value"] is None or 0 <= state["p_value"] <= 1
    assert scored


def test_river_snapshot_refuses_another_river_version() -> None:
    det = DETECTORS["adwin"]()
    det.update_many(numeric(0, 100, 100, 0))
    state = det.snapshot()
    state["river_version"] = "0.1.0"
    with pytest.raises(ValueError, match=r"0\.1\.0"):
        DETECTORS["adwin"]().restore(state)


def test_restore_refuses_a_snapshot_of_another_detector() -> None:
    with pytest.raises(ValueError, match="ADWINDetector"):
        DETECTORS["ddm"]().restore(DETECTORS["adwin"]().snapshot())


@settings(max_examples=60, deadline=None)
@given(
    ref=st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=300),
    win=st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=300),
)
def test_wasserstein_statistic_equals_scipys(ref: list[float], win: list[float]) -> None:
    from scipy import stats

    from detectors.distribution import WassersteinTest

    t = WassersteinTest(reference_size=len(ref), window_size=len(win))
    t.update_many(ref)
    expected = stats.wasserstein_distance(np.asarray(ref) / t.norm, np.asarray(win) / t.norm)
    assert t.statistic(t.window_values(win))[0] == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(("r", "w"), [(1000, 500), (500, 1000), (300, 300), (600, 400), (7, 13)])
def test_wasserstein_statistic_equals_scipys_on_both_paths(r: int, w: int) -> None:
    from scipy import stats

    from detectors.distribution import WassersteinTest

    rng = np.random.default_rng(r * w)
    ref, win = rng.standard_t(3, r).tolist(), rng.normal(0.3, 2.0, w).tolist()
    t = WassersteinTest(reference_size=r, window_size=w)
    t.update_many(ref)
    expected = stats.wasserstein_distance(np.asarray(ref) / t.norm, np.asarray(win) / t.norm)
    assert t.statistic(t.window_values(win))[0] == pytest.approx(expected, rel=1e-12)


def test_jensen_shannon_and_chi2_equal_scipys() -> None:
    from scipy import stats
    from scipy.spatial.distance import jensenshannon

    from detectors.distribution import Chi2Test, jensen_shannon

    rng = np.random.default_rng(3)
    for _ in range(50):
        p = rng.integers(0, 40, 6).astype(float)  # zeros included: rel_entr's 0 ln 0 = 0
        p[0] += 1
        q = rng.integers(0, 40, 6).astype(float) + 1
        assert jensen_shannon(p, q) == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)
    t = Chi2Test(reference_size=300, window_size=300)
    t.update_many(list("abcab") * 60)
    window = list("aabbc") * 60
    expected = stats.chisquare(t.window_values(window), t._ref_p * len(window))
    assert t.statistic(t.window_values(window)) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-12)


def test_the_daemon_does_not_import_river_or_scipy_stats() -> None:
    """Each costs tens of MB of RSS per process; the default detectors need neither."""
    import subprocess
    import sys

    code = "import sys, daemon.runtime.app; print(sorted(m for m in ('river', 'scipy.stats') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
