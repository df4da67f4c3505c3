from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.monitors.labels import COUNTS, JoinedLabel, LabelJoin, LabelRecord, PendingPrediction
from daemon.state import codec


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def pred(rid: str, model: str = "m", prediction: Any = "cat", **kw: Any) -> PendingPrediction:
    return PendingPrediction(request_id=rid, key=(model, "v1", "a"), prediction=prediction, **kw)


def lab(rid: str, label: Any = "cat", model: str = "m", ts: float | None = None) -> LabelRecord:
    return (rid, model, label, ts)


def make(ttl_s: float = 60, max_entries: int = 100, label_hold_s: float = 30) -> tuple[LabelJoin, FakeClock]:
    clock = FakeClock()
    return LabelJoin(ttl_s=ttl_s, max_entries=max_entries, label_hold_s=label_hold_s, clock=clock), clock


def nonzero(join: LabelJoin) -> dict[str, int]:
    return {k: v for k, v in join.counts.items() if v}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"ttl_s": 0}, "ttl_s"),
        ({"ttl_s": -1}, "ttl_s"),
        ({"ttl_s": float("inf")}, "ttl_s"),
        ({"ttl_s": float("nan")}, "ttl_s"),
        ({"max_entries": 0}, "max_entries"),
        ({"max_entries": 1.5}, "max_entries"),
        ({"max_entries": True}, "max_entries"),
        ({"label_hold_s": 0}, "label_hold_s"),
        ({"label_hold_s": "30"}, "label_hold_s"),
    ],
)
def test_bad_parameters_raise_naming_the_parameter(kwargs: dict[str, Any], name: str) -> None:
    args: dict[str, Any] = {"ttl_s": 60, "max_entries": 10, "label_hold_s": 30, **kwargs}
    with pytest.raises(ValueError, match=name):
        LabelJoin(**args)


def test_out_of_order_labels_join_to_their_own_predictions() -> None:
    join, clock = make()
    assert join.add_predictions([pred("a", prediction="x"), pred("b", prediction="y"), pred("c", prediction="z")]) == []
    clock.advance(5)
    first = join.add_labels([lab("c", "Z"), lab("a", "X")])
    clock.advance(5)
    second = join.add_labels([lab("b", "Y", ts=7.0)])
    pairs = [(j.request_id, j.prediction.prediction, j.label) for j in first + second]
    assert pairs == [("c", "z", "Z"), ("a", "x", "X"), ("b", "y", "Y")]
    assert second[0].label_timestamp == 7.0 and second[0].key == ("m", "v1", "a")
    assert nonzero(join) == {"joined": 3}
    assert len(join) == 0


def test_label_before_prediction_is_held_then_joins() -> None:
    join, clock = make()
    assert join.add_labels([lab("r", "dog", ts=3.0)]) == []
    assert join.sizes()["held_labels"] == 1
    clock.advance(29)  # inside the 30 s hold
    p = pred("r", prediction="cat", score=0.4, probabilities={"cat": 0.6}, timestamp=1.0, slices=("eu",))
    assert join.add_predictions([p]) == [JoinedLabel(p, "dog", 3.0)]
    assert nonzero(join) == {"joined": 1}
    assert join.sizes()["held_labels"] == join.sizes()["predictions"] == 0


def test_ttl_expiry_counts_expired_then_late_then_forgets() -> None:
    join, clock = make(ttl_s=60, label_hold_s=30)
    join.add_predictions([pred("r")])
    clock.advance(59.5)
    join.expire()
    assert join.counts["expired"] == 0 and len(join) == 1
    clock.advance(0.5)
    join.expire()
    assert nonzero(join) == {"expired": 1} and len(join) == 0
    assert join.add_labels([lab("r")]) == []
    # Late, not unmatched: the id is remembered as expired, and nothing is held for it.
    assert nonzero(join) == {"expired": 1, "late": 1}
    assert join.sizes()["held_labels"] == 0
    # Once the memory of expired ids has itself expired, a label is just unknown: held, then unmatched.
    clock.advance(60)
    join.add_labels([lab("r")])
    assert join.sizes() == {"predictions": 0, "held_labels": 1, "joined_ids": 0, "gone_ids": 0}
    clock.advance(30)
    join.expire()
    assert nonzero(join) == {"expired": 1, "late": 1, "unmatched": 1}


def test_prediction_that_comes_again_after_expiry_is_stored_and_no_longer_gone() -> None:
    join, clock = make(ttl_s=60)
    join.add_predictions([pred("r", prediction="old")])
    clock.advance(60)
    join.expire()
    assert join.sizes()["gone_ids"] == 1
    join.add_predictions([pred("r", prediction="new")])
    assert join.sizes()["gone_ids"] == 0 and join.sizes()["predictions"] == 1
    assert [j.prediction.prediction for j in join.add_labels([lab("r")])] == ["new"]
    assert nonzero(join) == {"expired": 1, "joined": 1}


