"""HTTP endpoints: /metrics, /healthz, /readyz, /v1/status, /v1/canary, /v1/shadow, and POST
/v1/alertmanager and /v1/drift/reference.

http.metrics_port moves /metrics to a listener of its own; http.basic_auth (and a client
certificate, with http.tls.client_ca_file) guards every GET but the probes; http.tls serves HTTPS
on every listener. POST /v1/alertmanager has its own bearer token (receiver.token), POST
/v1/drift/reference the admin token (http.admin_token); each route is off without its token.
"""

from __future__ import annotations

import base64
import gzip
import hmac
import json
import ssl
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import structlog

from daemon.config import HttpConfig
from daemon.export.exposition import CONTENT_TYPE
from daemon.runtime.lifecycle import Watchdog

log = structlog.get_logger(__name__)

# The kubelet's probes send no credentials, and these answers reveal nothing.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
CHALLENGE = (("WWW-Authenticate", 'Basic realm="inferwatch"'),)


class _Listener(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None
    ) -> None:
        super().__init__(address, handler)
        if tls is not None:
            # The handshake happens at the first read, on the connection's own thread: a client that
            # never finishes one holds up only itself, not the accept loop.
            self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A failed handshake (plain HTTP on a TLS port, an untrusted client certificate) or a client
        # gone mid-answer: the client's trouble, not a traceback on stderr.
        log.debug("http_connection_failed", client=client_address[0], error=repr(sys.exc_info()[1]))


class HttpServer:
    def __init__(
        self,
        config: HttpConfig,
        render_metrics: Callable[[], bytes],
        watchdog: Watchdog,
        status: Callable[[], dict[str, Any]],
        canary: Callable[[str | None], dict[str, Any] | None] = lambda model: None,
        shadow: Callable[[], dict[str, Any]] = lambda: {"enabled": False},
        alertmanager: Callable[[str | None, bytes], tuple[int, dict[str, Any]]] | None = None,
        max_body_bytes: int = 1_048_576,
        drift_reference: Callable[[str | None, bytes], tuple[int, dict[str, Any]]] | None = None,
    ) -> None:
        server = self

        class ScrapeHandler(BaseHTTPRequestHandler):
            # A client that connects and sends nothing holds its thread this long at most.
            timeout = 30

            def do_GET(self) -> None:
                server._route(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per scrape is noise; errors are logged by the routes

        class Handler(ScrapeHandler):
            def do_POST(self) -> None:
                server._post(self)

        self.render_metrics = render_metrics
        self.watchdog = watchdog
        self.status = status
        self.canary = canary
        self.shadow = shadow
        # POST routes: (handler, or None when off, and why it is off).
        self.posts = {
            "/v1/alertmanager": (alertmanager, "receiver.token is not set"),
            "/v1/drift/reference": (drift_reference, "http.admin_token is not set"),
        }
        self.max_body_bytes = max_body_bytes
        auth = config.basic_auth
        self._credentials = (
            None if auth is None else base64.b64encode(f"{auth.username}:{auth.password.get_secret_value()}".encode())
        )
        self._client_certs = config.tls is not None and config.tls.client_ca_file is not None
        tls = config.tls.ssl_context() if config.tls is not None else None
        self._main = _Listener((config.host, config.port), Handler, tls)
        self._scrape: _Listener | None = None
        self._scrape_host = config.metrics_host or config.host
        if config.metrics_port is not None:
            self._scrape = _Listener((self._scrape_host, config.metrics_port), ScrapeHandler, tls)
        self._listeners = [s for s in (self._main, self._scrape) if s is not None]
        self._threads = [threading.Thread(target=s.serve_forever, name="http", daemon=True) for s in self._listeners]

    @property
    def port(self) -> int:
        return int(self._main.server_address[1])

    @property
    def metrics_port(self) -> int | None:
        """The separate /metrics listener's port; None when /metrics is served on `port`."""
        return None if self._scrape is None else int(self._scrape.server_address[1])

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for listener, thread in zip(self._listeners, self._threads, strict=True):
            if thread.is_alive():  # shutdown() waits for serve_forever(), which may never have run
                listener.shutdown()
            listener.server_close()

    def _refused(self, req: BaseHTTPRequestHandler) -> bool:
        """Answers 403 or 401 (and says True) when the request lacks the client certificate or credentials asked for."""
        conn = req.connection
        if self._client_certs and not (isinstance(conn, ssl.SSLSocket) and conn.getpeercert()):
            self._json(req, 403, {"error": "a client certificate (http.tls.client_ca_file) is required"})
            return True
        scheme, _, given = req.headers.get("Authorization", "").partition(" ")
        if self._credentials is not None and not (
            scheme.lower() == "basic"  # the scheme is case-insensitive (RFC 7617); the credentials are not
            and hmac.compare_digest(given.encode("latin-1"), self._credentials)  # latin-1: the bytes as sent
        ):
            self._json(req, 401, {"error": "basic auth (http.basic_auth) is required"}, CHALLENGE)
            return True
        return False

    def _route(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        if path not in OPEN_PATHS and self._refused(req):
            return
        try:
            if req.server is self._scrape and path != "/metrics":
                self._json(req, 404, {"error": f"no route {path}", "routes": ["/metrics"]})
            elif path == "/metrics" and self._scrape is not None and req.server is not self._scrape:
                where = f"{self._scrape_host}:{self.metrics_port}"
                self._json(req, 404, {"error": f"/metrics is served on {where} (http.metrics_host, http.metrics_port)"})
            elif path == "/metrics":
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
        """POST /v1/alertmanager (receiver.token set): Alertmanager's webhook; POST /v1/drift/reference
        (http.admin_token set): reset or pin drift references. Nothing else takes POST."""
        path = req.path.split("?", 1)[0]
        handler, why = self.posts.get(path, (None, f"POST takes {' and '.join(self.posts)} only"))
        if handler is None:
            req.close_connection = True
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
            code, body = handler(req.headers.get("Authorization"), req.rfile.read(length))
        except Exception as exc:
            log.exception("http_handler_failed", path=path)
            code, body = 500, {"error": type(exc).__name__}
        self._json(req, code, body)

    @staticmethod
    def _json(req: BaseHTTPRequestHandler, code: int, body: Any, headers: tuple[tuple[str, str], ...] = ()) -> None:
        HttpServer._send(req, code, json.dumps(body).encode(), "application/json", headers=headers)

    @staticmethod
    def _send(
        req: BaseHTTPRequestHandler,
        code: int,
        body: bytes,
        content_type: str,
        gzipped: bool = False,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        req.send_response(code)
        req.send_header("Content-Type", content_type)
        if gzipped:
            req.send_header("Content-Encoding", "gzip")
        for name, value in headers:
            req.send_header(name, value)
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
    "POST /v1/drift/reference",
]
