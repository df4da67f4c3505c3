from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import RetrainingPolicy
from daemon.retraining.outbox import Outbox
from daemon.retraining.triggers import Alert, Triggers, trigger_id

ENDPOINTS = ("ml-platform", "audit")
T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def alert(
    name: str = "ModelDrift",
    status: str = "firing",
    starts_at: float = T0,
    fingerprint: str = "fp1",
    **labels: str,
) -> Alert:
    labels = {"alertname": name, "model": "fraud", "version": "v7", **labels}
    return Alert(
        alertname=name,
        status=status,  # type: ignore[arg-type]
        labels={k: v for k, v in labels.items() if v},
        annotations={"summary": "drift"},
        starts_at=starts_at,
        fingerprint=fingerprint,
        generator_url="http://prometheus:9090/graph",
    )


def policy(**kw: Any) -> RetrainingPolicy:
    return RetrainingPolicy(**{"name": "drift", "alerts": ("ModelDrift",), **kw})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outbox(tmp_path: Path, clock: FakeClock) -> Iterator[Outbox]:
    box = Outbox(str(tmp_path / "outbox.sqlite3"), clock=clock)
    yield box
    box.close()


def make(outbox: Outbox, clock: FakeClock, *policies: RetrainingPolicy) -> Triggers:
    return Triggers(policies or (policy(),), outbox, ENDPOINTS, clock=clock)


def nonzero(t: Triggers) -> dict[tuple[str, str], int]:
    return {k: v for k, v in t.counts.items() if v}


def test_firing_alert_fires_one_trigger_with_a_delivery_per_endpoint(outbox: Outbox, clock: FakeClock) -> None:
    woken: list[int] = []
    t = Triggers((policy(),), outbox, ENDPOINTS, clock=clock, on_fired=lambda: woken.append(1))
    clock.t = T0 + 5
    t.on_alerts([alert()])
    assert nonzero(t) == {("drift", "fired"): 1}
    assert woken == [1]
    due = outbox.due(ENDPOINTS)
    tid = trigger_id("drift", "fraud", "fp1", T0)
    assert [(d.trigger_id, d.endpoint) for d in due] == [(tid, "audit"), (tid, "ml-platform")]
    assert due[0].body == due[1].body
    body = json.loads(due[0].body)
    assert body["type"] == "inferwatch.retraining.triggered"
    assert body["timestamp"] == "2024-05-01T12:00:05.000Z"
    assert body["data"] == {
        "trigger_id": tid,
        "policy": "drift",
        "model": "fraud",
        "version": "v7",
        "variant": None,
        "alertname": "ModelDrift",
        "labels": {"alertname": "ModelDrift", "model": "fraud", "version": "v7"},
        "annotations": {"summary": "drift"},
        "starts_at": "2024-05-01T12:00:00.000Z",
        "fingerprint": "fp1",
        "generator_url": "http://prometheus:9090/graph",
        "sustained_seconds": 0.0,
    }
    assert t.pending == 0


def test_trigger_id_is_stable_and_distinguishes_its_fields() -> None:
    tid = trigger_id("drift", "fraud", "fp1", T0)
    assert tid == trigger_id("drift", "fraud", "fp1", T0)
    assert tid.startswith("msg_") and len(tid) == 36
    others = {
        trigger_id("drift2", "fraud", "fp1", T0),
        trigger_id("drift", "fraud2", "fp1", T0),
        trigger_id("drift", "fraud", "fp2", T0),
        trigger_id("drift", "fraud", "fp1", T0 + 1),
    }
    assert tid not in others and len(others) == 4


def test_resends_are_duplicates_even_after_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    path = str(tmp_path / "outbox.sqlite3")
    box = Outbox(path, clock=clock)
    t = make(box, clock)
    t.on_alerts([alert()])
    for _ in range(5):
        clock.t += 3600
        t.on_alerts([alert()])
    assert nonzero(t) == {("drift", "fired"): 1, ("drift", "duplicate"): 5}
    assert len(box.due(ENDPOINTS)) == 2
    box.close()

    box = Outbox(path, clock=clock)
    t = make(box, clock)
    clock.t += 3 * 86_400  # past the cooldown: still the same firing, so still a duplicate
    t.on_alerts([alert()])
    assert nonzero(t) == {("drift", "duplicate"): 1}
    assert {d.trigger_id for d in box.due(ENDPOINTS)} == {trigger_id("drift", "fraud", "fp1", T0)}
    box.close()