def test_hold_expiry_counts_unmatched_and_prediction_then_waits_alone() -> None:
    join, clock = make(ttl_s=60, label_hold_s=30)
    join.add_labels([lab("r")])
    clock.advance(30)
    assert join.add_predictions([pred("r")]) == []
    assert nonzero(join) == {"unmatched": 1}
    assert join.sizes()["predictions"] == 1 and join.sizes()["held_labels"] == 0


def test_model_mismatch_is_unmatched_and_leaves_the_prediction() -> None:
    join, _ = make()
    join.add_predictions([pred("r", model="m")])
    assert join.add_labels([lab("r", model="other")]) == []
    assert nonzero(join) == {"unmatched": 1} and join.sizes()["predictions"] == 1
    assert [j.label for j in join.add_labels([lab("r", "right", model="m")])] == ["right"]
    # An early label for another model does not join the prediction that arrives later.
    join.add_labels([lab("s", model="other")])
    assert join.add_predictions([pred("s", model="m")]) == []
    assert nonzero(join) == {"joined": 1, "unmatched": 2}
    assert join.sizes()["predictions"] == 1 and join.sizes()["held_labels"] == 0


def test_duplicates_are_counted_and_first_one_wins() -> None:
    join, clock = make()
    join.add_predictions([pred("r")])
    assert len(join.add_labels([lab("r"), lab("r")])) == 1
    clock.advance(10)
    join.add_labels([lab("r")])
    assert nonzero(join) == {"joined": 1, "duplicate": 2}
    # A second early label is a duplicate; the first one held is the one that joins.
    join.add_labels([lab("e", "first"), lab("e", "second")])
    assert [j.label for j in join.add_predictions([pred("e")])] == ["first"]
    # A redelivered prediction, pending or already joined, is a duplicate and is not stored again.
    join.add_predictions([pred("p"), pred("p"), pred("e")])
    assert nonzero(join) == {"joined": 2, "duplicate": 5}
    assert join.sizes()["predictions"] == 1


def test_eviction_at_max_entries_drops_oldest_and_remembers_it() -> None:
    join, _ = make(max_entries=3)
    join.add_predictions([pred(f"p{i}") for i in range(5)])
    assert join.counts["evicted"] == 2 and join.sizes()["predictions"] == 3
    assert join.add_labels([lab("p0")]) == []  # evicted: late, not held
    assert [j.request_id for j in join.add_labels([lab("p2"), lab("p4")])] == ["p2", "p4"]
    assert nonzero(join) == {"evicted": 2, "late": 1, "joined": 2}
    join.add_labels([lab(f"e{i}") for i in range(4)])
    assert join.sizes()["held_labels"] == 3 and join.counts["evicted"] == 3
    assert join.add_predictions([pred("e0")]) == []  # its label was the one evicted
    assert [j.request_id for j in join.add_predictions([pred("e3")])] == ["e3"]


def scripted_ops(seed: int, n: int) -> list[tuple[str, Any]]:
    """A random mix of predictions, labels (early, late, wrong model, duplicate) and clock steps."""
    rng = random.Random(seed)
    ops: list[tuple[str, Any]] = []
    for _ in range(n):
        r = rng.random()
        ids = [f"r{rng.randrange(400)}" for _ in range(rng.randrange(1, 8))]
        if r < 0.4:
            ops.append(("p", [pred(i, model=rng.choice("mmmn"), timestamp=float(rng.randrange(100))) for i in ids]))
        elif r < 0.8:
            ops.append(("l", [lab(i, rng.choice("xy"), model=rng.choice("mmmn")) for i in ids]))
        else:
            ops.append(("t", rng.choice([0.5, 1.0, 5.0, 20.0])))
    return ops


def apply(join: LabelJoin, clock: FakeClock, op: tuple[str, Any]) -> list[JoinedLabel]:
    kind, arg = op
    if kind == "p":
        return join.add_predictions(arg)
    if kind == "l":
        return join.add_labels(arg)
    clock.advance(arg)
    return []


