"""Canary snapshots: a restored canary continues exactly like one that never stopped.

A partition's `Canary` is fed here the way `PartitionState` feeds it (rows for new keys, then a
poll's columnar batch, then the grades of labelled predictions), and its snapshot goes through
the checkpoint codec, as a store keeps it.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from daemon.config import CanaryConfig, from_mapping
from daemon.ingest.batch import Key, build
from daemon.ingest.events import InferenceEvent
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.monitors.canary import METRICS, TAIL, Canary
from daemon.runtime.app import build_pipeline
from daemon.state import codec
from detectors.sequential import SequentialDifference
from tests.unit.state_harness import plain

BATCH = 250
N_EVENTS = 12_000
# The canary's version changes here, which restarts its comparison.
NEW_VERSION_AT = 7_000

# Events' times: 20 a second from T0, so a poll spans 12.5 s.
T0 = 1_700_000_000.0
# A label counts for the canary once its model is this far past its prediction (event time):
# some three polls, so that graded predictions wait in every snapshot.
LABEL_WAIT_S = 30.0
SETTINGS = CanaryConfig(label_wait_seconds=LABEL_WAIT_S)
# A grade: a labelled prediction's key, wrong?, its time, the label's time.
Grade = tuple[Key, bool, float, float]
# A poll: its events, and the grades of labelled predictions that arrive with it.
Poll = tuple[list[InferenceEvent], list[Grade]]


def polls(seed: int = 7) -> list[Poll]:
    """Model m (control v1; canary v2, then v3 from NEW_VERSION_AT; the canary 30% slower) and
    model n (blue and green, alike; no variant named like a baseline: it is picked at a look; an
    LLM, with TTFT, output tokens and time per output token).
    Each poll carries grades of some predictions of the poll before (late labels: a few are for
    a version that has gone by then, which the canary must drop)."""
    rng = random.Random(seed)
    llm = random.Random(seed + 1)  # n's LLM measures: draws of their own, so m's stay as they were
    out: list[Poll] = []
    pending: list[Grade] = []
    for start in range(0, N_EVENTS, BATCH):
        events = []
        for i in range(start, start + BATCH):
            if rng.random() < 0.6:
                canary = rng.random() < 0.5
                model, variant = "m", "canary" if canary else "control"
                version = ("3" if i >= NEW_VERSION_AT else "2") if canary else "1"
                slow = 1.3 if canary else 1.0
            else:
                model, variant, version, slow = "n", "blue" if rng.random() < 0.7 else "green", "1", 1.0
            error = rng.random() < 0.01
            ttft, tokens = (llm.lognormvariate(5.0, 0.3), llm.randint(2, 400)) if model == "n" else (None, None)
            events.append(
                InferenceEvent(
                    request_id=f"r{i}",
                    model=model,
                    version=version,
                    variant=variant,
                    latency_ms=rng.lognormvariate(3.0, 0.3) * slow,
                    status="error" if error else "ok",
                    error_type="Timeout" if error else None,
                    score=rng.random(),
                    ttft_ms=ttft,
                    tokens_out=tokens,
                    tpot_ms=None if tokens is None else llm.lognormvariate(3.0, 0.2),
                    timestamp=T0 + i / 20,
                )
            )
        out.append((events, pending))
        pending = [_grade(e, rng.random() < 0.1) for e in events if rng.random() < 0.4]
    return out


def _grade(e: InferenceEvent, wrong: bool, delay_s: float = 5.0) -> Grade:
    assert isinstance(e.timestamp, float)
    return (e.model, e.version, e.variant), wrong, e.timestamp, e.timestamp + delay_s


class Partition:
    """A partition's canary, fed as `PartitionState` feeds it; restored as `PartitionState.restore`
    restores it (the canary's part first, then the rows of the shard's keys)."""

    def __init__(self, settings: CanaryConfig, checkpoint: dict[str, Any] | None = None) -> None:
        self.keys: list[Key] = []
        self.rows: dict[Key, int] = {}
        self.canary = Canary(settings, self.keys)
        self.position = 0
        if checkpoint is not None:
            self.canary.restore(checkpoint["canary"])
            self._add([(str(k[0]), str(k[1]), str(k[2])) for k in checkpoint["keys"]])
            self.position = int(checkpoint["position"])

    def _add(self, keys: list[Key]) -> None:
        for key in keys:
            self.rows[key] = len(self.keys)
            self.keys.append(key)
        self.canary.add_rows(len(keys))

    def feed(self, events: list[InferenceEvent], graded: list[Grade] | None = None) -> list[dict[str, Any]]:
        """Labels before events, as the pipeline folds a poll."""
        by_key: dict[Key, list[Grade]] = {}
        for g in graded or []:
            by_key.setdefault(g[0], []).append(g)
        for key, grades in by_key.items():
            wrong, times, label_times = ([g[i] for g in grades] for i in (1, 2, 3))
            self.canary.add_graded(self.rows[key], wrong, times, label_times)
        keys = [(e.model, e.version, e.variant) for e in events]
        self._add([k for k in dict.fromkeys(keys) if k not in self.rows])
        n = len(events)
        batch = build(events, [0] * n, list(range(self.position, self.position + n)), [None] * n)
        self.position += n
        return self.canary.update(np.array([self.rows[k] for k in keys], dtype=np.int64), batch)

    def run(self, stream: list[Poll]) -> list[dict[str, Any]]:
        timeline: list[dict[str, Any]] = []
        for events, graded in stream:
            timeline += self.feed(events, graded)
        return timeline

    def checkpoint(self) -> dict[str, Any]:
        """As stored: the keys and the canary's part, through the checkpoint codec."""
        state = {"keys": [list(k) for k in self.keys], "position": self.position, "canary": self.canary.snapshot()}
        stored: dict[str, Any] = codec.decode(codec.encode(state))
        return stored


