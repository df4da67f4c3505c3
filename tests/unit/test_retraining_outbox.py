from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.retraining.outbox import SCHEMA_VERSION, Outbox, OutboxError

NAMES = ("a", "b", "c")


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def box(tmp_path: Path, clock: FakeClock) -> Iterator[Outbox]:
    outbox = Outbox(str(tmp_path / "deep" / "er" / "outbox.sqlite3"), clock=clock)
    yield outbox
    outbox.close()


def status(outbox: Outbox, tid: str, endpoint: str) -> tuple[object, ...]:
    db = sqlite3.connect(outbox.path)
    try:
        return tuple(
            db.execute(
                "SELECT status, attempts, next_attempt_at, last_status, last_error, delivered_at FROM deliveries "
                "WHERE trigger_id = ? AND endpoint = ?",
                (tid, endpoint),
            ).fetchone()
        )
    finally:
        db.close()


def test_creates_parent_directory_wal_and_schema_version(box: Outbox) -> None:
    assert Path(box.path).exists()
    db = sqlite3.connect(box.path)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    db.close()


def test_newer_schema_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    Outbox(str(path)).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(OutboxError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        Outbox(str(path))


def test_reopening_keeps_everything(tmp_path: Path, clock: FakeClock) -> None:
    path = str(tmp_path / "outbox.sqlite3")
    box = Outbox(path, clock=clock)
    box.add_trigger("msg_1", "p", "m", b"{}", NAMES, fired_at=900.0)
    box.close()
    box = Outbox(path, clock=clock)
    assert box.has_trigger("msg_1")
    assert box.last_fired_at("p", "m") == 900.0
    assert len(box.due(NAMES)) == 3
    box.close()


def test_add_trigger_is_idempotent_and_atomic(box: Outbox) -> None:
    assert not box.has_trigger("msg_1")
    assert box.last_fired_at("p", "m") is None
    assert box.add_trigger("msg_1", "p", "m", b'{"x":1}', ("a", "b", "a"), fired_at=900.0)
    assert not box.add_trigger("msg_1", "p", "m", b'{"x":2}', NAMES, fired_at=950.0)
    assert box.has_trigger("msg_1")
    assert box.last_fired_at("p", "m") == 900.0
    assert box.last_fired_at("p", "other") is None
    due = box.due(NAMES)
    assert [(d.endpoint, d.attempts, d.created_at, d.body) for d in due] == [
        ("a", 0, 900.0, b'{"x":1}'),
        ("b", 0, 900.0, b'{"x":1}'),
    ]
    with pytest.raises(sqlite3.IntegrityError):  # a failing insert leaves no half-written trigger
        box.add_trigger("msg_2", "p", "m", b"{}", ("a", None), fired_at=950.0)  # type: ignore[arg-type]
    assert not box.has_trigger("msg_2")


def test_last_fired_at_is_the_latest(box: Outbox) -> None:
    box.add_trigger("msg_1", "p", "m", b"{}", NAMES, fired_at=900.0)
    box.add_trigger("msg_2", "p", "m", b"{}", NAMES, fired_at=990.0)
    box.add_trigger("msg_3", "q", "m", b"{}", NAMES, fired_at=999.0)
    assert box.last_fired_at("p", "m") == 990.0


def test_due_oldest_first_with_limit_and_schedule(box: Outbox, clock: FakeClock) -> None:
    box.add_trigger("msg_new", "p", "m", b"{}", ("a",), fired_at=950.0)
    box.add_trigger("msg_old", "p", "m", b"{}", ("a", "gone"), fired_at=900.0)
    assert [d.trigger_id for d in box.due(("a",))] == ["msg_old", "msg_new"]
    assert [d.trigger_id for d in box.due(("a",), limit=1)] == ["msg_old"]
    assert [d.endpoint for d in box.due(("a", "gone"), limit=5) if d.trigger_id == "msg_old"] == ["a", "gone"]
    box.record_attempt("msg_old", "a", 500, "HTTP 500", next_attempt_at=1100.0)
    assert status(box, "msg_old", "a") == ("pending", 1, 1100.0, 500, "HTTP 500", None)
    assert [d.trigger_id for d in box.due(("a",))] == ["msg_new"]
    assert box.next_attempt_at(("a",)) == 950.0
    assert [d.attempts for d in box.due(("a",), now=1100.0)] == [1, 0]
    assert box.due(("a",), now=899.0) == []


def test_delivered_and_failed_leave_the_queue(box: Outbox, clock: FakeClock) -> None:
    box.add_trigger("msg_1", "p", "m", b"{}", ("a", "b"), fired_at=900.0)
    clock.t = 1234.0
    box.mark_delivered("msg_1", "a", 204)
    box.mark_failed("msg_1", "b", None, "timeout")
    assert status(box, "msg_1", "a") == ("delivered", 1, 900.0, 204, None, 1234.0)
    assert status(box, "msg_1", "b") == ("failed", 1, 900.0, None, "timeout", None)
    assert box.due(NAMES) == []
    assert box.next_attempt_at(NAMES) is None


def test_disable_endpoint_fails_its_pending_deliveries_only(box: Outbox) -> None:
    box.add_trigger("msg_1", "p", "m", b"{}", ("a", "b"), fired_at=900.0)
    box.add_trigger("msg_2", "p", "m", b"{}", ("a", "b"), fired_at=901.0)
    box.mark_delivered("msg_1", "a", 200)
    assert box.disable_endpoint("a", "410") == 1
    assert status(box, "msg_1", "a")[0] == "delivered"
    assert status(box, "msg_2", "a")[:1] + status(box, "msg_2", "a")[4:5] == ("failed", "endpoint disabled (410)")
    assert [(d.trigger_id, d.endpoint) for d in box.due(NAMES)] == [("msg_1", "b"), ("msg_2", "b")]
    # a later trigger's delivery to the disabled endpoint is stored failed, not queued
    box.add_trigger("msg_3", "p", "m", b"{}", ("a", "b"), fired_at=902.0)
    assert status(box, "msg_3", "a")[0] == "failed"
    assert [d.endpoint for d in box.due(NAMES) if d.trigger_id == "msg_3"] == ["b"]


def test_stats(box: Outbox) -> None:
    assert box.stats(NAMES, now=1000.0) == {
        n: {"pending": 0, "oldest_pending_age_seconds": 0.0, "disabled": False} for n in NAMES
    }
    box.add_trigger("msg_1", "p", "m", b"{}", ("a", "b"), fired_at=900.0)
    box.add_trigger("msg_2", "p", "m", b"{}", ("a", "c"), fired_at=960.0)
    box.mark_delivered("msg_1", "b", 200)
    box.disable_endpoint("c", "410")
    assert box.stats(NAMES, now=1000.0) == {
        "a": {"pending": 2, "oldest_pending_age_seconds": 100.0, "disabled": False},
        "b": {"pending": 0, "oldest_pending_age_seconds": 0.0, "disabled": False},
        "c": {"pending": 0, "oldest_pending_age_seconds": 0.0, "disabled": True},
    }
    assert box.stats(("a",))["a"]["oldest_pending_age_seconds"] == 100.0  # now from the clock