def test_snapshot_restore_continue_equals_uninterrupted_run() -> None:
    ops = scripted_ops(seed=7, n=3000)
    cut = len(ops) // 2

    straight, clock_a = make(ttl_s=30, max_entries=60, label_hold_s=10)
    out_a = [apply(straight, clock_a, op) for op in ops]

    first, clock_b = make(ttl_s=30, max_entries=60, label_hold_s=10)
    out_b = [apply(first, clock_b, op) for op in ops[:cut]]
    state = codec.decode(codec.encode(first.snapshot()))  # through the checkpoint codec
    # A new process: its monotonic clock has nothing to do with the old one's. The outcome counts
    # are the process's (its checkpoint part), not the join's.
    clock_c = FakeClock(t=7.0)
    resumed = LabelJoin(ttl_s=30, max_entries=60, label_hold_s=10, clock=clock_c, counts=dict(first.counts))
    resumed.restore(state)
    assert codec.decode(codec.encode(resumed.snapshot())) == state
    out_b += [apply(resumed, clock_c, op) for op in ops[cut:]]

    assert all(straight.counts[k] > 0 for k in COUNTS), straight.counts  # the script reaches every path
    assert out_b == out_a
    assert resumed.counts == straight.counts
    assert resumed.sizes() == straight.sizes()
    assert codec.decode(codec.encode(resumed.snapshot())) == codec.decode(codec.encode(straight.snapshot()))


def test_snapshot_stores_ages_not_clock_readings() -> None:
    join, clock = make()
    clock.t = 5_000_000.0
    join.add_predictions([pred("r", probabilities={"cat": 1.0}, slices=("eu", "mobile"))])
    join.add_labels([lab("early")])
    clock.advance(2.5)
    state = join.snapshot()
    assert state["predictions"][0][:2] == ["r", 2.5]
    assert state["held_labels"][0][:2] == ["early", 2.5]
    assert codec.decode(codec.encode(state))["predictions"][0][7] == ["eu", "mobile"]


def test_restore_into_smaller_cap_evicts_oldest() -> None:
    join, _ = make(max_entries=10)
    join.add_predictions([pred(f"p{i}") for i in range(10)])
    small, _ = make(max_entries=4)
    small.restore(join.snapshot())
    assert small.sizes()["predictions"] == 4 and small.counts["evicted"] == 6
    assert [j.request_id for j in small.add_labels([lab("p9")])] == ["p9"]
    # The memory of evicted ids is capped too: p5 is remembered (late), p0 is not (held).
    assert small.add_labels([lab("p5"), lab("p0")]) == [] and small.counts["late"] == 1
    assert small.sizes()["held_labels"] == 1


def test_memory_stays_bounded_under_a_million_unmatched_label_ids() -> None:
    # Chunks smaller than the cap, and a hold of 3 chunks: labels leave both by eviction and by expiry.
    cap = 5_000
    join, clock = make(ttl_s=60, max_entries=cap, label_hold_s=3)
    total, chunk = 1_000_000, 2_000
    for start in range(0, total, chunk):
        join.add_labels([(f"u{i}", "m", 1, None) for i in range(start, start + chunk)])
        clock.advance(1)
        sizes = join.sizes()
        assert sizes["held_labels"] <= cap and sizes["predictions"] == 0
    counts = join.counts
    assert counts["unmatched"] + counts["evicted"] + join.sizes()["held_labels"] == total
    assert counts["unmatched"] > 0 and counts["evicted"] > 0
    join.expire()
    clock.advance(2)
    join.expire()
    assert len(join) == 0


op_strategy = st.one_of(
    st.tuples(st.just("p"), st.lists(st.tuples(st.integers(0, 30), st.sampled_from("mn")), max_size=8)),
    st.tuples(st.just("l"), st.lists(st.tuples(st.integers(0, 30), st.sampled_from("mn")), max_size=8)),
    st.tuples(st.just("t"), st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0])),
)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(op_strategy, max_size=60),
    max_entries=st.integers(1, 6),
    ttl_s=st.sampled_from([1.0, 4.0, 20.0]),
    hold_s=st.sampled_from([0.5, 2.0, 20.0]),
)
def test_sizes_never_exceed_bounds_and_every_record_is_accounted(
    ops: list[tuple[str, Any]], max_entries: int, ttl_s: float, hold_s: float
) -> None:
    join, clock = make(ttl_s=ttl_s, max_entries=max_entries, label_hold_s=hold_s)
    fed = 0
    for kind, arg in ops:
        before = join.counts["joined"]
        if kind == "p":
            out = join.add_predictions([pred(f"r{i}", model=m) for i, m in arg])
        elif kind == "l":
            out = join.add_labels([lab(f"r{i}", model=m) for i, m in arg])
        else:
            clock.advance(arg)
            join.expire()
            out = []
        fed += len(arg) if kind != "t" else 0
        assert len(out) == join.counts["joined"] - before
        sizes = join.sizes()
        assert all(size <= max_entries for size in sizes.values()), sizes
        assert len(join) == sizes["predictions"] + sizes["held_labels"]
        # Each prediction and each label ends in exactly one counter or is still waiting; a join
        # closes two records.
        c = join.counts
        closed = 2 * c["joined"] + c["late"] + c["unmatched"] + c["expired"] + c["evicted"] + c["duplicate"]
        assert closed + len(join) == fed
