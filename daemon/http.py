"""HTTP endpoints: /metrics, /healthz, /readyz and /v1/status, on one server thread."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from daemon.lifecycle import Watchdog

log = structlog.get_logger(__name__)


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        watchdog: Watchdog,
        status: Callable[[], dict[str, Any]],
    ) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._route(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per scrape is noise; errors are logged by the routes

        self.registry = registry
        self.watchdog = watchdog
        self.status = status
        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _route(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                encoder, content_type = choose_encoder(req.headers.get("Accept", ""))
                self._send(req, 200, encoder(self.registry), content_type)
            elif path == "/healthz":
                ok = self.watchdog.healthy
                body = {"ok": ok, "seconds_since_loop": round(self.watchdog.seconds_since_beat, 3)}
                self._json(req, 200 if ok else 503, body)
            elif path == "/readyz":
                # Never depends on Kafka: a sidecar's readiness gates the whole Pod.
                ready = self.watchdog.ready
                self._json(req, 200 if ready else 503, {"ready": ready})
            elif path == "/v1/status":
                self._json(req, 200, self.status())
            else:
                self._json(req, 404, {"error": f"no route {path}", "routes": ROUTES})
        except Exception as exc:
            log.exception("http_handler_failed", path=path)
            self._json(req, 500, {"error": type(exc).__name__})

    @staticmethod
    def _json(req: BaseHTTPRequestHandler, code: int, body: Any) -> None:
        HttpServer._send(req, code, json.dumps(body).encode(), "application/json")

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, code: int, body: bytes, content_type: str) -> None:
        req.send_response(code)
        req.send_header("Content-Type", content_type)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)


ROUTES = ["/metrics", "/healthz", "/readyz", "/v1/status"]
