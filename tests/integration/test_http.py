"""HTTP endpoints of an in-process daemon (no broker needed)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from daemon.config import from_mapping
from daemon.runtime.app import Daemon
from tests.integration.support import get


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon(from_mapping({"http": {"host": "127.0.0.1", "port": 0}, "lifecycle": {"watchdog_timeout_seconds": 0.5}}))
    d.http.start()
    yield d
    d.http.stop()


def test_readyz_follows_start_up_not_the_broker(daemon: Daemon) -> None:
    url = f"http://127.0.0.1:{daemon.http.port}"
    assert get(url + "/readyz")[0] == 503
    daemon.watchdog.ready = True
    assert get(url + "/readyz") == (200, b'{"ready": true}')


def test_healthz_is_a_watchdog_on_the_main_loop(daemon: Daemon) -> None:
    url = f"http://127.0.0.1:{daemon.http.port}"
    daemon.watchdog.beat()
    assert get(url + "/healthz")[0] == 200
    daemon.watchdog.timeout_s = 0.0  # as if the loop had not turned for longer than the timeout
    code, body = get(url + "/healthz")
    assert code == 503 and json.loads(body)["ok"] is False


def test_metrics_status_and_unknown_route(daemon: Daemon) -> None:
    url = f"http://127.0.0.1:{daemon.http.port}"
    code, body = get(url + "/metrics")
    assert code == 200 and b"inferwatch_build_info" in body
    code, body = get(url + "/v1/status")
    assert code == 200 and json.loads(body)["events"] == 0
    code, body = get(url + "/nope")
    assert code == 404 and "/metrics" in json.loads(body)["routes"]
