"""The receiver and the outbox in the real daemon: auth, bad bodies, duplicates, and a kill -9 mid-retry."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

from tests.integration.observability import WebhookReceiver, webhook_receiver
from tests.integration.support import DaemonProcess, running_daemon, total, wait_for

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "receiver-token-0123456789"


def alertmanager_payload(*models: str, starts: str = "2026-11-28T10:00:00.123Z") -> bytes:
    """A version-4 Alertmanager webhook with one firing InferwatchDriftSustained per model."""
    alerts = [
        {
            "status": "firing",
            "labels": {
                "alertname": "InferwatchDriftSustained",
                "model": m,
                "version": "1",
                "variant": "control",
                "stream": "feature:f0",
                "detector": "ks",
                "severity": "ticket",
            },
            "annotations": {"summary": f"{m} drifts"},
            "startsAt": starts,
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph",
            "fingerprint": f"fp-{m}",
        }
        for m in models
    ]
    return json.dumps(
        {
            "version": "4",
            "groupKey": '{}:{alertname="InferwatchDriftSustained"}',
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "inferwatch",
            "groupLabels": {"alertname": "InferwatchDriftSustained"},
            "commonLabels": {"alertname": "InferwatchDriftSustained"},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": alerts,
            "someFieldFromTheFuture": True,
        }
    ).encode()


def post(url: str, body: bytes, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, body, headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def config(tmp: Path, endpoints: Sequence[tuple[str, str]], **retraining: Any) -> dict[str, Any]:
    return {
        # No broker: the receiver and the outbox do not need one, and the daemon serves HTTP meanwhile.
        "source": {"kafka": {"bootstrap_servers": ["127.0.0.1:1"]}},
        "receiver": {"token": TOKEN, "max_body_bytes": 4096},
        "retraining": {
            "enabled": True,
            "policies": [{"name": "retrain", "alerts": ["InferwatchDriftSustained"], "cooldown_seconds": 0}],
            "endpoints": [{"name": n, "url": u, "secret": SECRET, "timeout_seconds": 1} for n, u in endpoints],
            "outbox_file": str(tmp / "outbox.sqlite3"),
            **retraining,
        },
    }


def test_the_receiver_authenticates_validates_and_deduplicates(tmp_path: Path) -> None:
    with webhook_receiver() as sink, running_daemon(tmp_path, config(tmp_path, [("ci", sink.url)])) as d:
        url = d.url + "/v1/alertmanager"
        body = alertmanager_payload("fraud")
        assert post(url, body, token=None)[0] == 401
        assert post(url, body, token="not-the-token-at-all")[0] == 401
        assert sink.deliveries == []  # nothing unauthenticated got through
        code, answer = post(url, b'{"version": "4", "alerts": [{"status": "firing"}]}')
        assert code == 400 and "alertname" in answer["error"]
        assert post(url, b"not json")[0] == 400
        assert post(url, b"x" * 5000)[0] == 413
        assert post(url, body) == (200, {"alerts": 1, "retraining": True})
        wait_for(lambda: _delivered(sink, 1), 10, "the webhook")
        for _ in range(3):  # Alertmanager re-sends the group: the same trigger, not a new one
            assert post(url, body)[0] == 200
        time.sleep(2)
        s = d.scrape()
        assert len(sink.deliveries) == 1
        assert total(s, "inferwatch_retraining_triggers_total", outcome="fired") == 1
        assert total(s, "inferwatch_retraining_triggers_total", outcome="duplicate") == 3
        assert total(s, "inferwatch_alertmanager_notifications_total", outcome="unauthorized") == 2
        assert total(s, "inferwatch_alertmanager_notifications_total", outcome="malformed") == 2
        assert total(s, "inferwatch_alertmanager_notifications_total", outcome="accepted") == 4
        delivery = sink.deliveries[0]
        payload = Webhook(SECRET).verify(delivery.body, delivery.headers)
        assert payload["data"]["model"] == "fraud" and payload["data"]["trigger_id"] == delivery.headers["webhook-id"]
        assert TOKEN not in d.logs() and SECRET not in d.logs()


def test_every_trigger_arrives_with_its_id_despite_failures_and_a_kill_mid_retry(tmp_path: Path) -> None:
    with webhook_receiver() as flaky, webhook_receiver() as gone:
        flaky.script = [500, 429, -2, 502, 500, 500, 500, 500, 500, 500, 500, 500]  # then 200
        gone.script = [410]
        cfg = config(
            tmp_path,
            [("flaky", flaky.url), ("gone", gone.url)],
            initial_backoff_seconds=0.2,
            max_backoff_seconds=1.0,
        )
        first = DaemonProcess(tmp_path, cfg).start()
        try:
            assert post(first.url + "/v1/alertmanager", alertmanager_payload("fraud", "churn"))[0] == 200
            # Mid-retry: every trigger has been attempted and refused at least twice.
            wait_for(lambda: len(flaky.deliveries) >= 4, 30, "retries to the flaky endpoint")
            assert len(gone.deliveries) >= 1
        finally:
            first.stop(signal.SIGKILL)
        attempts_before = len(flaky.deliveries)
        flaky.script.clear()  # the receiver recovers
        with running_daemon(tmp_path, cfg) as second:
            wait_for(
                lambda: (
                    total(second.scrape(), "inferwatch_webhook_deliveries_total", endpoint="flaky", outcome="delivered")
                    == 2
                ),
                30,
                "both triggers delivered after the restart",
            )
            # A re-send of the same alerts after the crash is still the same two triggers.
            assert post(second.url + "/v1/alertmanager", alertmanager_payload("fraud", "churn"))[0] == 200
            time.sleep(1.5)
            s = second.scrape()
            assert total(s, "inferwatch_retraining_triggers_total", outcome="duplicate") == 2
            assert total(s, "inferwatch_webhook_endpoint_disabled", endpoint="gone") == 1
            assert total(s, "inferwatch_webhook_pending") == 0
    assert len(flaky.deliveries) > attempts_before  # the second daemon resumed the retries
    by_id: dict[str, set[bytes]] = {}
    for delivery in flaky.deliveries:
        payload = Webhook(SECRET).verify(delivery.body, delivery.headers)  # every attempt freshly signed
        by_id.setdefault(delivery.headers["webhook-id"], set()).add(delivery.body)
        assert payload["data"]["trigger_id"] == delivery.headers["webhook-id"]
    assert len(by_id) == 2 and all(len(bodies) == 1 for bodies in by_id.values())  # same id, same bytes
    assert {json.loads(next(iter(b)))["data"]["model"] for b in by_id.values()} == {"fraud", "churn"}
    assert len(gone.deliveries) == 1  # 410: disabled for good, also after the restart


def _delivered(sink: WebhookReceiver, n: int) -> bool:
    return len({d.headers["webhook-id"] for d in sink.deliveries}) >= n
