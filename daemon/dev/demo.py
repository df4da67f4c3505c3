"""`inferwatch demo`: the whole loop in one command, without Docker.

An embedded broker and synthetic traffic; the daemon on it, with shadow benchmarks of two tiny
models built at start-up; Debian's Prometheus and Alertmanager with the project's rules (every
`for:` shortened) and Alertmanager config, pointed at the daemon; and a webhook receiver that
verifies the signed retraining webhooks the daemon sends when the drift alert fires.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from daemon.config import Config, from_mapping
from daemon.dev import observability
from daemon.dev.broker import TansuBroker, free_port
from daemon.dev.generator import LABEL_DELAY_S, TrafficGenerator, TrafficSpec, encode, parse_change
from daemon.dev.view import Snapshot, View, alert_rows, open_view
from daemon.retraining.signing import verify
from daemon.runtime.app import Daemon

TOPIC = "inference-logs"
LABELS_TOPIC = "inference-labels"
DEAD_LETTER_TOPIC = "inference-logs-dead-letter"
DRIFT_AFTER_S = 180.0
MODELS = (
    ("fraud-detector", ("control", "canary")),
    ("recsys-ranker", ()),
    ("chat-llm", ("control", "canary")),
)
LLM_MODELS = ("chat-llm",)
# Objectives the demo's healthy keys meet, so that only the injected faults alert: the
# generator's models err 1% of the time and are right 68-76% of the time; the LLM answers
# in ~250 ms to its first token and ~30 ms per token after it.
SLO = {
    "default": {"latency_ms": 250, "goodput": 0.97, "error_rate": 0.02, "accuracy": 0.6},
    "models": {"chat-llm": {"ttft_ms": 1000, "tpot_ms": 60, "goodput": 0.97, "error_rate": 0.02}},
}
# One malformed record in this many, to show that bad input costs only a counter.
MALFORMED_EVERY = 500
DRIFT_ALERT = "InferwatchDriftSustained"
SHADOW_SOURCE = "fraud-detector"
FEATURES = [f"f{j}" for j in range(6)]


@dataclass(frozen=True)
class DemoOptions:
    """The demo's flags (docs/operations.md, `demo`)."""

    duration_s: float | None = None
    http_port: int | None = None
    rate: float = 300.0
    every_s: float = 5.0
    seed: int = 1
    drift_after_s: float = DRIFT_AFTER_S
    shadow_every_s: float = 60.0
    prometheus: bool = True
    scrape_every_s: float = 5.0
    alert_for_s: float = 30.0


def changes(drift_after_s: float = DRIFT_AFTER_S) -> tuple[str, ...]:
    """The story the demo tells: fraud-detector's canary is 20% slower from the start; the LLM's
    canary is 30% slower per output token but writes 20% shorter answers (its end-to-end latency
    hardly moves: judged on time per output token, it fails); fraud-detector's f0 drifts by 1 sd
    from `drift_after_s`, which fires InferwatchDriftSustained, which triggers a retraining webhook."""
    return (
        "after=0 model=fraud-detector variant=canary latency=+20%",
        "after=0 model=chat-llm variant=canary tpot=+30% tokens=-20%",
        f"after={drift_after_s:g}s model=fraud-detector feature=f0 shift=1",
    )


