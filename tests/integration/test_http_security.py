"""http.tls, http.basic_auth and http.metrics_port on real sockets, and a real Prometheus scraping
the daemon over TLS with basic auth. Certificates come from the openssl command (skipped without it)."""

from __future__ import annotations

import base64
import re
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon.config import ConfigError, from_mapping
from daemon.dev.broker import free_port
from daemon.runtime.http import HttpServer
from daemon.runtime.lifecycle import Watchdog
from tests.integration.observability import prometheus
from tests.integration.support import running_daemon, wait_for

PASSWORD = "correct-horse-battery-staple"
GOOD = "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
WRONG = "Basic " + base64.b64encode(b"prometheus:correct-horse-battery-stapler").decode()


@dataclass
class Pair:
    cert: Path
    key: Path


def self_signed(tmp: Path, name: str) -> Pair:
    """An EC certificate for 127.0.0.1 that is its own CA, and its unencrypted key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command makes the test certificates")
    pair = Pair(tmp / f"{name}.crt", tmp / f"{name}.key")
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-days", "1", "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(pair.key), "-out", str(pair.cert)),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return pair


def request(
    url: str, authorization: str | None = None, context: ssl.SSLContext | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": authorization} if authorization else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers, method=method), context=context) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@contextmanager
def serving(http: dict[str, Any]) -> Iterator[HttpServer]:
    watchdog = Watchdog(30.0)
    watchdog.ready = True
    server = HttpServer(from_mapping({"http": http}).http, lambda: b"up 1\n", watchdog, lambda: {"events": 0})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_tls_files_are_checked_at_start_up(tmp_path: Path) -> None:
    server, other = self_signed(tmp_path, "server"), self_signed(tmp_path, "other")
    tls = {"cert_file": str(server.cert), "key_file": str(server.key)}
    loaded = from_mapping({"http": {"tls": tls}}).http.tls
    assert loaded is not None and loaded.ssl_context().minimum_version == ssl.TLSVersion.TLSv1_2
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(server.key), "-aes256", "-passout", "pass:x", "-out", str(encrypted)],
        check=True,
        timeout=30,
    )
    cases = [
        ({"key_file": str(other.key)}, "key_file: cannot load"),  # another certificate's key
        ({"key_file": str(encrypted)}, "key_file: cannot load"),  # refused, not a prompt on the terminal
        ({"client_ca_file": str(server.key)}, "client_ca_file: cannot load"),
    ]
    for change, message in cases:
        with pytest.raises(ConfigError, match=message):
            from_mapping({"http": {"tls": tls | change}})


def test_basic_auth_and_the_separate_metrics_listener() -> None:
    auth = {"username": "prometheus", "password": PASSWORD}
    # The main listener on every interface, /metrics on loopback only.
    with serving(
        {"host": "0.0.0.0", "port": 0, "metrics_host": "127.0.0.1", "metrics_port": 0, "basic_auth": auth}
    ) as s:
        main, scrape = f"http://127.0.0.1:{s.port}", f"http://127.0.0.1:{s.metrics_port}"
        for url in (f"{main}/v1/status", f"{main}/v1/canary", f"{main}/nope", f"{main}/metrics", f"{scrape}/metrics"):
            for authorization in (None, WRONG, f"Bearer {PASSWORD}"):
                code, headers, _ = request(url, authorization)
                assert (code, headers["WWW-Authenticate"]) == (401, 'Basic realm="inferwatch"'), (url, authorization)
        assert request(f"{main}/healthz")[0] == request(f"{main}/readyz")[0] == 200  # the probes stay open
        assert request(f"{main}/v1/status", GOOD)[0] == 200
        assert request(f"{main}/v1/status", GOOD.replace("Basic", "basic"))[0] == 200  # any case (RFC 7617)
        code, _, body = request(f"{main}/metrics", GOOD)
        assert code == 404 and f"127.0.0.1:{s.metrics_port} (http.metrics_host, http.metrics_port)" in body.decode()
        assert request(f"{scrape}/metrics", GOOD)[::2] == (200, b"up 1\n")
        assert request(f"{scrape}/v1/status", GOOD)[0] == 404
        assert request(f"{scrape}/healthz")[0] == 404
        assert request(f"{scrape}/v1/alertmanager", method="POST")[0] == 501
        # Bound as asked: 127.0.0.2 (loopback too, on Linux) reaches the main listener only.
        socket.create_connection(("127.0.0.2", s.port), timeout=5).close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", s.metrics_port or 0), timeout=5)


# What a client whose certificate the server refuses may see (one or the other, by timing).
REFUSED_HANDSHAKE = "|".join(
    ("UNKNOWN_CA", "EOF occurred in violation of protocol", "UNEXPECTED_EOF", "Connection reset by peer", "Broken pipe")
)


def test_tls_with_client_certificates(tmp_path: Path) -> None:
    server, client = self_signed(tmp_path, "server"), self_signed(tmp_path, "client")
    tls = {"cert_file": str(server.cert), "key_file": str(server.key), "client_ca_file": str(client.cert)}
    anonymous = ssl.create_default_context(cafile=server.cert)
    with_cert = ssl.create_default_context(cafile=server.cert)
    with_cert.load_cert_chain(client.cert, client.key)
    with serving({"host": "127.0.0.1", "port": 0, "tls": tls}) as s:
        url = f"https://127.0.0.1:{s.port}"
        assert request(f"{url}/readyz", context=anonymous)[0] == 200  # the kubelet's probes present none
        assert request(f"{url}/metrics", context=anonymous)[0] == 403
        assert request(f"{url}/metrics", context=with_cert)[::2] == (200, b"up 1\n")
        untrusted = ssl.create_default_context(cafile=server.cert)
        untrusted.load_cert_chain(server.cert, server.key)  # not signed by client_ca_file
        # The server refuses the handshake, even for a probe. Under TLS 1.3 the client's side of the
        # handshake ends before the server has checked its certificate, so the client sees either the
        # server's unknown-CA alert or, when the server closed first, only the closed connection.
        with pytest.raises(OSError) as refused:
            request(f"{url}/readyz", context=untrusted)
        assert re.search(REFUSED_HANDSHAKE, str(refused.value)), refused.value
        with pytest.raises(OSError):  # plain HTTP on the TLS port: the connection is dropped...
            request(f"http://127.0.0.1:{s.port}/readyz")
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # ...as the client trusts it not
            request(f"{url}/readyz", context=ssl.create_default_context())
        assert request(f"{url}/metrics", context=with_cert)[0] == 200  # ...and the server goes on


def test_prometheus_scrapes_over_tls_with_basic_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = self_signed(tmp_path, "server")
    password_file = tmp_path / "metrics-password"
    password_file.write_text(PASSWORD + "\n")
    # support.get (the wait for /readyz) uses Python's default context, which reads SSL_CERT_FILE.
    monkeypatch.setenv("SSL_CERT_FILE", str(server.cert))
    metrics_port = free_port()
    config = {
        "source": {"kafka": {"bootstrap_servers": [f"127.0.0.1:{free_port()}"], "topics": ["logs"]}},
        "http": {
            "metrics_host": "127.0.0.1",
            "metrics_port": metrics_port,
            "basic_auth": {"username": "prometheus", "password_file": str(password_file)},
            "tls": {"cert_file": str(server.cert), "key_file": str(server.key)},
        },
        "logging": {"level": "debug", "format": "json"},
    }
    scrape = {
        "scheme": "https",
        "tls_config": {"ca_file": str(server.cert)},
        "basic_auth": {"username": "prometheus", "password_file": str(password_file)},
    }
    trusting = ssl.create_default_context(cafile=server.cert)
    with running_daemon(tmp_path, config) as d:
        monkeypatch.delenv("SSL_CERT_FILE")  # Prometheus must trust the certificate by its tls_config
        assert d.url.startswith("https://")
        assert request(f"https://127.0.0.1:{metrics_port}/metrics", context=trusting)[0] == 401
        with prometheus(tmp_path / "prometheus", [f"127.0.0.1:{metrics_port}"], None, scrape=scrape) as prom:
            wait_for(lambda: prom.query('up{job="inferwatch"} == 1'), 30, "a successful scrape")
            assert prom.query('inferwatch_build_info{job="inferwatch"}')
        assert request(f"{d.url}/metrics", WRONG, trusting)[0] == 401  # a refused attempt, in case it were logged
        assert d.stop() == 0
        logs = d.logs()
    assert f'"metrics_port": {metrics_port}' in logs  # the "started" line
    assert PASSWORD not in logs and base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode() not in logs
