"""End to end: injected drift -> daemon -> real Prometheus rules -> real Alertmanager -> the daemon's
receiver -> a signed retraining webhook, delivered once; and every dashboard panel has data.

The scenario (`run_scenario`) is shared with bench/alerting.py, which records its timings.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from standardwebhooks.webhooks import Webhook

from daemon.dev.broker import TansuBroker
from daemon.dev.generator import TrafficGenerator, TrafficSpec, encode, parse_change
from tests.integration.observability import (
    ROOT,
    Prometheus,
    WebhookReceiver,
    alertmanager,
    prometheus,
    webhook_receiver,
)
from tests.integration.support import DaemonProcess, produce, total, wait_for
from tests.unit.shadow_models import onnx_linear_classifier, onnx_regressor

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "receiver-token-0123456789"
RATE = 200.0
BEFORE_S, AFTER_S = 40.0, 20.0  # simulated seconds of traffic before and after the drift
# From the first drifted event produced to the webhook's arrival: detection needs ~500 events of
# the key, then scrape (1 s), rule evaluation + for (1 s + 2 s), Alertmanager group_wait (1 s),
# the receiver, the outbox and one POST. Generous for a loaded 2-core CI machine.
BOUND_S = 60.0
# Panels whose series exist only on hardware or events this scenario cannot have.
NO_DATA_HERE = {
    "inferwatch_shadow_energy_per_inference_joules": "needs an NVIDIA GPU (NVML)",
    "inferwatch_source_errors_total": "counts broker failures; a healthy run has none",
    "inferwatch_events_unkeyed_total": "counts events away from their model's partition; keyed input has none",
}


def _traffic() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Events before the drift, after it, and every event's label (the demo's traffic, plus a slow canary)."""
    spec = TrafficSpec(
        rate=RATE,
        duration_s=BEFORE_S + AFTER_S,
        seed=5,
        start_time=time.time() - (BEFORE_S + AFTER_S),
        changes=(
            parse_change(f"after={BEFORE_S}s model=fraud-detector feature=f0 shift=2"),
            parse_change("after=0 model=fraud-detector variant=canary latency=+40%"),
        ),
    )
    gen = TrafficGenerator(spec)
    events = list(gen.events())
    labels = [gen.label(ev) for ev in events]
    split = int(BEFORE_S * RATE)
    return events[:split], events[split:], labels


def _llm_events(n: int) -> list[dict[str, Any]]:
    """LLM-serving events of a control and a canary (alike), so the LLM panels (TTFT, tokens,
    queue and decode time, finish reasons, goodput) and the canary's LLM panels (TTFT and time
    per output token, their tails past the control's p90 line, quantile bands) have data."""
    now = time.time()
    rng = random.Random(16)
    out = []
    for i in range(n):
        ttft, tpot, tokens = rng.lognormvariate(5.0, 0.3), rng.lognormvariate(3.4, 0.2), rng.randint(20, 80)
        out.append(
            {
                "request_id": f"llm-{i}",
                "model": "chat",
                "variant": "canary" if i % 2 else "control",
                "timestamp": now,
                "latency_ms": ttft + tpot * (tokens - 1),
                "ttft_ms": ttft,
                "tokens_in": 200,
                "tokens_out": tokens,
                "queue_ms": 15.0 + i % 7,
                "decode_ms": tpot * (tokens - 1),
                "finish_reason": "length" if i % 5 == 0 else "stop",
            }
        )
    return out


def shadow_model(name: str, path: Path, role: str, **fields: Any) -> dict[str, Any]:
    inputs = [{"name": "x", "features": [f"f{j}" for j in range(6)]}]
    base = {"name": name, "runtime": "onnxruntime", "path": str(path), "role": role, "inputs": inputs}
    return base | {"source_model": "fraud-detector"} | fields