def demo_config(
    bootstrap: str,
    http_port: int,
    tmp: Path | None = None,
    *,
    receiver_url: str = "",
    secret: str = "",
    shadow_every_s: float = 60.0,
) -> Config:
    """The daemon's config; with `tmp`, also shadow benchmarks of the models built there
    (`build_models`), Alertmanager's webhook (its token in tmp/receiver-token) and retraining
    webhooks, signed with `secret`, to `receiver_url`."""
    config: dict[str, Any] = {
        "source": {"kafka": {"bootstrap_servers": [bootstrap], "topics": [TOPIC], "group_id": "inferwatch-demo"}},
        "dead_letter": {"topic": DEAD_LETTER_TOPIC},
        "labels": {"topic": LABELS_TOPIC},
        "http": {"host": "127.0.0.1", "port": http_port},
        "slo": SLO,
        # Labels come LABEL_DELAY_S after their events: the canary's accuracy need not wait
        # the default 300 s of event time for them.
        "canary": {"label_wait_seconds": 30},
        # The view tells the story; the daemon's own lines (its consumer process's too) would drown it.
        "logging": {"level": "error"},
    }
    if tmp is None:
        return from_mapping(config)
    inputs = [{"name": "x", "features": FEATURES}]
    shadow_model = {"source_model": SHADOW_SOURCE, "inputs": inputs, "classes": [0, 1], "device": "cpu"}
    config["shadow"] = {
        "enabled": True,
        "models": [
            {"name": "fraud-prod", "runtime": "onnxruntime", "path": str(tmp / "fraud-prod.onnx"), "role": "production"}
            | {"source_variant": "control"}
            | shadow_model,
            {"name": "fraud-cand", "runtime": "torch", "path": str(tmp / "fraud-cand.pt"), "role": "candidate"}
            | shadow_model,
        ],
        "min_samples": 200,
        "interval_seconds": shadow_every_s,
        "jitter_seconds": 0,
        # A short run (a few seconds): the defaults measure for longer, to be precise.
        "warmup_queries": 20,
        "single_stream": {"min_queries": 300, "min_duration_seconds": 0.5, "window_seconds": 0.2},
        "offline": {"batch_sizes": [1, 32], "duration_seconds": 0.2},
        "compare_sessions": 2,
        "compare_queries": 200,
        "bootstrap_resamples": 500,
        # The generator's predictions come with noise the model files lack: about 1 in 5 of them
        # (with the default seed) differs from the production model's; a real model's should not.
        "skew_tolerance": 0.4,
        "history_file": str(tmp / "shadow-history.json"),
    }
    config["retraining"] = {
        "enabled": True,
        "policies": [{"name": "retrain-on-drift", "alerts": [DRIFT_ALERT]}],
        "endpoints": [{"name": "demo-receiver", "url": receiver_url, "secret": secret}],
        "outbox_file": str(tmp / "outbox.sqlite3"),
    }
    config["receiver"] = {"token_file": str(tmp / "receiver-token")}
    return from_mapping(config)


def build_models(tmp: Path, spec: TrafficSpec) -> None:
    """fraud-detector as the generator draws it, as an ONNX production model (its logit, without the
    generator's noise), and a TorchScript candidate with weights 10% off."""
    try:  # onnxruntime and torch run them, in the shadow runner's process
        import onnxruntime  # noqa: F401
        import torch  # noqa: F401

        from daemon.dev.shadow_models import onnx_linear_classifier, torchscript_classifier
    except ImportError as exc:
        raise RuntimeError(
            f"the shadow models need the demo extra ({exc.name} is missing): pip install 'inferwatch[demo]'"
        ) from None
    w, b = TrafficGenerator(spec).logit(SHADOW_SOURCE)
    weights = np.zeros((len(w), 2), np.float32)
    weights[:, 1] = w
    onnx_linear_classifier(tmp / "fraud-prod.onnx", weights, np.array([0.0, b], np.float32))
    off = np.random.default_rng(spec.seed).uniform(0.9, 1.1, len(w)).astype(np.float32)
    weights[:, 1] = w * off
    torchscript_classifier(tmp / "fraud-cand.pt", weights, np.array([0.0, b], np.float32))