@pytest.fixture(scope="module")
def stream() -> list[Poll]:
    return polls()


@pytest.fixture(scope="module")
def uninterrupted(stream: list[Poll]) -> tuple[list[dict[str, Any]], dict[str, Any], Any]:
    part = Partition(SETTINGS)
    timeline = part.run(stream)
    return timeline, part.canary.report(), plain(part.canary.snapshot())


def _poll_of(index: int) -> int:
    return index // BATCH


def test_the_stream_exercises_what_a_snapshot_must_carry(
    uninterrupted: tuple[list[dict[str, Any]], dict[str, Any], Any],
) -> None:
    timeline, report, _ = uninterrupted
    m = [(e["version"], e["verdict"], e["reset"]) for e in timeline if e["model"] == "m"]
    # Fails on the regression, restarts on the new version, and fails again.
    assert m[0] == ("2", "inconclusive", True)
    assert ("2", "fail", False) in m
    assert ("3", "inconclusive", True) in m
    assert m[-1] == ("3", "fail", False)
    last_m = [e for e in timeline if e["model"] == "m"][-1]
    assert any(r.startswith("latency +") for r in last_m["reasons"])
    metrics = report["models"]["m"]["variants"]["canary"]["metrics"]
    assert set(metrics) == set(METRICS) - {m for m in METRICS if m.startswith(("ttft", "tpot"))}
    assert all(r["judged"] for r in metrics.values())
    # n is an LLM: judged on TTFT and time per output token, its end-to-end latency only reported.
    n_metrics = report["models"]["n"]["variants"]["green"]["metrics"]
    assert {"ttft", "tpot", "latency"} <= set(n_metrics)
    assert sorted(name for name, r in n_metrics.items() if not r["judged"]) == [
        "latency",
        "latency_tail",
        "latency_tail_share",
    ]
    quantiles = report["models"]["n"]["variants"]["green"]["quantiles"]
    assert set(quantiles) == {"latency", "ttft", "tpot"} and set(quantiles["ttft"]) == {"p50", "p90", "p99"}
    p50 = quantiles["ttft"]["p50"]
    assert p50["lower"] < p50["effect"] < p50["upper"] and p50["lower"] < 0 < p50["upper"]
    # n's baseline is picked at a look (the busier arm); its alike arms never fail.
    assert report["models"]["n"]["baseline"] == "blue"
    assert all(e["verdict"] != "fail" for e in timeline if e["model"] == "n")
    # Where the splits below fall (in polls fed before the snapshot).
    first_fail = next(e["index"] for e in timeline if e["verdict"] == "fail")
    restart = next(e["index"] for e in timeline if e["version"] == "3")
    assert (_poll_of(first_fail), _poll_of(restart), _poll_of(last_m["index"])) == (FIRST_FAIL, RESTART, LAST_FAIL)
    n_first = next(e["index"] for e in timeline if e["model"] == "n")
    assert _poll_of(n_first) == N_BASELINE


