"""The demo's view (plain blocks off a terminal, a rich table on one) and what it says it skipped."""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import pytest
from rich.console import Console
from rich.live import Live

from daemon.dev.demo import DemoOptions, alerting_skipped
from daemon.dev.view import LiveView, PlainView, Snapshot, alert_rows

DRIFT = {
    "alertname": "InferwatchDriftSustained",
    "model": "fraud-detector",
    "variant": "control",
    "stream": "feature:f0",
    "severity": "ticket",
}


def _key(model: str, variant: str, accuracy: float | None, detections: int = 0) -> dict[str, Any]:
    return {
        "model": model,
        "version": "2" if variant == "canary" else "1",
        "variant": variant,
        "events": 1234,
        "error_rate": 0.01,
        "latency_seconds": {"p50": 0.0437, "p95": 0.0898, "p99": None},
        "quality": {"metrics": {"accuracy": accuracy}, "accuracy_estimated": accuracy},
        "drift": {"detections": {"feature:f0": detections}},
    }


def _snapshot(run_started: float | None) -> Snapshot:
    run = None
    if run_started is not None:
        run = {
            "started": run_started,
            "models": [{"name": "fraud-prod", "role": "production", "status": "failed", "error": "boom"}],
            "comparisons": [],
            "environment": {"cpu_model": "test CPU", "cpus_allowed": 2},
            "threads": 1,
        }
    canary = {"verdict": "fail", "score": 0, "reasons": ["latency +19.3% beyond +5.0%"]}
    return Snapshot(
        elapsed_s=75,
        status={
            "events": 22440,
            "invalid": {"malformed_json": 44},
            "lag": {"t/0": 6},
            "keys": [
                _key("fraud-detector", "control", 0.657, detections=1),
                _key("fraud-detector", "canary", 0.684),
                _key("chat-llm", "control", None),
            ],
        },
        canaries={"models": {"fraud-detector": {"baseline": "control", "variants": {"canary": canary}}}},
        shadow={"runs": {"ok": int(run is not None), "failed": 0}, "last_run": run, "last_error": None},
        ttft_ms={("chat-llm", "control"): 261.4},
        alerts=alert_rows([{"labels": DRIFT, "state": "firing"}], [{"labels": DRIFT, "status": {"state": "active"}}]),
    )


def test_plain_blocks_show_keys_canaries_alerts_and_each_shadow_run_once(capsys: pytest.CaptureFixture[str]) -> None:
    view = PlainView()
    view.update(_snapshot(None))
    first = capsys.readouterr().out
    assert "[   75s] events=22,440 invalid=44 lag=6" in first
    assert "fraud-detector  1    control  1,234   1.00%   43.7    89.8    -" in first
    assert "1 detection(s)  baseline" in first and "68.4% (68.4%)" in first
    assert "chat-llm        1    control" in first and " 261 " in first  # the LLM's TTFT
    assert "canary fraud-detector/canary vs control: fail (score 0)  (latency +19.3% beyond +5.0%)" in first
    assert "InferwatchDriftSustained  fraud-detector  control  feature:f0  firing      active" in first
    assert "shadow run:" not in first
    view.update(_snapshot(100.0))
    assert "shadow run:" in capsys.readouterr().out
    view.update(_snapshot(100.0))  # the same round: not printed again
    assert "shadow run:" not in capsys.readouterr().out
    shadow = {**_snapshot(100.0).shadow, "runs": {"ok": 1, "failed": 1}, "last_error": "ShadowError: boom"}
    view.update(replace(_snapshot(100.0), shadow=shadow))
    assert "shadow run:\n    the last round failed: ShadowError: boom" in capsys.readouterr().out
    view.note("retraining webhook msg_1: signature verified")
    assert capsys.readouterr().out == "retraining webhook msg_1: signature verified\n"


def test_plain_blocks_say_when_no_alert_is_pending_or_firing(capsys: pytest.CaptureFixture[str]) -> None:
    PlainView().update(replace(_snapshot(None), alerts=[]))
    assert "alerts: none pending or firing" in capsys.readouterr().out
    PlainView().update(replace(_snapshot(None), alerts=None))  # Prometheus off: no alerts section
    assert "alerts" not in capsys.readouterr().out


def test_the_live_view_draws_the_same_rows_as_tables() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=200, record=True)
    with Live(console=console, auto_refresh=False) as live:
        LiveView(live).update(_snapshot(100.0))
    text = console.export_text()
    for cell in ("fraud-detector", "baseline", "fail", "261", "68.4% (68.4%)", "InferwatchDriftSustained", "active"):
        assert cell in text, cell
    assert "shadow benchmark (latest run)" in text and "fraud-prod  production  failed" in text


def test_the_demo_says_why_it_starts_no_prometheus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert alerting_skipped(DemoOptions(prometheus=False)) == "--no-prometheus"
    monkeypatch.setenv("PATH", "/nonexistent")
    why = alerting_skipped(DemoOptions())
    assert why is not None and why.startswith("prometheus and prometheus-alertmanager not on PATH; `make tools`")