@contextmanager
def webhook_receiver(secret: str, note: Callable[[str], None]) -> Iterator[str]:
    """POST /retrain on a free loopback port: verifies each delivery's Standard Webhooks signature
    and notes it (200), or notes why not (401). Yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            why = verify(secret, headers, body, time.time())
            if why is None:
                data = json.loads(body).get("data", {})
                stream = data.get("labels", {}).get("stream", "")
                note(
                    f"retraining webhook {headers['webhook-id']}: signature verified; policy {data.get('policy')}, "
                    f"model {data.get('model')}, alert {data.get('alertname')} {stream}".rstrip()
                )
            else:
                note(f"retraining webhook REJECTED: {why}")
            self.send_response(200 if why is None else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/retrain"
    finally:
        server.shutdown()
        server.server_close()


def _produce(bootstrap: str, spec: TrafficSpec, stop: threading.Event) -> None:
    """Events at the spec's pace, and each event's label LABEL_DELAY_S later (keyed alike)."""
    producer = KafkaProducer(bootstrap_servers=[bootstrap], linger_ms=20)
    rng = random.Random(spec.seed)
    gen = TrafficGenerator(spec)
    due: deque[tuple[float, bytes, bytes]] = deque()
    try:
        for i, ev in enumerate(gen.paced_events()):
            if stop.is_set():
                break
            key, value = encode(ev)
            if i % MALFORMED_EVERY == MALFORMED_EVERY - 1:
                value = value[: rng.randrange(1, len(value) - 1)]  # truncated JSON
            producer.send(TOPIC, key=key, value=value)
            now = time.monotonic()
            if "score" in ev:  # an LLM's answers have no label
                due.append((now + LABEL_DELAY_S, *encode(gen.label(ev))))
            while due and due[0][0] <= now:
                _, k, v = due.popleft()
                producer.send(LABELS_TOPIC, key=k, value=v)
    finally:
        producer.close(timeout=5)


def _ttft_ms(daemon: Daemon) -> dict[tuple[str, str], float]:
    """Mean time to first token per LLM (model, variant), from the daemon's own exposition."""
    sums: dict[tuple[str, str], list[float]] = {}
    for family in text_string_to_metric_families(daemon.exposition.render().decode()):
        if family.name != "inferwatch_llm_time_to_first_token_seconds":
            continue
        for sample in family.samples:
            part = sample.name.removeprefix(family.name)
            if part in ("_sum", "_count"):
                acc = sums.setdefault((sample.labels["model"], sample.labels["variant"]), [0.0, 0.0])
                acc[part == "_count"] += sample.value
    return {k: 1000 * s / n for k, (s, n) in sums.items() if n}


class _Alerting:
    """Prometheus and Alertmanager as the view reads them; tells of each alert's new state."""

    def __init__(self, prom: observability.Prometheus, am: str, note: Callable[[str], None]) -> None:
        self.prom, self.am, self.note = prom, am, note
        self._states: dict[tuple[str, ...], str] = {}

    def rows(self) -> list[tuple[str, ...]]:
        try:
            rows = alert_rows(self.prom.alerts(), observability.alertmanager_alerts(self.am))
        except OSError as exc:
            self.note(f"alerts: cannot read Prometheus or Alertmanager: {exc}")
            return []
        states = {row[:4]: f"{row[4]}, in Alertmanager: {row[5]}" for row in rows}
        for alert, state in states.items():
            if self._states.get(alert) != state:
                self.note(f"alert {' '.join(c for c in alert if c)}: {state}")
        for alert in self._states.keys() - states.keys():
            self.note(f"alert {' '.join(c for c in alert if c)}: no longer pending or firing")
        self._states = states
        return rows


def _run_daemon(daemon: Daemon, result: list[Any]) -> None:
    try:
        result.append(daemon.run())
    except BaseException as exc:  # re-raised by the demo's main thread
        result.append(exc)


def run_demo(opts: DemoOptions) -> int:
    started = time.time()
    with ExitStack() as stack:
        view = stack.enter_context(open_view())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="inferwatch-demo-")))
        broker = stack.enter_context(TansuBroker())
        broker.create_topics([TOPIC, LABELS_TOPIC], partitions=3)
        broker.create_topics([DEAD_LETTER_TOPIC])
        spec = TrafficSpec(
            models=MODELS,
            llm_models=LLM_MODELS,
            rate=opts.rate,
            duration_s=opts.duration_s + 60 if opts.duration_s else 7 * 24 * 3600.0,
            seed=opts.seed,
            changes=tuple(parse_change(c) for c in changes(opts.drift_after_s)),
        )
        build_models(tmp, spec)
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        receiver_url = stack.enter_context(webhook_receiver(secret, view.note))
        (tmp / "receiver-token").write_text(secrets.token_hex(16))
        port = opts.http_port or free_port()
        config = demo_config(
            broker.bootstrap, port, tmp, receiver_url=receiver_url, secret=secret, shadow_every_s=opts.shadow_every_s
        )
        daemon = Daemon(config)

        stop = threading.Event()
        producer = threading.Thread(target=_produce, args=(broker.bootstrap, spec, stop), name="generator", daemon=True)
        producer.start()
        stack.callback(producer.join, 10)
        stack.callback(stop.set)
        # The daemon runs on a thread of its own; Ctrl-C and SIGTERM (handled here, in the main
        # thread) ask it to stop, as they would `inferwatch run`.
        daemon.shutdown.install()
        result: list[Any] = []
        runner = threading.Thread(target=_run_daemon, args=(daemon, result), name="daemon")
        runner.start()
        stack.callback(runner.join)
        stack.callback(daemon.shutdown.request, "demo_stopped")
        while not daemon.watchdog.ready and runner.is_alive():
            time.sleep(0.1)
        if runner.is_alive():
            view.note(f"inferwatch demo: broker {broker.bootstrap}, topic {TOPIC}, {opts.rate:g} events/s")
            alerting = _start_alerting(opts, stack, tmp, daemon, view)
            _refresh(opts, daemon, runner, view, started, alerting)
        runner.join()
    if result and isinstance(result[0], BaseException):
        raise result[0]
    return int(result[0]) if result else 0