# The polls of the first fail, the restart (v3) and the last fail, and of n's first look with a
# baseline (picked at a look: model n goes event by event until then). Checked above.
FIRST_FAIL, RESTART, LAST_FAIL, N_BASELINE = 7, 28, 34, 8


# Splits (in polls fed before the snapshot): before any look; while m's baseline warms up its tail
# threshold (halfway, and one poll before it is complete) and n has no baseline yet; just before
# and after the first fail, which is just before n's baseline is picked; while n's baseline warms
# up (its first poll, one poll before it is complete); just before and after the version change;
# around the second fail; after the last poll.
@pytest.mark.parametrize("split", [0, 1, 3, 6, 7, 8, 9, 14, 28, 29, 34, 35, 47, 48])
def test_a_restore_continues_exactly_like_an_uninterrupted_run(
    stream: list[Poll],
    uninterrupted: tuple[list[dict[str, Any]], dict[str, Any], Any],
    split: int,
) -> None:
    timeline_a, report_a, snapshot_a = uninterrupted
    before = Partition(SETTINGS)
    timeline_b = before.run(stream[:split])
    checkpoint = before.checkpoint()

    after = Partition(SETTINGS, checkpoint)
    assert plain(after.canary.snapshot()) == plain(before.canary.snapshot())
    assert after.canary.report() == before.canary.report()
    timeline_b += after.run(stream[split:])

    assert timeline_b == timeline_a
    assert after.canary.report() == report_a
    assert plain(after.canary.snapshot()) == snapshot_a


def _rearrived(stream: list[Poll], seed: int, late: float = 0.0) -> list[Poll]:
    """The same events and grades, each grade moved to a random poll from the one after its
    prediction's to the last still in time (before its model's clock, the newest event time, is
    past its second + LABEL_WAIT_S: polls fold labels first); with probability `late`, later."""
    rng = random.Random(seed)
    out: list[Poll] = [(events, []) for events, _ in stream]
    for i, (_, grades) in enumerate(stream):
        for g in grades:
            # The clock before poll j is the time of event j * BATCH - 1 (at most).
            last = int((math.floor(g[2]) + LABEL_WAIT_S - T0) * 20 + 1) // BATCH
            j = rng.randint(i, last) if rng.random() >= late else last + 1
            if j < len(out):
                out[j][1].append(g)
    return out


def test_labels_count_at_the_same_looks_whenever_they_arrive(
    stream: list[Poll], uninterrupted: tuple[list[dict[str, Any]], dict[str, Any], Any]
) -> None:
    """Issue 16, part 4: accuracy's p-value does not depend on which poll brought a label, as long
    as it came in time; one that did not is counted as late and left out."""
    timeline, report, _ = uninterrupted
    accuracy = report["models"]["m"]["variants"]["canary"]["metrics"]["accuracy"]
    assert accuracy["lower"] < accuracy["effect"] < accuracy["upper"]  # read, with labels in
    for seed in (1, 2):
        part = Partition(SETTINGS)
        assert part.run(_rearrived(stream, seed)) == timeline
        assert part.canary.report() == report
    assert report["models"]["m"]["late_labels"] == 0
    part = Partition(SETTINGS)
    part.run(_rearrived(stream, 3, late=0.05))
    late = part.canary.report()["models"]["m"]
    assert 0 < late["late_labels"] < 0.1 * sum(len(grades) for _, grades in stream)
    assert late["variants"]["canary"]["metrics"]["accuracy"] != accuracy


def test_a_label_timed_past_the_wait_is_late() -> None:
    part = Partition(SETTINGS)
    events = [InferenceEvent(request_id=f"r{i}", model="m", variant=v, timestamp=T0 + i) for i, v in enumerate("ab")]
    part.feed(events)
    part.feed([], [_grade(events[0], False, delay_s=LABEL_WAIT_S + 1), _grade(events[1], False)])
    assert part.canary.models["m"].late_labels == 1
    assert part.canary.pending.snapshot() == [[1, math.floor(T0 + 1), 1.0, 1.0]]


