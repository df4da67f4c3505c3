"""POST /v1/drift/reference on a real socket: the admin token, bad bodies, and a pin and a reset
that change what the drift streams do."""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from daemon.config import ConfigError, from_mapping
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.runtime.app import Daemon

TOKEN = "an-admin-token-of-some-length"


def post(port: int, body: Any, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/drift/reference", data, headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon(
        from_mapping({"http": {"host": "127.0.0.1", "port": 0, "admin_token": TOKEN}, "drift": {"streams": "features"}})
    )
    d.http.start()
    try:
        yield d
    finally:
        d.http.stop()


def feed(d: Daemon, start: int, n: int, mean: float) -> None:
    rng = random.Random(start)
    records = [
        RawRecord(
            "t",
            0,
            i,
            None,
            None,
            json.dumps(
                {"request_id": f"r{i}", "model": "m", "variant": "a", "features": {"x": rng.gauss(mean, 1)}}
            ).encode(),
        )
        for i in range(start, start + n)
    ]
    d.pipeline.process(chunks_of(records))


def states(d: Daemon) -> dict[str, int]:
    (row,) = d.pipeline.summary()
    return row["drift"]["streams"]  # type: ignore[no-any-return]


def test_the_route_needs_the_admin_token_and_a_well_formed_body(daemon: Daemon) -> None:
    port = daemon.http.port
    assert post(port, {"action": "reset", "model": "m"}, token=None)[0] == 401
    assert post(port, {"action": "reset", "model": "m"}, token="not-the-admin-token-at-all")[0] == 401
    for body, says in (
        (b"{nope", "not JSON"),
        ([1], "JSON object"),
        ({"action": "reset", "model": "m", "extra": 1}, "JSON object"),
        ({"action": "forget", "model": "m"}, "reset, pin or unpin"),
        ({"action": "reset"}, "model must be a string (required)"),
        ({"action": "reset", "model": "m", "stream": 3}, "stream must be a string"),
    ):
        code, answer = post(port, body)
        assert code == 400 and says in answer["error"], body
    assert post(port, {"action": "reset", "model": "unknown"})[0] == 404


def test_pin_then_reset_by_api(daemon: Daemon) -> None:
    port = daemon.http.port
    feed(daemon, 0, 1_500, 0.0)
    code, answer = post(port, {"action": "pin", "model": "m", "variant": "a", "stream": "feature:x"})
    assert code == 200 and [s["stream"] for s in answer["streams"]] == ["feature:x"]
    feed(daemon, 1_500, 1_500, 3.0)  # a pinned stream reports once, then holds
    assert states(daemon)["drifted"] == 1
    code, answer = post(port, {"action": "reset", "model": "m"})
    assert code == 200 and answer["streams"][0] == {
        "model": "m",
        "version": "unknown",
        "variant": "a",
        "stream": "feature:x",
        "partition": 0,
    }
    assert states(daemon)["reference"] == 1
    feed(daemon, 3_000, 1_000, 3.0)
    # Calibrated on the daemon's background thread: taken at a tick.
    deadline = time.monotonic() + 30
    while states(daemon)["active"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        daemon.pipeline.tick()
    assert states(daemon)["active"] == 1


def test_without_a_token_there_is_no_route_and_a_short_one_is_refused() -> None:
    d = Daemon(from_mapping({"http": {"host": "127.0.0.1", "port": 0}}))
    d.http.start()
    try:
        code, answer = post(d.http.port, {"action": "reset", "model": "m"})
        assert code == 404 and "http.admin_token is not set" in answer["error"]
    finally:
        d.http.stop()
    with pytest.raises(ConfigError, match="admin_token"):
        from_mapping({"http": {"admin_token": "short"}})
