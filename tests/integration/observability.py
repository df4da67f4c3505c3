"""Real Prometheus and Alertmanager (Debian's packages) as test processes, and a webhook receiver.

Each server binds 127.0.0.1 on a free port, keeps its data under the test's tmp directory, runs
in its own session and is killed on exit, whatever the test did.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from daemon.dev.broker import free_port
from tests.integration.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))


def binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: `make test` installs Debian's prometheus and prometheus-alertmanager"
    return path


def shrink_for(rules_file: Path, duration: str) -> str:
    """The rule file with every alert's `for:` set to `duration`: the project's rules, on a test's clock."""
    doc = yaml.safe_load(rules_file.read_text())
    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = duration
    return yaml.safe_dump(doc, sort_keys=False)


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@contextmanager
def _process(argv: list[str], log: Path, ready_url: str, what: str) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:

            def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"{what} exited {proc.returncode}: {log.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(ready_url, timeout=1) as r:
                        return bool(r.status == 200)
                except OSError:
                    return False

            wait_for(ready, 30, f"{what} ready")
            yield proc
        finally:
            with suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait()


@dataclass
class Prometheus:
    url: str

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr, **({"time": str(at)} if at is not None else {})}
        body = _get_json(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}")
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = _get_json(f"{self.url}/api/v1/alerts")["data"]["alerts"]
        return alerts


@contextmanager
def prometheus(
    tmp: Path, targets: Sequence[str], alertmanager: str | None, for_: str = "2s", scrape: Mapping[str, Any] = {}
) -> Iterator[Prometheus]:
    """Scrapes `targets` every second (with `scrape`'s further scrape_config keys) and evaluates the
    project's rules (every `for:` shrunk to `for_`)."""
    tmp.mkdir(parents=True, exist_ok=True)
    rule_files = []
    for f in RULES:
        copy = tmp / f.name
        copy.write_text(shrink_for(f, for_))
        rule_files.append(str(copy))
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": rule_files,
        "scrape_configs": [{"job_name": "inferwatch", "static_configs": [{"targets": list(targets)}], **scrape}],
    }
    if alertmanager is not None:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        binary("prometheus"),
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    url = f"http://127.0.0.1:{port}"
    with _process(argv, tmp / "prometheus.log", f"{url}/-/ready", "prometheus"):
        yield Prometheus(url)


@contextmanager
def alertmanager(tmp: Path, receiver_url: str, token_file: Path, repeat: str = "4s") -> Iterator[str]:
    """Routes everything to `receiver_url` with a bearer token; re-sends every `repeat`. Yields host:port."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = {
        "route": {
            "receiver": "inferwatch",
            "group_by": ["alertname", "model", "version", "variant"],
            "group_wait": "1s",
            "group_interval": "2s",
            "repeat_interval": repeat,
        },
        "receivers": [
            {
                "name": "inferwatch",
                "webhook_configs": [
                    {
                        "url": receiver_url,
                        "send_resolved": True,
                        "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}},
                    }
                ],
            }
        ],
    }
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        binary("prometheus-alertmanager"),
        f"--config.file={tmp / 'alertmanager.yml'}",
        f"--storage.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    with _process(argv, tmp / "alertmanager.log", f"http://127.0.0.1:{port}/-/ready", "alertmanager"):
        yield f"127.0.0.1:{port}"


@dataclass
class Delivery:
    at: float
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    """Records every POST; answers with the next scripted status (200 once the script runs out).

    A negative entry -n answers 200 after n seconds (a timeout for the sender); 429 comes with
    Retry-After: 1.
    """

    url: str
    deliveries: list[Delivery] = field(default_factory=list)
    script: list[int] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [d.headers["webhook-id"] for d in self.deliveries]


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver("")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                receiver.deliveries.append(Delivery(time.time(), {k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.script.pop(0) if receiver.script else 200
            if status < 0:  # a slow receiver: answer 200 after -status seconds, past the sender's timeout
                time.sleep(-status)
                status = 200
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/retrain"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
