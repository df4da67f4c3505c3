"""The shadow input reservoir: uniform, bounded, label-aware and restorable."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from scipy import stats

from daemon.monitors.reservoir import Reservoir, Sample


def samples(start: int, n: int) -> list[Sample]:
    return [Sample(f"r{i}", {"x": float(i)}, prediction=i % 2) for i in range(start, start + n)]


def test_every_item_is_equally_likely_to_be_kept() -> None:
    # 4,000 reservoirs of 5 over a 50-item stream fed in uneven batches: each item should be
    # kept 4,000 · 5/50 = 400 times; a chi-square test of the counts against that.
    counts: Counter[str] = Counter()
    for seed in range(4_000):
        r = Reservoir(size=5, seed=seed)
        for lo, hi in ((0, 3), (3, 20), (20, 21), (21, 50)):
            r.add_many(samples(lo, hi - lo))
        counts.update(s.request_id for s in r.items)
    observed = [counts[f"r{i}"] for i in range(50)]
    assert sum(observed) == 4_000 * 5
    assert stats.chisquare(observed).pvalue > 0.001


def test_size_stays_bounded_and_ids_are_unique() -> None:
    r = Reservoir(size=100, seed=3)
    for b in range(200):
        r.add_many(samples(b * 1_000, 1_000))
    assert len(r.items) == 100 and r.seen == 200_000
    assert len({s.request_id for s in r.items}) == 100


def test_labels_attach_to_sampled_predictions_only() -> None:
    r = Reservoir(size=10, seed=1)
    r.add_many(samples(0, 10))
    assert r.attach_label("r3", 1) is True
    assert next(s for s in r.items if s.request_id == "r3").label == 1
    assert r.attach_label("nope", 0) is False
    r.add_many(samples(10, 10_000))  # most of the first ten are replaced; their ids forget
    gone = {f"r{i}" for i in range(10)} - {s.request_id for s in r.items}
    assert gone and all(r.attach_label(g, 1) is False for g in gone)


def test_snapshot_restore_continue_equals_an_uninterrupted_run() -> None:
    whole = Reservoir(size=20, seed=7)
    whole.add_many(samples(0, 5_000))
    whole.add_many(samples(5_000, 5_000))
    first = Reservoir(size=20, seed=7)
    first.add_many(samples(0, 5_000))
    second = Reservoir(size=20, seed=99)
    second.restore(json.loads(json.dumps(first.snapshot())))
    second.add_many(samples(5_000, 5_000))
    assert [s.request_id for s in second.items] == [s.request_id for s in whole.items]
    with pytest.raises(ValueError, match="size"):
        Reservoir(size=21).restore(first.snapshot())


def test_bad_size_is_refused() -> None:
    with pytest.raises(ValueError, match="size must be an integer"):
        Reservoir(size=0)
