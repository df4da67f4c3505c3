"""`inferwatch demo` headless, on a short clock: the five things it must show (issue 18) — a drift
alert firing in Alertmanager, a signed retraining webhook verified by the demo's receiver, a
shadow round's table, a canary fail, the LLM key's TTFT — and that its healthy keys alert nobody,
that every key, variant and label reaches /metrics, and that everything it started stops with it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

from daemon.dev.broker import free_port
from tests.integration.support import get, parse, total

# The demo's timings, shortened: Prometheus scrapes and evaluates every second, every alert's
# `for:` is 10 s (Prometheus scrapes a new target ~5 s after it starts: InferwatchDown is pending
# until then, and must not fire), f0 drifts after 30 s, shadow rounds every 15 s.
ARGS = ["--summary-every", "2", "--drift-after", "30", "--shadow-every", "15", "--scrape-every", "1"]
ARGS += ["--alert-for", "10", "--duration", "280"]
BOUND_S = 200.0
# The injected faults, the only alerts that may fire: (alertname, model, variant).
INJECTED = {
    ("InferwatchDriftSustained", "fraud-detector", "control"),
    ("InferwatchDriftSustained", "fraud-detector", "canary"),
    ("InferwatchCanaryFail", "fraud-detector", "canary"),
    ("InferwatchCanaryFail", "chat-llm", "canary"),
}


def _json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _key(alert: dict[str, Any]) -> tuple[str, str, str]:
    labels = alert["labels"]
    return labels["alertname"], labels.get("model", ""), labels.get("variant", "")


def _shadow_table(text: str) -> bool:
    """Whether a shadow run's table is printed: both models measured, and the comparison."""
    for block in text.split("shadow run:\n")[1:]:
        table = "\n".join(block.splitlines()[:10])
        if re.search(r"fraud-prod +production +ok", table) and re.search(r"fraud-cand +fraud-prod +\d", table):
            return True
    return False


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False


def test_demo_shows_the_whole_loop_and_stops_everything() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "demo", "--http-port", str(port), *ARGS],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(line.decode() for line in proc.stdout or ()), daemon=True)
    reader.start()
    try:
        metrics = f"http://127.0.0.1:{port}/metrics"
        seen: dict[str, float] = {}
        fired: set[tuple[str, str, str]] = set()
        urls: dict[str, str] = {}
        t0 = time.monotonic()
        while len(seen) < 5:
            out = "".join(lines)[-6000:]
            assert time.monotonic() - t0 < BOUND_S, f"after {BOUND_S:g} s only {sorted(seen)}:\n{out}"
            assert proc.poll() is None, f"the demo exited {proc.returncode}:\n{out}"
            time.sleep(1)
            text = "".join(lines)
            for name in ("prometheus", "alertmanager"):
                m = re.search(rf"^  {name} +(http://127\.0\.0\.1:\d+)", text, re.M)
                if m:
                    urls[name] = m.group(1)
            if len(urls) < 2:
                continue
            fired |= {
                _key(a)
                for a in _json(f"{urls['prometheus']}/api/v1/alerts")["data"]["alerts"]
                if a["state"] == "firing"
            }
            now = time.monotonic() - t0
            held = _json(f"{urls['alertmanager']}/api/v2/alerts")
            if any(a["labels"]["alertname"] == "InferwatchDriftSustained" for a in held):
                seen.setdefault("drift alert in Alertmanager", now)
            if re.search(r"retraining webhook msg_\w+: signature verified; policy retrain-on-drift, model fraud", text):
                seen.setdefault("signed webhook verified", now)
            if _shadow_table(text):
                seen.setdefault("shadow table", now)
            if "canary fraud-detector/canary vs control: fail" in text:
                seen.setdefault("canary fail", now)
            # The view's TTFT column (the mean, ~250 ms) for the LLM's keys.
            if re.search(r"^  chat-llm +1 +control( +\S+){5} +[1-9]\d\d +", text, re.M):
                seen.setdefault("LLM TTFT", now)
        print(f"\nseen after (s): { {k: round(v) for k, v in seen.items()} }")

        samples = parse(get(metrics)[1].decode())
        assert total(samples, "inferwatch_llm_time_to_first_token_seconds_count", model="chat-llm") > 0
        for model, variant in (
            ("fraud-detector", "control"),
            ("fraud-detector", "canary"),
            ("recsys-ranker", "default"),
            ("chat-llm", "control"),
            ("chat-llm", "canary"),
        ):
            assert total(samples, "inferwatch_events_total", model=model, variant=variant) > 0, (model, variant)
        assert total(samples, "inferwatch_events_invalid_total") > 0  # the demo injects malformed records
        assert total(samples, "inferwatch_labels_total", outcome="joined") > 0
        assert 0.5 < total(samples, "inferwatch_model_performance", metric="accuracy", model="recsys-ranker") < 1.0
        # Healthy keys page nobody: only the injected faults fired, and nothing else is pending now.
        assert fired <= INJECTED, fired - INJECTED
        now_alerts = _json(f"{urls['prometheus']}/api/v1/alerts")["data"]["alerts"]
        assert [a["labels"] for a in now_alerts if _key(a) not in INJECTED] == []
        text = "".join(lines)
        assert "canary chat-llm/canary vs control: fail" in text and "(tpot +" in text
        assert f"http://127.0.0.1:{port}/metrics" in text

        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
        assert proc.returncode == 0, "".join(lines)[-3000:]
        # Everything the demo started stopped with it.
        for url in (metrics, f"{urls['prometheus']}/-/ready", f"{urls['alertmanager']}/-/ready"):
            assert not _answers(url), url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