def test_cooldown_per_policy_and_model_survives_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    path = str(tmp_path / "outbox.sqlite3")
    box = Outbox(path, clock=clock)
    t = make(box, clock, policy(cooldown_seconds=3600))
    t.on_alerts([alert()])
    box.close()

    box = Outbox(path, clock=clock)
    t = make(box, clock, policy(cooldown_seconds=3600))
    clock.t = T0 + 600
    refired = alert(starts_at=T0 + 590)  # resolved and fired again: a new firing
    t.on_alerts([refired, alert(fingerprint="fp2", model="churn")])
    assert nonzero(t) == {("drift", "cooldown"): 1, ("drift", "fired"): 1}  # churn is another model
    clock.t = T0 + 3599
    t.on_alerts([refired])
    assert nonzero(t) == {("drift", "cooldown"): 2, ("drift", "fired"): 1}
    clock.t = T0 + 3600
    t.on_alerts([refired])
    assert nonzero(t) == {("drift", "cooldown"): 2, ("drift", "fired"): 2}
    ids = {d.trigger_id for d in box.due(ENDPOINTS)}
    assert trigger_id("drift", "fraud", "fp1", T0 + 590) in ids
    assert len(ids) == 3
    box.close()


def test_sustained_alert_fires_only_after_sustained_seconds(outbox: Outbox, clock: FakeClock) -> None:
    t = make(outbox, clock, policy(sustained_seconds=60))
    clock.t = T0 + 10
    t.on_alerts([alert()])
    assert t.pending == 1
    clock.t = T0 + 59.9
    t.tick()
    t.on_alerts([alert()])  # a re-send changes nothing
    assert nonzero(t) == {} and outbox.due(ENDPOINTS) == []
    clock.t = T0 + 60
    t.tick()
    assert nonzero(t) == {("drift", "fired"): 1}
    assert t.pending == 0
    assert len(outbox.due(ENDPOINTS)) == 2


def test_alert_that_started_long_ago_fires_at_once(outbox: Outbox, clock: FakeClock) -> None:
    t = make(outbox, clock, policy(sustained_seconds=60))
    clock.t = T0 + 3600  # e.g. re-sent by Alertmanager after a restart of the daemon
    t.on_alerts([alert()])
    assert nonzero(t) == {("drift", "fired"): 1}


def test_resolved_before_sustained_fires_nothing(outbox: Outbox, clock: FakeClock) -> None:
    t = make(outbox, clock, policy(sustained_seconds=60))
    t.on_alerts([alert()])
    clock.t = T0 + 30
    t.on_alerts([alert(status="resolved")])
    clock.t = T0 + 120
    t.tick()
    assert nonzero(t) == {("drift", "resolved_early"): 1}
    assert outbox.due(ENDPOINTS) == [] and t.pending == 0


def test_resolved_after_firing_is_not_early(outbox: Outbox, clock: FakeClock) -> None:
    t = make(outbox, clock)
    t.on_alerts([alert()])
    t.on_alerts([alert(status="resolved")])
    assert nonzero(t) == {("drift", "fired"): 1}


def test_alert_without_model_label_is_counted_and_ignored(outbox: Outbox, clock: FakeClock) -> None:
    t = make(outbox, clock)
    t.on_alerts([alert(model="")])
    assert nonzero(t) == {("drift", "no_model"): 1}
    assert outbox.due(ENDPOINTS) == [] and t.pending == 0


def test_policy_endpoints_subset(outbox: Outbox, clock: FakeClock) -> None:
    t = make(outbox, clock, policy(endpoints=("audit",)))
    t.on_alerts([alert()])
    assert [d.endpoint for d in outbox.due(ENDPOINTS)] == ["audit"]


def test_unrelated_alerts_are_ignored(outbox: Outbox, clock: FakeClock) -> None:
    t = make(outbox, clock)
    t.on_alerts([alert(name="HighLatency"), alert(name="HighLatency", model="")])
    assert nonzero(t) == {} and t.pending == 0
    assert outbox.due(ENDPOINTS) == []


def test_every_matching_policy_fires(outbox: Outbox, clock: FakeClock) -> None:
    t = make(
        outbox,
        clock,
        policy(),
        policy(name="drift-slow", alerts=("ModelDrift", "ScoreDrift"), sustained_seconds=600),
        policy(name="latency", alerts=("HighLatency",)),
    )
    t.on_alerts([alert()])
    assert nonzero(t) == {("drift", "fired"): 1}
    clock.t = T0 + 600
    t.tick()
    assert nonzero(t) == {("drift", "fired"): 1, ("drift-slow", "fired"): 1}
    assert len({d.trigger_id for d in outbox.due(ENDPOINTS)}) == 2
    assert set(t.counts) == {
        (p, o)
        for p in ("drift", "drift-slow", "latency")
        for o in ("fired", "duplicate", "cooldown", "no_model", "resolved_early")
    }