def test_the_snapshot_is_a_copy(stream: list[Poll]) -> None:
    """A checkpoint is encoded on the store's writer thread while the loop goes on: later polls
    must not change a snapshot already taken."""
    part = Partition(SETTINGS)
    part.run(stream[:10])
    snapshot = part.canary.snapshot()
    frozen = plain(snapshot)
    part.run(stream[10:12])
    assert plain(snapshot) == frozen
    assert plain(part.canary.snapshot()) != frozen


def test_sequential_difference_keeps_its_running_minimum() -> None:
    test = SequentialDifference(0.05, 0.01, planned=1_000)
    assert test.look(400, 0.0, 1.0, 400, 0.3, 1.0) is not None
    low = test.p_value
    assert low < 1.0
    copy = SequentialDifference.from_snapshot(codec.decode(codec.encode(test.snapshot())))
    assert copy.snapshot() == test.snapshot()
    # A look that alone would give a higher p-value keeps the minimum in both.
    assert test.look(800, 0.0, 1.0, 800, 0.0, 1.0) == copy.look(800, 0.0, 1.0, 800, 0.0, 1.0)
    assert copy.p_value == low


# -- a malformed canary part: refused, and the pipeline keeps what it held -------------------


def _pipeline_records(n: int) -> list[RawRecord]:
    rng = random.Random(11)
    out = []
    for i in range(n):
        canary = i % 2 == 1
        ev: dict[str, Any] = {"request_id": f"r{i}", "model": "m", "variant": "canary" if canary else "control"}
        ev |= {"version": "2" if canary else "1", "latency_ms": rng.lognormvariate(3.0, 0.3) * (1.3 if canary else 1)}
        out.append(RawRecord("events", 0, i, None, None, json.dumps(ev).encode()))
    return out


def _duplicate_arm(c: dict[str, Any]) -> None:
    c["arms"].append(c["arms"][0])


def _duplicate_arm_with_its_figures(c: dict[str, Any]) -> None:
    c["arms"].append(c["arms"][0])
    c["requests"] = np.r_[c["requests"], c["requests"][:1]]
    c["moments"] = np.concatenate([c["moments"], c["moments"][:1]])


CORRUPTIONS: list[tuple[str, Callable[[dict[str, Any]], object]]] = [
    ("no moments", lambda c: c.pop("moments")),
    ("unknown verdict", lambda c: c["models"][0]["comparisons"][0].update(verdict="maybe")),
    ("requests as text", lambda c: c["models"][0].update(requests="12")),
    ("unknown metric", lambda c: c["models"][0]["comparisons"][0]["metrics"][0].__setitem__(0, "speed")),
    ("a comparison twice", lambda c: c["models"][0]["comparisons"].append(c["models"][0]["comparisons"][0])),
    ("tests of an unknown metric", lambda c: c["models"][0]["comparisons"][0]["tests"].update(speed=[])),
]
DUPLICATE_ARMS = [
    pytest.param(
        _duplicate_arm,
        id="an arm twice",
    ),
    pytest.param(
        _duplicate_arm_with_its_figures,
        id="an arm twice with its figures",
    ),
]


def _refused_and_nothing_changes(corrupt: Callable[[dict[str, Any]], object]) -> None:
    pipeline = build_pipeline(from_mapping({"drift": {"enabled": False}}))
    pipeline.process(chunks_of(_pipeline_records(1_500)))
    good = codec.decode(codec.encode(pipeline.snapshot()))
    assert good["partitions"][0]["canary"]["models"][0]["comparisons"][0]["metrics"]  # a comparison with readings
    bad = codec.decode(codec.encode(good["partitions"][0]))
    corrupt(bad["canary"])
    # The handover turns these into a CheckpointError naming the partition and the store.
    with pytest.raises((ValueError, KeyError, TypeError)):
        pipeline.restore_partition(bad)
    assert plain(pipeline.snapshot()) == plain(good)
    assert pipeline.canary_report("m") is not None


@pytest.mark.parametrize("corrupt", [c for _, c in CORRUPTIONS], ids=[name for name, _ in CORRUPTIONS])
def test_a_malformed_canary_part_is_refused_and_changes_nothing(corrupt: Callable[[dict[str, Any]], object]) -> None:
    _refused_and_nothing_changes(corrupt)


