"""The optional push to Alertmanager's API v2: every instance gets the alert, re-sent, then resolved."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from daemon.config import AlertmanagerPushConfig, from_mapping
from daemon.export.alertpush import AlertPusher, firing
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.runtime.app import build_pipeline
from tests.integration.observability import alertmanager, webhook_receiver
from tests.integration.support import wait_for


def _active(am: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://{am}/api/v2/alerts?active=true", timeout=5) as r:
        return [a for a in json.loads(r.read()) if a["status"]["state"] == "active"]


def test_pushed_alerts_reach_every_alertmanager_and_resolve(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t" * 20)
    with (
        webhook_receiver() as sink,
        alertmanager(tmp_path / "am0", sink.url, token) as am0,
        alertmanager(tmp_path / "am1", sink.url, token) as am1,
    ):
        pusher = AlertPusher(AlertmanagerPushConfig(urls=(f"http://{am0}", f"http://{am1}")))
        labels = (("alertname", "InferwatchCanaryFail"), ("model", "m"), ("severity", "page"), ("variant", "canary"))
        pusher.update({labels: "Canary canary of m fails"})
        pusher.send()
        for am in (am0, am1):
            alerts = wait_for(lambda am=am: _active(am), 10, f"the alert in {am}")
            assert alerts[0]["labels"] == dict(labels)
            assert alerts[0]["annotations"] == {"summary": "Canary canary of m fails"}
        first_starts = _active(am0)[0]["startsAt"]
        pusher.send()  # a re-send keeps the alert and its startsAt
        assert _active(am0)[0]["startsAt"] == first_starts
        pusher.update({})
        pusher.send()
        for am in (am0, am1):
            wait_for(lambda am=am: not _active(am), 10, f"the alert resolved in {am}")
        assert pusher.sent == {(f"http://{am0}", "ok"): 3, (f"http://{am1}", "ok"): 3}


def test_an_unreachable_alertmanager_is_counted_and_the_others_still_get_the_alert(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t" * 20)
    with webhook_receiver() as sink, alertmanager(tmp_path / "am", sink.url, token) as am:
        pusher = AlertPusher(AlertmanagerPushConfig(urls=("http://127.0.0.1:9", f"http://{am}"), timeout_seconds=1))
        pusher.update({(("alertname", "InferwatchServingSkew"), ("model", "m")): "skew"})
        pusher.send()
        wait_for(lambda: _active(am), 10, "the alert")
        assert pusher.sent == {("http://127.0.0.1:9", "error"): 1, (f"http://{am}", "ok"): 1}


def test_firing_lists_held_drift_detections_and_canary_fails() -> None:
    config = from_mapping({"drift": {"reference_events": 50, "window_events": 20}})
    pipeline = build_pipeline(config)
    events = [
        {"request_id": f"r{i}", "model": "m", "variant": "canary" if i % 2 else "control", "latency_ms": 5.0}
        for i in range(200)
    ]
    pipeline.process(chunks_of([RawRecord("t", 0, i, 1.0, None, json.dumps(e).encode()) for i, e in enumerate(events)]))
    assert firing(pipeline, None, ("drift", "canary_fail"), 600) == {}
    state = pipeline.partitions[0]
    drift = state.drift
    assert drift is not None
    (sid,) = [s for s in drift.by_row[state.row_of(("m", "unknown", "control"))] if drift.streams[s].name == "latency"]
    drift.last_detection[sid] = drift.newest_detection = time.monotonic()  # as a detection would
    alerts = firing(pipeline, None, ("drift",), 600)
    assert list(alerts) == [
        (
            ("alertname", "InferwatchDriftSustained"),
            ("detector", drift.streams[sid].detector),
            ("model", "m"),
            ("severity", "ticket"),
            ("stream", "latency"),
            ("variant", "control"),
            ("version", "unknown"),
        )
    ]
    assert firing(pipeline, None, ("canary_fail",), 600) == {}  # drift not asked for
    assert firing(pipeline, None, ("drift",), 0) == {}  # no longer held
    shadow = {
        "last_run": {
            "models": [
                {
                    "name": "a",
                    "role": "production",
                    "status": "ok",
                    "regression": {"flagged": True},
                    "skew": {"flagged": True, "mismatch_rate": 0.2},
                    "hardware": "cpu",
                },
                {"name": "b", "role": "candidate", "status": "failed"},
            ]
        }
    }
    names = sorted(dict(k)["alertname"] for k in firing(pipeline, shadow, ("shadow_regression", "serving_skew"), 600))
    assert names == ["InferwatchServingSkew", "InferwatchShadowRegression"]
