"""HTTP endpoints: /metrics, /healthz, /readyz, /v1/status, /v1/canary, /v1/shadow and POST /v1/alertmanager."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import structlog

from daemon.exposition import CONTENT_TYPE
from daemon.lifecycle import Watchdog

log = structlog.get_logger(__name__)


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        render_metrics: Callable[[], bytes],
        watchdog: Watchdog,
        status: Callable[[], dict[str, Any]],
        canary: Callable[[str | None], dict[str, Any] | None] = lambda model: None,
        shadow: Callable[[], dict[str, Any]] = lambda: {"enabled": False},
        alertmanager: Callable[[str | None, bytes], tuple[int, dict[str, Any]]] | None = None,
        max_body_bytes: int = 1_048_576,
    ) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._route(self)

            def do_POST(self) -> None:
                server._post(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per scrape is noise; errors are logged by the routes

        self.render_metrics = render_metrics
        self.watchdog = watchdog
        self.status = status
        self.canary = canary
        self.shadow = shadow
        self.alertmanager = alertmanager
        self.max_body_bytes = max_body_bytes
        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever(), which may never have run
            self._httpd.shutdown()
        self._httpd.server_close()

    def _route(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                body = self.render_metrics()
                gzipped = "gzip" in req.headers.get("Accept-Encoding", "")
                # Level 1: ~10x smaller for a few ms; the scrape is CPU we take from ingestion.
                self._send(req, 200, gzip.compress(body, 1) if gzipped else body, CONTENT_TYPE, gzipped)
            elif path == "/healthz":
                ok = self.watchdog.healthy
                since = round(self.watchdog.seconds_since_beat, 3)
                self._json(req, 200 if ok else 503, {"ok": ok, "seconds_since_loop": since})
            elif path == "/readyz":
                # Never depends on Kafka: a sidecar's readiness gates the whole Pod.
                ready = self.watchdog.ready
                self._json(req, 200 if ready else 503, {"ready": ready})
            elif path == "/v1/status":
                self._json(req, 200, self.status())
            elif path == "/v1/canary" or path.startswith("/v1/canary/"):
                # Argo Rollouts' web provider reads the verdict here (deploy/argo).
                model = unquote(path[len("/v1/canary/") :]) if path.startswith("/v1/canary/") else None
                report = self.canary(model)
                if report is None:
                    self._json(req, 404, {"error": f"no canary for model {model!r}", **(self.canary(None) or {})})
                else:
                    self._json(req, 200, report)
            elif path == "/v1/shadow":
                self._json(req, 200, self.shadow())
            else:
                self._json(req, 404, {"error": f"no route {path}", "routes": ROUTES})
        except Exception as exc:
            log.exception("http_handler_failed", path=path)
            self._json(req, 500, {"error": type(exc).__name__})

    def _post(self, req: BaseHTTPRequestHandler) -> None:
        """POST /v1/alertmanager (with receiver.token set): Alertmanager's webhook. Nothing else takes POST."""
        path = req.path.split("?", 1)[0]
        if path != "/v1/alertmanager" or self.alertmanager is None:
            req.close_connection = True
            why = "receiver.token is not set" if path == "/v1/alertmanager" else "POST takes /v1/alertmanager only"
            self._json(req, 404, {"error": f"no POST route {path}: {why}"})
            return
        try:
            length = int(req.headers.get("Content-Length", ""))
        except ValueError:
            req.close_connection = True
            self._json(req, 411, {"error": "a Content-Length is required"})
            return
        if length > self.max_body_bytes:
            req.close_connection = True  # the body is not read: this connection cannot be reused
            self._json(req, 413, {"error": f"body over receiver.max_body_bytes={self.max_body_bytes}"})
            return
        try:
            code, body = self.alertmanager(req.headers.get("Authorization"), req.rfile.read(length))
        except Exception as exc:
            log.exception("http_handler_failed", path=path)
            code, body = 500, {"error": type(exc).__name__}
        self._json(req, code, body)

    @staticmethod
    def _json(req: BaseHTTPRequestHandler, code: int, body: Any) -> None:
        HttpServer._send(req, code, json.dumps(body).encode(), "application/json")

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, code: int, body: bytes, content_type: str, gzipped: bool = False) -> None:
        req.send_response(code)
        req.send_header("Content-Type", content_type)
        if gzipped:
            req.send_header("Content-Encoding", "gzip")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)


ROUTES = [
    "/metrics",
    "/healthz",
    "/readyz",
    "/v1/status",
    "/v1/canary",
    "/v1/canary/{model}",
    "/v1/shadow",
    "POST /v1/alertmanager",
]