@pytest.mark.parametrize("corrupt", DUPLICATE_ARMS)
def test_an_arm_listed_twice_is_refused(corrupt: Callable[[dict[str, Any]], object]) -> None:
    _refused_and_nothing_changes(corrupt)


# -- the tail threshold: learnt from the baseline's first requests, counted after them --------


@pytest.mark.parametrize("cut", [1_000, 7])
def test_latency_tail_counts_only_requests_after_the_threshold_is_set(cut: int) -> None:
    settings = CanaryConfig(min_requests=100)
    part = Partition(settings)
    rng = random.Random(3)
    events = [
        InferenceEvent(
            request_id=f"r{i}",
            model="m",
            variant="canary" if i % 2 else "control",
            version="2" if i % 2 else "1",
            latency_ms=rng.lognormvariate(3.0, 0.3),
        )
        for i in range(1_000)
    ]
    for start in range(0, len(events), cut):
        part.feed(events[start : start + cut])
    c = part.canary
    # Control's 100th request (position 198) completes the warm-up: its line is control's p99 over
    # those 100, and only the requests after it count, the ones past the line.
    lines = c.models["m"].tail_lines
    assert lines is not None
    warmup = sorted(e.latency_ms for e in events[:199:2] if e.latency_ms is not None)
    assert lines[0] == warmup[98] and all(math.isnan(x) for x in lines[1:])  # no TTFT, no TPOT
    past = {v: sum(1 for e in events[199:] if e.variant == v and (e.latency_ms or 0) > lines[0]) for v in arms_of(c)}
    assert past["control"] > 0 and past["canary"] > 0
    arms = arms_of(c)
    tail = TAIL["latency"]
    assert (c.moments[arms["control"], tail, 0], c.moments[arms["canary"], tail, 0]) == (
        past["control"],
        past["canary"],
    )


def arms_of(c: Canary) -> dict[str, int]:
    return dict(zip(c.arm_variant, range(len(c.arm_variant)), strict=True))


def test_an_older_snapshot_restores_with_its_tail_share(stream: list[Poll]) -> None:
    """Before the LLM measures a snapshot had five metrics, one latency tail line and warm-up
    latencies only, and its latency_tail was the share of requests over the line: it comes back
    as latency_tail_share; the new measures start empty."""
    before = Partition(SETTINGS)
    before.run(stream[:20])
    state = before.checkpoint()
    part = state["canary"]
    legacy = ("error_rate", "latency", "latency_tail_share", "accuracy", "prediction_shift")
    part["moments"] = part["moments"][:, [METRICS.index(name) for name in legacy]]
    del part["metrics"], part["hist"], part["clocks"], part["pending"]

    def old_name(name: str) -> str:
        return "latency_tail" if name == "latency_tail_share" else name

    for m in part["models"]:
        lines = m.pop("tail_lines")
        m["tail_threshold"] = None if lines is None else lines[0]
        m["warmup"] = [row[0] for row in m["warmup"]]
        del m["late_labels"]
        for comp in m["comparisons"]:
            comp["tests"] = {old_name(k): v for k, v in comp["tests"].items() if k in legacy}
            comp["metrics"] = [[old_name(r[0]), *r[1:4]] for r in comp["metrics"] if r[0] in legacy]
            del comp["failing"]
    after = Partition(SETTINGS, state)
    c, old = after.canary, before.canary
    for name in legacy:
        assert np.array_equal(c.moments[:, METRICS.index(name)], old.moments[:, METRICS.index(name)])
    assert not c.moments[:, TAIL["latency"]].any() and not c.hist.any()
    comp, old_comp = c.models["m"].comparisons["canary"], old.models["m"].comparisons["canary"]
    assert comp.tests["latency_tail_share"][0].snapshot() == old_comp.tests["latency_tail_share"][0].snapshot()
    assert set(comp.metrics) == set(old_comp.metrics) & set(legacy)
    lines, old_lines = c.models["m"].tail_lines, old.models["m"].tail_lines
    assert lines is not None and old_lines is not None  # set by poll 20
    assert lines[0] == old_lines[0] and math.isnan(lines[1]) and math.isnan(lines[2])
    after.run(stream[20:])  # and it goes on
