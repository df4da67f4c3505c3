from __future__ import annotations

import base64
import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from daemon.config import RetrainingPolicy, WebhookEndpoint
from daemon.retraining.outbox import Outbox
from daemon.retraining.sender import Sender, retry_after
from daemon.retraining.triggers import Alert, Triggers

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
BODY = b'{"type":"inferwatch.retraining.triggered","data":{"model":"fraud"}}'

# (status, response headers, seconds to wait before answering)
Reply = tuple[int, dict[str, str], float]


class Hook:
    """A local webhook receiver: answers a scripted sequence of replies (then 200), recording each request."""

    def __init__(self, *script: Reply | int) -> None:
        self.script = [(r, {}, 0.0) if isinstance(r, int) else r for r in script]
        self.requests: list[tuple[dict[str, str], bytes]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hook.lock:
                    hook.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status, headers, delay = hook.script.pop(0) if hook.script else (200, {}, 0.0)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the client gave up (a timeout test)

            do_GET = do_POST  # a followed redirect would arrive as a GET

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeClock:
    """Starts at the real time, so standardwebhooks (5 minutes' tolerance) accepts the timestamps."""

    def __init__(self) -> None:
        self.t = float(int(time.time()))

    def __call__(self) -> float:
        return self.t


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def hooks() -> Iterator[Callable[..., Hook]]:
    made: list[Hook] = []

    def make(*script: Reply | int) -> Hook:
        made.append(Hook(*script))
        return made[-1]

    yield make
    for h in made:
        h.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "outbox.sqlite3")


@pytest.fixture
def box(path: str, clock: FakeClock) -> Iterator[Outbox]:
    outbox = Outbox(path, clock=clock)
    yield outbox
    outbox.close()


def endpoint(name: str, url: str, timeout: float = 5.0) -> WebhookEndpoint:
    return WebhookEndpoint(name=name, url=url, secret=SecretStr(SECRET), timeout_seconds=timeout)


def sender(box: Outbox, clock: Callable[[], float], *endpoints: WebhookEndpoint, **kw: object) -> Sender:
    options: dict[str, object] = {
        "initial_backoff": 1.0,
        "max_backoff": 300.0,
        "give_up_after": 86_400.0,
        "clock": clock,
        "rng": random.Random(7),
        **kw,
    }
    return Sender(box, endpoints, **options)  # type: ignore[arg-type]


def row(path: str, tid: str, endpoint: str) -> tuple[str, int, float, int | None, str | None]:
    db = sqlite3.connect(path)
    try:
        r = db.execute(
            "SELECT status, attempts, next_attempt_at, last_status, last_error FROM deliveries "
            "WHERE trigger_id = ? AND endpoint = ?",
            (tid, endpoint),
        ).fetchone()
        return (r[0], r[1], r[2], r[3], r[4])
    finally:
        db.close()


