"""Optional: inferwatch's own alerts pushed to Alertmanager's API v2, for setups without Prometheus rules.

The main loop calls `firing()` on the current state and hands the result to `AlertPusher.update()`; the
pusher's thread POSTs `/api/v2/alerts` to every configured Alertmanager whenever the set changes and every
`resend_seconds` otherwise. Firing alerts carry endsAt three intervals ahead, so a daemon that dies lets
them resolve by themselves; a cleared condition is sent once more with endsAt = now (resolved).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from daemon.config import AlertmanagerPushConfig
from daemon.pipeline import Pipeline
from daemon.runtime import httpclient
from daemon.runtime.httpclient import Post

log = structlog.get_logger(__name__)

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs: hashable and stable
JSON = {"Content-Type": "application/json"}


def _labels(**labels: str) -> Labels:
    return tuple(sorted(labels.items()))


def firing(
    pipeline: Pipeline, shadow: Mapping[str, Any] | None, conditions: Iterable[str], hold_s: float
) -> dict[Labels, str]:
    """The alerts that hold now, with a one-line summary each; alert names match deploy/prometheus's rules."""
    wanted = set(conditions)
    out: dict[Labels, str] = {}
    if "drift" in wanted:
        for (model, version, variant), stream, detector in pipeline.drifting(hold_s):
            labels = _labels(
                alertname="InferwatchDriftSustained",
                severity="ticket",
                model=model,
                version=version,
                variant=variant,
                stream=stream,
                detector=detector,
            )
            out[labels] = f"Drift on {stream} of {model} {version}/{variant} ({detector})"
    if "canary_fail" in wanted:
        for model, variant, baseline in pipeline.failing_canaries():
            labels = _labels(
                alertname="InferwatchCanaryFail", severity="page", model=model, variant=variant, baseline=baseline
            )
            out[labels] = f"Canary {variant} of {model} fails against {baseline}"
    run = shadow.get("last_run") if shadow else None
    for m in run["models"] if run else ():
        if m["status"] != "ok":
            continue
        name, role = m["name"], m["role"]
        if "shadow_regression" in wanted and m["regression"]["flagged"]:
            labels = _labels(alertname="InferwatchShadowRegression", severity="ticket", model=name, role=role)
            out[labels] = f"Shadow benchmark of {name}: p99 regressed on {m.get('hardware')}"
        if "serving_skew" in wanted and m["skew"] is not None and m["skew"]["flagged"]:
            labels = _labels(alertname="InferwatchServingSkew", severity="ticket", model=name, role=role)
            out[labels] = f"Serving skew of {name}: {m['skew']['mismatch_rate']:.1%} of replays differ from the logs"
    return out


class AlertPusher:
    """Keeps the firing set; its thread sends it to every Alertmanager on change and every resend interval."""

    def __init__(
        self, cfg: AlertmanagerPushConfig, *, post: Post = httpclient.post, clock: Callable[[], float] = time.time
    ) -> None:
        self.cfg = cfg
        self._post = post
        self._clock = clock
        self._lock = threading.Lock()
        self._active: dict[Labels, tuple[float, str]] = {}  # labels -> (startsAt, summary)
        self._resolved: dict[Labels, tuple[float, str]] = {}
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent: dict[tuple[str, str], int] = {}  # (url, outcome) -> pushes

    def update(self, firing: Mapping[Labels, str]) -> None:
        now = self._clock()
        with self._lock:
            new = {k: (self._active[k][0] if k in self._active else now, s) for k, s in firing.items()}
            for k, v in self._active.items():
                if k not in new:
                    self._resolved[k] = v
            changed = new.keys() != self._active.keys()
            self._active = new
        if changed:
            self._changed.set()

    def payload(self) -> list[dict[str, Any]]:
        """The alerts to send now; resolved ones are included once."""
        now = self._clock()
        ends = now + 3 * self.cfg.resend_seconds
        with self._lock:
            items = [(k, v, ends) for k, v in self._active.items()]
            items += [(k, v, now) for k, v in self._resolved.items()]
            self._resolved = {}
        return [
            {
                "labels": dict(labels),
                "annotations": {"summary": summary},
                "startsAt": _rfc3339(starts),
                "endsAt": _rfc3339(end),
                "generatorURL": "",
            }
            for labels, (starts, summary), end in items
        ]

    def send(self) -> None:
        alerts = self.payload()
        if not alerts:
            return
        body = json.dumps(alerts).encode()
        for url in self.cfg.urls:
            try:
                status, _ = self._post(f"{url}/api/v2/alerts", body, JSON, self.cfg.timeout_seconds)
                outcome = "ok" if 200 <= status < 300 else "rejected"
            except OSError as exc:
                outcome = "error"
                log.warning("alertmanager_push_failed", url=url, error=repr(exc))
            key = (url, outcome)
            self.sent[key] = self.sent.get(key, 0) + 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.send()
            except Exception:  # never let the thread die: the next round retries
                log.exception("alertmanager_push_crashed")
            self._changed.wait(self.cfg.resend_seconds)
            self._changed.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="alertmanager-push", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(timeout)


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