def _config(
    tmp: Path,
    broker: TansuBroker,
    topics: dict[str, str],
    receiver: WebhookReceiver,
    models: dict[str, Path],
    alertmanager_url: str,
) -> dict[str, Any]:
    return {
        "source": {
            "kafka": {
                "bootstrap_servers": [broker.bootstrap],
                "topics": [topics["events"]],
                "group_id": f"e2e-{topics['events']}",
            }
        },
        "dead_letter": {"topic": topics["dead_letter"]},
        "labels": {"topic": topics["labels"]},
        "accuracy": {"slice_features": ["f6"]},
        # The LLM's tail tests need 10 requests past the line per arm: a p90 line gets them soon.
        # Labels come 5 s after their events, and the traffic spans 60 s of event time: the
        # canary's accuracy counts them 10 s on (the default waits 300 s).
        "canary": {"tail_quantile": 0.9, "label_wait_seconds": 10},
        "shadow": {
            "enabled": True,
            "models": [
                shadow_model("fraud-prod", models["classifier"], "production", source_variant="control"),
                shadow_model("fraud-cand", models["classifier"], "candidate"),
                shadow_model("score-prod", models["regressor"], "production", task="regression"),
                shadow_model("score-cand", models["regressor"], "candidate", task="regression"),
            ],
            "min_samples": 200,
            # Every few seconds: a later run finds the labels that reach the samples after the first.
            "interval_seconds": 10,
            "jitter_seconds": 0,
            "warmup_queries": 20,
            "single_stream": {"min_duration_seconds": 0.2, "window_seconds": 0.1},
            "offline": {"batch_sizes": [1, 16], "duration_seconds": 0.1},
            "server": {"enabled": True, "target_qps": 2000, "queries": 700},
            "compare_sessions": 2,
            "compare_queries": 200,
            "bootstrap_resamples": 200,
            "history_file": str(tmp / "shadow-history.json"),
            "hourly_price": 1.2,
        },
        "retraining": {
            "enabled": True,
            "policies": [{"name": "retrain-on-drift", "alerts": ["InferwatchDriftSustained"]}],
            "endpoints": [{"name": "ci", "url": receiver.url, "secret": SECRET}],
            "outbox_file": str(tmp / "outbox.sqlite3"),
        },
        "receiver": {"token": TOKEN},
        "alertmanager_push": {"urls": [alertmanager_url], "conditions": ["canary_fail"]},
        "checkpoint": {"directory": str(tmp / "checkpoint"), "interval_seconds": 1},
    }


def run_scenario(tmp: Path, broker: TansuBroker) -> dict[str, Any]:
    """Drift injected at t0; returns the timings of each hop and the live objects' final readings."""
    suffix = str(int(time.time() * 1000))[-8:]
    topics = {k: f"e2e-{k}-{suffix}" for k in ("events", "labels", "dead_letter")}
    broker.create_topics(list(topics.values()), partitions=1)
    before, after, labels = _traffic()
    w = np.random.default_rng(3).standard_normal((6, 2)).astype(np.float32)
    models = {
        "classifier": onnx_linear_classifier(tmp / "fraud.onnx", w, np.zeros(2, np.float32)),
        "regressor": onnx_regressor(tmp / "score.onnx", w[:, 0], 0.5),
    }
    token_file = tmp / "receiver-token"
    token_file.write_text(TOKEN)
    with ExitStack() as stack:
        receiver = stack.enter_context(webhook_receiver())
        daemon = DaemonProcess(tmp, {})  # reserves the HTTP port the others point at
        am = stack.enter_context(
            alertmanager(tmp / "alertmanager", f"{daemon.url}/v1/alertmanager", token_file, repeat="4s")
        )
        daemon_config = _config(tmp, broker, topics, receiver, models, f"http://{am}")
        daemon = DaemonProcess(tmp, daemon_config, port=daemon.port)
        stack.callback(daemon.kill)
        daemon.start()
        prom = stack.enter_context(prometheus(tmp / "prometheus", [f"127.0.0.1:{daemon.port}"], am))

        produce(broker.bootstrap, topics["events"], [encode(ev) for ev in before])
        produce(broker.bootstrap, topics["labels"], [encode(lb) for lb in labels[: len(before)]])
        produce(broker.bootstrap, topics["events"], [encode(ev) for ev in _llm_events(1_600)])
        produce(broker.bootstrap, topics["events"], [(b"fraud-detector", b'{"request_id": "broken"')])

        def calibrated() -> bool:
            s = daemon.scrape()
            f0 = {("model", "fraud-detector"), ("variant", "control"), ("stream", "feature:f0")}
            return total(s, "inferwatch_events_total") >= len(before) and any(
                name == "inferwatch_drift_score" and f0 <= set(labels) for name, labels in s
            )

        try:
            wait_for(calibrated, 120, "drift references calibrated")
        except AssertionError as exc:
            s = daemon.scrape()
            seen = {k: v for k, v in s.items() if k[0] in ("inferwatch_events_total", "inferwatch_drift_streams")}
            raise AssertionError(f"{exc}\n{seen}\n{daemon.logs()[-3000:]}") from None
        assert receiver.deliveries == [], "a trigger before any drift was injected"

        t0 = time.time()
        produce(broker.bootstrap, topics["events"], [encode(ev) for ev in after])
        produce(broker.bootstrap, topics["labels"], [encode(lb) for lb in labels[len(before) :]])
        marks: dict[str, float] = {}

        def progress() -> bool:
            now = time.time()
            if "detected" not in marks and total(daemon.scrape(), "inferwatch_drift_detected", stream="feature:f0"):
                marks["detected"] = now
            if "firing" not in marks and any(
                a["labels"]["alertname"] == "InferwatchDriftSustained" and a["state"] == "firing" for a in prom.alerts()
            ):
                marks["firing"] = now
            if receiver.deliveries:
                marks["delivered"] = receiver.deliveries[0].at
                return True
            return False

        wait_for(progress, BOUND_S, "the retraining webhook", interval=0.2)
        # The daemon stamps the trigger when it fires it (the receiver's answer to Alertmanager).
        fired = json.loads(receiver.deliveries[0].body)["timestamp"]
        marks["triggered"] = datetime.fromisoformat(fired.replace("Z", "+00:00")).timestamp()
        # Alertmanager re-sends every 4 s: give it three chances to cause a second delivery.
        time.sleep(13)
        wait_for(lambda: _has(prom, "inferwatch_shadow_quality"), 90, "a shadow run over labelled samples")
        # Traffic up to the queries, as a live service has, so that every rate() over [1m] has
        # increases however long the shadow run took: fresh events with a feature missing.
        fresh = [
            {**ev, "request_id": f"fresh-{i}", "timestamp": time.time(), "features": {**ev["features"], "f0": None}}
            for i, ev in enumerate(after[-50:])
        ]
        counted = total(daemon.scrape(), "inferwatch_events_total")
        produce(broker.bootstrap, topics["events"], [encode(ev) for ev in fresh])
        wait_for(lambda: total(daemon.scrape(), "inferwatch_events_total") >= counted + len(fresh), 30, "fresh events")
        time.sleep(3)  # a few more scrapes, so every rate() has two points
        scrape = {
            "duration_seconds": float(prom.query('scrape_duration_seconds{job="inferwatch"}')[0]["value"][1]),
            "samples": int(float(prom.query('scrape_samples_scraped{job="inferwatch"}')[0]["value"][1])),
        }
        return {
            "t0": t0,
            "marks": marks,
            "deliveries": list(receiver.deliveries),
            "metrics": daemon.scrape(),
            "scrape": scrape,
            "logs": daemon.logs(),
            "panels": _panel_results(prom),
        }


