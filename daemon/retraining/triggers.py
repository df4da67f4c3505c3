"""Retraining policies: which Alertmanager alerts, sustained how long, fire a retraining trigger.

A firing alert that a policy names waits in memory until it has lasted the policy's
sustained_seconds (from its startsAt); then it fires once, into the outbox. Pending alerts are not
persisted: after a restart, Alertmanager's next re-send of a still-firing alert (every
repeat_interval) brings it back, with its original startsAt, so the wait is not restarted. What
has fired is persisted (the outbox), so neither a re-send nor a restart fires an alert twice, and
cooldowns survive restarts.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog

from daemon.config import RetrainingPolicy
from daemon.retraining.outbox import Outbox

log = structlog.get_logger(__name__)

OUTCOMES = ("fired", "duplicate", "cooldown", "no_model", "resolved_early")
EVENT_TYPE = "inferwatch.retraining.triggered"


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert of an Alertmanager notification."""

    alertname: str
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    fingerprint: str
    generator_url: str


def trigger_id(policy: str, model: str, fingerprint: str, starts_at: float) -> str:
    """The webhook id of a trigger: the same for every re-send of one firing of one alert, across restarts."""
    key = "\x1f".join((policy, model, fingerprint, f"{starts_at:.6f}"))
    return "msg_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class _Pending:
    policy: RetrainingPolicy
    model: str
    alert: Alert


class Triggers:
    """Applies the retraining policies to alerts; fired triggers go into the outbox.

    `on_fired` (the sender's wake) is called after a tick that fired at least one trigger.
    Thread-safe: the HTTP receiver calls on_alerts, the main loop calls tick.
    """

    def __init__(
        self,
        policies: Sequence[RetrainingPolicy],
        outbox: Outbox,
        endpoint_names: Sequence[str],
        clock: Callable[[], float] = time.time,
        on_fired: Callable[[], None] | None = None,
    ) -> None:
        self._policies = tuple(policies)
        self._outbox = outbox
        self._endpoint_names = tuple(endpoint_names)
        self._clock = clock
        self._on_fired = on_fired
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], _Pending] = {}
        self.counts: dict[tuple[str, str], int] = {(p.name, o): 0 for p in self._policies for o in OUTCOMES}

    @property
    def pending(self) -> int:
        """Alerts waiting to have lasted their policy's sustained_seconds."""
        return len(self._pending)

    def on_alerts(self, alerts: Iterable[Alert]) -> None:
        """Take one Alertmanager notification's alerts, then tick."""
        with self._lock:
            for alert in alerts:
                for policy in self._policies:
                    if alert.alertname in policy.alerts:
                        self._take(policy, alert)
        self.tick()

    def _take(self, policy: RetrainingPolicy, alert: Alert) -> None:
        model = alert.labels.get("model")
        if not model:
            self.counts[policy.name, "no_model"] += 1
            return
        key = (policy.name, alert.fingerprint)
        if alert.status == "resolved":
            if key in self._pending:
                del self._pending[key]
                self.counts[policy.name, "resolved_early"] += 1
            return
        held = self._pending.get(key)
        # A re-send changes nothing; another startsAt is a new firing (its resolution was missed).
        if held is None or held.alert.starts_at != alert.starts_at:
            self._pending[key] = _Pending(policy, model, alert)

    def tick(self) -> None:
        """Fire every pending alert that has lasted its policy's sustained_seconds."""
        fired = False
        with self._lock:
            now = self._clock()
            for key, p in list(self._pending.items()):
                if now - p.alert.starts_at < p.policy.sustained_seconds:
                    continue
                outcome = self._fire(p, now)
                self.counts[p.policy.name, outcome] += 1
                del self._pending[key]
                fired = fired or outcome == "fired"
        if fired and self._on_fired is not None:
            self._on_fired()

    def _fire(self, p: _Pending, now: float) -> str:
        policy, alert = p.policy, p.alert
        tid = trigger_id(policy.name, p.model, alert.fingerprint, alert.starts_at)
        if self._outbox.has_trigger(tid):
            return "duplicate"
        last = self._outbox.last_fired_at(policy.name, p.model)
        if last is not None and now - last < policy.cooldown_seconds:
            return "cooldown"
        endpoints = policy.endpoints or self._endpoint_names
        if not self._outbox.add_trigger(tid, policy.name, p.model, _body(tid, p, now), endpoints, fired_at=now):
            return "duplicate"
        log.info(
            "retraining_triggered",
            trigger_id=tid,
            policy=policy.name,
            model=p.model,
            alertname=alert.alertname,
            endpoints=list(endpoints),
        )
        return "fired"


def _body(tid: str, p: _Pending, now: float) -> bytes:
    """The webhook body: stored once, so every attempt sends the same bytes."""
    alert = p.alert
    data: dict[str, Any] = {
        "trigger_id": tid,
        "policy": p.policy.name,
        "model": p.model,
        "version": alert.labels.get("version"),
        "variant": alert.labels.get("variant"),
        "alertname": alert.alertname,
        "labels": alert.labels,
        "annotations": alert.annotations,
        "starts_at": _rfc3339(alert.starts_at),
        "fingerprint": alert.fingerprint,
        "generator_url": alert.generator_url,
        "sustained_seconds": p.policy.sustained_seconds,
    }
    payload = {"type": EVENT_TYPE, "timestamp": _rfc3339(now), "data": data}
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