def nonzero(counter: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {k: v for k, v in counter.items() if v}


def test_retries_keep_id_and_body_with_fresh_verifiable_signatures(
    hooks: Callable[..., Hook], box: Outbox, clock: FakeClock, path: str
) -> None:
    hook = hooks(500, (429, {"Retry-After": "1"}, 0.0), 200)
    s = sender(box, clock, endpoint("ml", hook.url))
    box.add_trigger("msg_t1", "drift", "fraud", BODY, ("ml",), fired_at=clock.t)
    assert s.run_once() == 1
    assert row(path, "msg_t1", "ml")[:2] == ("pending", 1)
    assert s.run_once() == 0  # not due yet
    for _ in range(2):
        at = box.next_attempt_at(("ml",))
        assert at is not None
        clock.t = max(at, clock.t + 2)
        assert s.run_once() == 1
    assert row(path, "msg_t1", "ml")[:2] == ("delivered", 3)
    assert [status for status, _, _ in hook.script] == []
    assert len(hook.requests) == 3
    assert {h["webhook-id"] for h, _ in hook.requests} == {"msg_t1"}
    assert {b for _, b in hook.requests} == {BODY}
    assert len({h["webhook-timestamp"] for h, _ in hook.requests}) == 3
    assert len({h["webhook-signature"] for h, _ in hook.requests}) == 3
    for h, b in hook.requests:
        assert h["content-type"] == "application/json"
        assert Webhook(SECRET).verify(b, h) == json.loads(BODY)
    assert nonzero(s.attempts) == {("ml", "5xx"): 1, ("ml", "4xx"): 1, ("ml", "2xx"): 1}
    assert s.delivered == {"ml": 1} and s.failed == {"ml": 0}


def test_gone_disables_the_endpoint_only(hooks: Callable[..., Hook], box: Outbox, clock: FakeClock, path: str) -> None:
    gone, ok = hooks(410, 410), hooks()
    s = sender(box, clock, endpoint("gone", gone.url), endpoint("ok", ok.url))
    box.add_trigger("msg_1", "drift", "fraud", BODY, ("gone", "ok"), fired_at=clock.t)
    box.add_trigger("msg_2", "drift", "churn", BODY, ("gone", "ok"), fired_at=clock.t + 1)
    clock.t += 1
    assert s.run_once() == 3
    assert len(gone.requests) == 1 and len(ok.requests) == 2
    assert row(path, "msg_1", "gone") == ("failed", 1, clock.t - 1, 410, "endpoint disabled (410)")
    assert row(path, "msg_2", "gone")[::4] == ("failed", "endpoint disabled (410)")
    assert s.failed == {"gone": 2, "ok": 0} and s.delivered == {"gone": 0, "ok": 2}
    assert box.stats(("gone", "ok"))["gone"] == {"pending": 0, "oldest_pending_age_seconds": 0.0, "disabled": True}
    box.add_trigger("msg_3", "drift", "fraud", BODY, ("gone", "ok"), fired_at=clock.t)
    assert s.run_once() == 1
    assert len(gone.requests) == 1 and len(ok.requests) == 3


def test_timeout_is_retried(hooks: Callable[..., Hook], box: Outbox, clock: FakeClock, path: str) -> None:
    hook = hooks((200, {}, 1.0))
    s = sender(box, clock, endpoint("slow", hook.url, timeout=0.2))
    box.add_trigger("msg_1", "drift", "fraud", BODY, ("slow",), fired_at=clock.t)
    started = time.monotonic()
    assert s.run_once() == 1
    assert time.monotonic() - started < 0.9
    status, attempts, at, last_status, error = row(path, "msg_1", "slow")
    assert (status, attempts, last_status, error) == ("pending", 1, None, "timeout after 0.2 s")
    assert clock.t + 0.1 <= at <= clock.t + 1.0  # full jitter on [0, initial], floored at 0.1 x initial
    clock.t = at
    assert s.run_once() == 1
    assert row(path, "msg_1", "slow")[0] == "delivered"
    assert nonzero(s.attempts) == {("slow", "timeout"): 1, ("slow", "2xx"): 1}


@pytest.mark.parametrize(
    ("status", "headers", "delay"),
    [
        (429, {"Retry-After": "120"}, 120.0),
        (503, {"Retry-After": "0"}, 0.1),  # floored
        (502, {"Retry-After": "100000"}, 300.0),  # capped at max_backoff
        (504, {"Retry-After": "soon"}, 2.0),  # unreadable: the slow-down step
        (503, {}, 2.0),  # twice the first backoff step (1 s)
    ],
)
def test_slow_down_honours_retry_after(
    hooks: Callable[..., Hook],
    box: Outbox,
    clock: FakeClock,
    path: str,
    status: int,
    headers: dict[str, str],
    delay: float,
) -> None:
    hook = hooks((status, headers, 0.0))
    s = sender(box, clock, endpoint("ml", hook.url))
    box.add_trigger("msg_1", "drift", "fraud", BODY, ("ml",), fired_at=clock.t)
    s.run_once()
    assert row(path, "msg_1", "ml")[2:] == (clock.t + delay, status, f"HTTP {status}")


def test_retry_after_http_date(hooks: Callable[..., Hook], box: Outbox, clock: FakeClock, path: str) -> None:
    hook = hooks((503, {"Retry-After": formatdate(clock.t + 90, usegmt=True)}, 0.0))
    s = sender(box, clock, endpoint("ml", hook.url))
    box.add_trigger("msg_1", "drift", "fraud", BODY, ("ml",), fired_at=clock.t)
    s.run_once()
    assert row(path, "msg_1", "ml")[2] == pytest.approx(clock.t + 90)


def test_retry_after_parsing() -> None:
    assert retry_after({"retry-after": " 7 "}, 0.0) == 7.0
    assert retry_after({"RETRY-AFTER": "Wed, 21 Oct 2015 07:28:00 GMT"}, 1445412470.0) == 10.0
    assert retry_after({}, 0.0) is None
    assert retry_after({"Retry-After": "-5"}, 0.0) is None


def test_backoff_is_full_jitter_exponential_and_capped(box: Outbox, clock: FakeClock, path: str) -> None:
    def refused(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, dict[str, str]]:
        raise ConnectionRefusedError(111, "Connection refused")

    s = sender(box, clock, endpoint("ml", "http://127.0.0.1:9/"), initial_backoff=2.0, max_backoff=60.0, post=refused)
    box.add_trigger("msg_1", "drift", "fraud", BODY, ("ml",), fired_at=clock.t)
    delays = []
    for n in range(1, 13):
        assert s.run_once() == 1
        _, attempts, at, _, error = row(path, "msg_1", "ml")
        assert attempts == n and error == "ConnectionRefusedError: [Errno 111] Connection refused"
        delays.append(at - clock.t)
        assert 0.2 <= delays[-1] <= min(60.0, 2.0 * 2 ** (n - 1))
        clock.t = at
    assert max(delays[6:]) > 30  # late delays use the whole capped range
    assert len(set(delays)) == len(delays)  # jittered
    assert s.attempts[("ml", "error")] == 12


def test_gives_up_after_give_up_after(hooks: Callable[..., Hook], box: Outbox, clock: FakeClock, path: str) -> None:
    hook = hooks(*[500] * 5)
    s = sender(box, clock, endpoint("ml", hook.url), give_up_after=3600.0)
    box.add_trigger("msg_1", "drift", "fraud", BODY, ("ml",), fired_at=clock.t)
    s.run_once()
    clock.t += 1800
    s.run_once()
    assert box.stats(("ml",)) == {"ml": {"pending": 1, "oldest_pending_age_seconds": 1800.0, "disabled": False}}
    clock.t += 1800
    s.run_once()
    assert row(path, "msg_1", "ml")[::3] == ("failed", 500)
    assert row(path, "msg_1", "ml")[1] == 3
    assert s.failed == {"ml": 1}
    assert box.stats(("ml",))["ml"]["pending"] == 0
    clock.t += 86_400
    assert s.run_once() == 0


def test_redirects_are_not_followed(hooks: Callable[..., Hook], box: Outbox, clock: FakeClock, path: str) -> None:
    target = hooks()
    hook = hooks((302, {"Location": target.url}, 0.0))
    s = sender(box, clock, endpoint("ml", hook.url))
    box.add_trigger("msg_1", "drift", "fraud", BODY, ("ml",), fired_at=clock.t)
    s.run_once()
    assert row(path, "msg_1", "ml")[::3] == ("pending", 302)
    assert target.requests == [] and nonzero(s.attempts) == {("ml", "error"): 1}


def test_restart_in_the_middle_of_retries_keeps_the_id(hooks: Callable[..., Hook], clock: FakeClock, path: str) -> None:
    hook = hooks(503, 500)
    box = Outbox(path, clock=clock)
    s = sender(box, clock, endpoint("ml", hook.url))
    box.add_trigger("msg_1", "drift", "fraud", BODY, ("ml",), fired_at=clock.t)
    s.run_once()
    assert s.stop(1.0)
    box.close()

    clock.t += 5
    box = Outbox(path, clock=clock)
    s = sender(box, clock, endpoint("ml", hook.url))
    assert box.stats(("ml",))["ml"] == {"pending": 1, "oldest_pending_age_seconds": 5.0, "disabled": False}
    s.run_once()
    at = box.next_attempt_at(("ml",))
    assert at is not None
    clock.t = at
    s.run_once()
    box.close()
    assert row(path, "msg_1", "ml")[:2] == ("delivered", 3)
    assert [h["webhook-id"] for h, _ in hook.requests] == ["msg_1"] * 3
    assert [b for _, b in hook.requests] == [BODY] * 3
    for h, b in hook.requests:
        Webhook(SECRET).verify(b, h)


def test_thread_delivers_promptly_on_wake_and_stops(hooks: Callable[..., Hook], box: Outbox) -> None:
    hook = hooks()
    s = sender(box, time.time, endpoint("ml", hook.url), poll_interval=30.0)
    triggers = Triggers((RetrainingPolicy(name="drift", alerts=("ModelDrift",)),), box, ("ml",), on_fired=s.wake)
    s.start()
    try:
        time.sleep(0.1)  # the thread is now waiting out its 30 s poll interval
        triggers.on_alerts(
            [Alert("ModelDrift", "firing", {"alertname": "ModelDrift", "model": "fraud"}, {}, time.time(), "fp", "")]
        )
        deadline = time.monotonic() + 5
        while s.delivered["ml"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.delivered["ml"] == 1
        assert json.loads(hook.requests[0][1])["data"]["model"] == "fraud"
    finally:
        started = time.monotonic()
        assert s.stop(5.0)
    assert time.monotonic() - started < 1.0


def test_thread_survives_an_unexpected_error(box: Outbox) -> None:
    calls: list[str] = []

    def flaky(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, dict[str, str]]:
        calls.append(headers["webhook-id"])
        if len(calls) == 1:
            raise RuntimeError("bug")
        return 204, {}

    s = sender(box, time.time, endpoint("ml", "http://127.0.0.1:9/"), post=flaky, poll_interval=0.05)
    box.add_trigger("msg_1", "drift", "fraud", BODY, ("ml",), fired_at=time.time())
    s.start()
    try:
        deadline = time.monotonic() + 5
        while s.delivered["ml"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        assert s.stop(5.0)
    assert calls == ["msg_1", "msg_1"] and s.delivered["ml"] == 1
