"""Real Prometheus and Alertmanager (Debian's packages, started by daemon.dev.observability, which
the demo shares) as test processes, and a webhook receiver that records what it gets."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from daemon.dev import observability
from daemon.dev.observability import ROOT, Prometheus, prometheus

__all__ = ["ROOT", "Delivery", "Prometheus", "WebhookReceiver", "alertmanager", "prometheus", "webhook_receiver"]


@contextmanager
def alertmanager(tmp: Path, receiver_url: str, token_file: Path, repeat: str = "4s") -> Iterator[str]:
    """Routes everything to `receiver_url` with a bearer token; re-sends every `repeat`. Yields host:port."""
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
    with observability.alertmanager(tmp, config) as address:
        yield address


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
