"""The scan tests (detectors/scan.py): false alarms whatever the law, what each test sees, the
reference that grows only from quiet data, and answers that do not depend on how values arrive."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from scipy import special

from detectors.scan import LOOK, WINDOW_LOOKS, CategoricalScan, NumericScan, ScanTest, threshold
from detectors.scan_bank import Z_UNIT

Maker = Callable[[np.random.Generator, int], Any]


def detections(
    make: Maker, n: int, target: float, *, categorical: bool = False, chunk: int = 2000, seed: int = 0
) -> list[int]:
    """Positions of every detection over n values; after each, the next 1,000 are the new reference."""
    x = make(np.random.default_rng(seed), n)
    scan: ScanTest = (CategoricalScan if categorical else NumericScan)(target_ert=target)
    hits: list[int] = []
    pos = 0
    while pos + 1000 + LOOK <= n:
        if categorical:
            scan.prepare(list(x[pos : pos + 1000]))
            values = scan.slot_of(list(x))  # type: ignore[attr-defined]
        else:
            scan.prepare(np.array(x[pos : pos + 1000], dtype=np.float64))
            values = x
        pos += 1000
        while pos + LOOK <= n:
            end = pos + (min(n, pos + chunk) - pos) // LOOK * LOOK
            fired = scan.scan(values[pos:end], np.arange(pos, end))
            if fired is not None:
                hits.append(pos + fired)
                pos += fired + 1
                break
            pos = end
    return hits


LEVELS = list("abcde")
SHARES = [0.35, 0.25, 0.20, 0.12, 0.08]


def test_false_alarms_stay_within_the_target_whatever_the_law() -> None:
    target, n = 20_000, 1_000_000
    normal = detections(lambda r, k: r.standard_normal(k), n, target)
    # Normal scores make the scan distribution-free: a monotone transform changes nothing at all.
    assert detections(lambda r, k: np.exp(2 * r.standard_normal(k)), n, target) == normal
    ties = detections(lambda r, k: r.poisson(2, k).astype(float), n, target)
    levels = detections(lambda r, k: r.choice(LEVELS, k, p=SHARES), n, target, categorical=True)
    # At most one false alarm per `target` values (fewer: references take time, and the budget
    # is split by a union bound).
    for hits in (normal, ties, levels):
        assert len(hits) <= n / target


@pytest.mark.parametrize(
    ("name", "make", "test"),
    [
        ("mean", lambda r, k, c: np.r_[r.standard_normal(c), r.standard_normal(k - c) + 0.5], "mean"),
        ("scale", lambda r, k, c: np.r_[r.standard_normal(c), 2.0 * r.standard_normal(k - c)], "scale"),
        # Same mean and sd, another shape: ±0.9 with a little noise.
        (
            "shape",
            lambda r, k, c: np.r_[
                r.standard_normal(c), r.choice([-0.9, 0.9], k - c) + 0.436 * r.standard_normal(k - c)
            ],
            "shape",
        ),
    ],
)
def test_each_numeric_test_catches_its_change(name: str, make: Any, test: str) -> None:
    change = 12_000
    scan = NumericScan(target_ert=1e7)
    x = make(np.random.default_rng(1), 20_000, change)
    hits = scan.update_many(x.tolist())
    assert hits and change <= hits[0] < change + 2_000, name
    assert scan.finding is not None and scan.finding["test"] == test
    assert scan.finding["statistic"] > scan.finding["threshold"]


def test_a_burst_of_new_levels_is_evidence() -> None:
    rng = np.random.default_rng(2)
    before = rng.choice(LEVELS, 12_000, p=SHARES).tolist()
    after = [f"new-{i}" if i % 4 == 0 else v for i, v in enumerate(rng.choice(LEVELS, 2_000, p=SHARES).tolist())]
    scan = CategoricalScan(target_ert=1e7)
    hits = scan.update_many(before + after)
    assert hits and 12_000 <= hits[0] < 12_300
    assert scan.finding is not None
    moved = scan.finding["levels"][0]
    assert moved["level"] == "__other__" and moved["window_share"] > 0.1 > moved["reference_share"]


def test_rare_levels_share_a_cell_and_many_levels_raise_nothing() -> None:
    # A feature of ids: every value new. All of them are the rare cell's, in the reference too.
    scan = CategoricalScan(target_ert=1e6)
    assert scan.update_many([f"id-{i}" for i in range(30_000)]) == []
    assert scan.levels == [] and scan.dims == 1


def test_the_reference_grows_from_quiet_epochs_only() -> None:
    rng = np.random.default_rng(3)
    quiet = NumericScan(target_ert=1e6)
    quiet.update_many(rng.standard_normal(21_000).tolist())
    # 20,000 values after the first reference: 12 epochs of 1,600 ended, the first 8 of them
    # 6,400 values ago; an epoch near which a test warned by chance stays out.
    assert 1_000 + 6 * 1_600 <= quiet.reference_events <= 1_000 + 8 * 1_600
    # A slow drift, too slow to fire, warns: the epochs near the warnings stay out.
    ramp = NumericScan(target_ert=1e9)
    x = rng.standard_normal(21_000) + np.clip((np.arange(21_000) - 1_000) / 20_000, 0, None) * 0.1
    assert ramp.update_many(x.tolist()) == []
    assert ramp.reference_events < quiet.reference_events


@pytest.mark.parametrize("categorical", [False, True])
def test_answers_do_not_depend_on_how_values_arrive(categorical: bool) -> None:
    def make(r: np.random.Generator, k: int) -> Any:
        if categorical:
            return np.r_[r.choice(LEVELS, 30_000, p=SHARES), r.choice(LEVELS, k - 30_000)]
        return np.r_[r.standard_normal(30_000), r.standard_normal(k - 30_000) * 1.3]

    whole = detections(make, 40_000, 1e6, categorical=categorical, chunk=10_000)
    assert whole
    assert detections(make, 40_000, 1e6, categorical=categorical, chunk=LOOK) == whole
    assert detections(make, 40_000, 1e6, categorical=categorical, chunk=7 * LOOK) == whole


def test_threshold_solves_the_crossing_rate() -> None:
    rate = 1e-9
    for df in (1, 7):
        for looks in WINDOW_LOOKS:
            n = looks * LOOK
            x = threshold(df, n, LOOK, rate)
            assert special.chdtrc(df, x) * min(1 / LOOK, x / n) == pytest.approx(rate, rel=1e-6)
    # Longer windows are read more often than they change: a lower threshold for the same rate.
    assert threshold(1, 6400, LOOK, rate) < threshold(1, 50, LOOK, rate)
    assert math.isfinite(threshold(1, 50, LOOK, 1e-30))


@pytest.mark.parametrize(("scan", "xs"), [(NumericScan, [0.0] * 1_200), (CategoricalScan, ["a", "b"] * 600)])
def test_a_snapshot_survives_json(scan: type[ScanTest], xs: list[Any]) -> None:
    """Looks without times (NaN) must come back as they were: JSON has no NaN."""
    det = scan(reference_size=1_000)
    det.update_many(xs)
    twin = scan(reference_size=1_000)
    twin.restore(json.loads(json.dumps(det.snapshot(), allow_nan=False)))
    assert twin.snapshot() == det.snapshot()


def test_a_change_beyond_float32_is_described_without_nan() -> None:
    # Values past float32's range fire like any other (their normal scores are finite); the
    # description of their size, kept as float32 sums, says nothing rather than inf or NaN.
    scan = NumericScan(target_ert=1e6)
    rng = np.random.default_rng(5)
    hits = scan.update_many([*rng.standard_normal(1_100).tolist(), *[1e30] * 50])
    assert hits and scan.finding is not None
    assert scan.finding["window_mean"] == pytest.approx(1e30, rel=1e-5)
    assert scan.finding["window_sd"] is None and scan.finding["sd_ratio"] is None
    json.dumps(scan.finding, allow_nan=False)


def _as_kept_before(state: dict[str, Any], numeric: bool, cells: int) -> dict[str, Any]:
    """A scan's state as the per-stream version kept it: the ring as float sums per look (Σz,
    Σ(z² - 1), Σx, Σx², then the counts), the reference's cells unpadded, epochs as a list."""
    n = int(state["n_epochs"])
    if numeric:
        ring = np.hstack([state["ring_z"] / Z_UNIT, state["ring_x"], state["ring_c"]])
    else:
        ring = state["ring_c"][:, :cells].astype(np.float64)
    return {
        "ref_cells": state["ref_cells"][:cells].astype(np.float64),
        "looks": int(state["looks"]),
        "seen": int(state["seen"]),
        "ring": ring,
        "ring_index": state["ring_index"],
        "ring_time": state["ring_time"],
        "epoch": state["epoch"][:cells].astype(np.float64),
        "epochs": state["epochs"][:n, :cells].astype(np.float64),
        "warned": [*state["warned"][:n].tolist(), bool(state["epoch_warned"])],
        "evidence": float(state["evidence"]),
    }


@pytest.mark.parametrize("numeric", [True, False])
def test_a_state_kept_by_the_per_stream_version_restores(numeric: bool) -> None:
    rng = np.random.default_rng(9)
    values: list[Any] = rng.standard_normal(6_000).tolist() if numeric else rng.choice(LEVELS, 6_000, p=SHARES).tolist()
    scan: ScanTest = NumericScan(target_ert=1e6) if numeric else CategoricalScan(target_ert=1e6)
    assert scan.update_many(values[:5_000]) == []
    state = scan.state()
    assert state["n_epochs"] >= 1 and state["looks"] == 80
    reference = scan._reference_out()
    assert reference is not None
    twin: ScanTest = type(scan)(target_ert=1e6)
    twin.prepare(np.array(reference) if numeric else reference)
    twin.prepared = True
    cells = int(scan.bank.n_cells[scan.slot])  # type: ignore[union-attr]
    twin.restore_judged_state({"score": None, "p_value": None, **_as_kept_before(state, numeric, cells)})
    after = twin.state()
    assert all(np.array_equal(after[k], state[k], equal_nan=True) for k in state)
    rest = values[5_000:]
    assert twin.update_many(rest) == scan.update_many(rest)
    assert twin.state()["looks"] == scan.state()["looks"]
