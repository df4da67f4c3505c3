"""`inferwatch demo` headless: every model, every variant and the labels show up on /metrics."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from daemon.dev.broker import free_port
from tests.integration.support import get, parse, total, wait_for


def test_demo_runs_headless_and_exports_both_models_and_variants() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "demo", "--duration", "40", "--http-port", str(port), "--summary-every", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: _up(url), 30, "demo /metrics")
        time.sleep(30)
        samples = parse(get(url)[1].decode())
        for model, variant in (
            ("fraud-detector", "control"),
            ("fraud-detector", "canary"),
            ("recsys-ranker", "default"),
            ("chat-llm", "control"),
            ("chat-llm", "canary"),
        ):
            assert total(samples, "inferwatch_events_total", model=model, variant=variant) > 0, (model, variant)
            assert total(samples, "inferwatch_request_latency_seconds_count", model=model, variant=variant) > 0
        assert total(samples, "inferwatch_events_invalid_total") > 0  # the demo injects malformed records
        # Labels follow their events by 5 s on their own topic and grade them.
        assert total(samples, "inferwatch_labels_total", outcome="joined") > 0
        accuracy = total(samples, "inferwatch_model_performance", metric="accuracy", model="recsys-ranker")
        assert 0.5 < accuracy < 1.0
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode()[-2000:]
        text = out.decode()
        assert f"http://127.0.0.1:{port}/metrics" in text and "/v1/status" in text
        assert "fraud-detector" in text and "canary" in text and "accuracy=" in text  # the live summary
        # The demo's canary is 20% slower: its verdict is printed, and fails on latency.
        assert "canary fraud-detector/canary vs control: fail" in text and "latency +" in text
        # The LLM's canary is slower per token with shorter answers: it fails on time per token.
        assert "canary chat-llm/canary vs control: fail" in text and "(tpot +" in text
        # Its healthy keys meet their SLOs: goodput of the LLM's control well above its 97%.
        good = total(samples, "inferwatch_slo_good_requests_total", model="chat-llm", variant="control", slo="goodput")
        judged = total(samples, "inferwatch_slo_requests_total", model="chat-llm", variant="control", slo="goodput")
        assert judged > 0 and good / judged > 0.97
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _up(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False