def _has(prom: Prometheus, expr: str) -> bool:
    return bool(prom.query(expr))


def _panel_results(prom: Prometheus) -> list[tuple[str, str, str, int]]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("dashboards", ROOT / "deploy" / "grafana" / "dashboards.py")
    assert spec is not None and spec.loader is not None
    dashboards = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dashboards)
    # Every variable at "All" (.*), as a dashboard opens; the job is the scrape job.
    values = {"datasource": "prometheus", "job": "inferwatch", "model": ".*", "version": ".*", "variant": ".*"}
    out = []
    for name, board in dashboards.build().items():
        for title, expr in dashboards.queries(board):
            q = dashboards.substitute(expr, values)
            out.append((name, title, q, len(prom.query(q))))
    return out


@pytest.fixture(scope="module")
def scenario(broker: TansuBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    yield run_scenario(tmp_path_factory.mktemp("e2e"), broker)


def test_drift_ends_in_one_signed_retraining_webhook_within_the_bound(scenario: dict[str, Any]) -> None:
    marks, t0 = scenario["marks"], scenario["t0"]
    assert marks["delivered"] - t0 < BOUND_S
    # Polled marks (detected, firing) are up to 0.2 s late; the others are stamped where they happen.
    assert t0 < marks["detected"] <= marks["firing"] <= marks["triggered"] + 0.2
    assert marks["triggered"] <= marks["delivered"]
    (delivery,) = scenario["deliveries"]  # exactly one, despite Alertmanager's re-sends
    payload = Webhook(SECRET).verify(delivery.body, delivery.headers)
    assert payload["type"] == "inferwatch.retraining.triggered"
    data = payload["data"]
    assert (data["policy"], data["model"], data["alertname"]) == (
        "retrain-on-drift",
        "fraud-detector",
        "InferwatchDriftSustained",
    )
    assert data["labels"]["stream"] == "feature:f0"
    assert delivery.headers["webhook-id"] == data["trigger_id"]
    s = scenario["metrics"]
    assert total(s, "inferwatch_retraining_triggers_total", outcome="fired") == 1
    # Re-sends reached the daemon and were recognised as the same trigger (or the same model in cooldown).
    assert total(s, "inferwatch_retraining_triggers_total", outcome="duplicate") >= 1
    assert total(s, "inferwatch_webhook_deliveries_total", outcome="delivered") == 1
    assert total(s, "inferwatch_webhook_pending") == 0


def test_every_dashboard_panel_has_data(scenario: dict[str, Any]) -> None:
    empty = [
        (board, title, q)
        for board, title, q, n in scenario["panels"]
        if n == 0 and not any(metric in q for metric in NO_DATA_HERE)
    ]
    assert empty == [], "\n".join(f"{b} / {t}: {q}" for b, t, q in empty)


def test_prometheus_reports_the_scrape_of_the_demo_like_load(scenario: dict[str, Any]) -> None:
    scrape = scenario["scrape"]
    assert 0 < scrape["duration_seconds"] < 1.0
    assert scrape["samples"] > 100
    print(f"\nscrape: {scrape}, marks: { {k: round(v - scenario['t0'], 2) for k, v in scenario['marks'].items()} }")


def test_the_alert_chain_is_in_the_daemon_log(scenario: dict[str, Any]) -> None:
    logs = scenario["logs"]
    assert '"event": "retraining_triggered"' in logs
    assert json.dumps(SECRET) not in logs and SECRET not in logs