def _refresh(
    opts: DemoOptions,
    daemon: Daemon,
    runner: threading.Thread,
    view: View,
    started: float,
    alerting: _Alerting | None,
) -> None:
    """The view, refreshed every opts.every_s until the daemon stops (Ctrl-C, an error or --duration)."""
    view.note(
        f"fraud-detector's f0 drifts from {opts.drift_after_s:g} s; shadow runs every {opts.shadow_every_s:g} s. "
        "Ctrl-C stops everything."
    )
    end = started + opts.duration_s if opts.duration_s is not None else float("inf")
    while runner.is_alive() and not daemon.shutdown.requested:
        view.update(_snapshot(daemon, started, alerting))
        if time.time() >= end:
            daemon.shutdown.request("demo_duration_reached")
        daemon.shutdown.wait(max(0.0, min(opts.every_s, end - time.time())))


def alerting_skipped(opts: DemoOptions) -> str | None:
    """Why the demo starts no Prometheus and Alertmanager, or None when it does."""
    if not opts.prometheus:
        return "--no-prometheus"
    missing = observability.missing_binaries()
    if missing:
        return (
            f"{' and '.join(missing)} not on PATH; `make tools` installs Debian's prometheus and "
            "prometheus-alertmanager"
        )
    return None


def _start_alerting(opts: DemoOptions, stack: ExitStack, tmp: Path, daemon: Daemon, view: View) -> _Alerting | None:
    """The daemon's URLs; Alertmanager (the project's config, pointed at the daemon) and Prometheus
    (the project's rules, every `for:` shortened) and theirs, or a line saying why not."""
    base = f"http://127.0.0.1:{daemon.http.port}"
    for path in ("/metrics", "/v1/status", "/v1/canary", "/v1/shadow"):
        view.note(f"  daemon      {base}{path}")
    skipped = alerting_skipped(opts)
    if skipped is not None:
        view.note(f"skipped: Prometheus and Alertmanager ({skipped}): no alert, so no retraining webhook")
        return None
    every = _duration(opts.scrape_every_s)
    am_config = observability.project_alertmanager_config(f"{base}/v1/alertmanager", tmp / "receiver-token", every)
    am = stack.enter_context(observability.alertmanager(tmp / "alertmanager", am_config))
    target = base.removeprefix("http://")
    prom = stack.enter_context(
        observability.prometheus(tmp / "prometheus", [target], am, for_=_duration(opts.alert_for_s), every=every)
    )
    view.note(f"  prometheus  {prom.url}/alerts  (project rules, every for: {opts.alert_for_s:g}s)")
    view.note(f"  alertmanager http://{am}/#/alerts")
    return _Alerting(prom, am, view.note)


def _duration(seconds: float) -> str:
    """As Prometheus and Alertmanager write a duration (whole units only)."""
    return f"{round(seconds * 1000)}ms"


def _snapshot(daemon: Daemon, started: float, alerting: _Alerting | None) -> Snapshot:
    return Snapshot(
        elapsed_s=time.time() - started,
        status=daemon.status(),
        canaries=daemon.canary_report(None) or {},
        shadow=daemon.shadow_report(),
        ttft_ms=_ttft_ms(daemon),
        alerts=None if alerting is None else alerting.rows(),
    )
