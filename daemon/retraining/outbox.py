"""The durable outbox (SQLite): fired triggers and their deliveries, one per endpoint, survive restarts.

Every write is a transaction committed with synchronous=FULL, so a trigger is on disk before
POST /v1/alertmanager answers. One connection serves all threads, guarded by a lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

SCHEMA_VERSION = 1

_SCHEMA = (
    """CREATE TABLE triggers (
        id TEXT PRIMARY KEY,
        policy TEXT NOT NULL,
        model TEXT NOT NULL,
        fired_at REAL NOT NULL,
        body BLOB NOT NULL
    )""",
    "CREATE INDEX triggers_policy_model ON triggers (policy, model, fired_at)",
    """CREATE TABLE deliveries (
        trigger_id TEXT NOT NULL REFERENCES triggers (id),
        endpoint TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        created_at REAL NOT NULL,
        last_status INTEGER,
        last_error TEXT,
        delivered_at REAL,
        PRIMARY KEY (trigger_id, endpoint)
    )""",
    "CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at)",
    """CREATE TABLE disabled_endpoints (
        name TEXT PRIMARY KEY,
        disabled_at REAL NOT NULL,
        reason TEXT NOT NULL
    )""",
)


class OutboxError(Exception):
    """The outbox file cannot be used by this version of the daemon."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A pending delivery of one trigger to one endpoint, with the body every attempt sends."""

    trigger_id: str
    endpoint: str
    attempts: int
    created_at: float
    body: bytes


class EndpointStats(TypedDict):
    pending: int
    oldest_pending_age_seconds: float
    disabled: bool


def disabled_error(reason: str) -> str:
    """The last_error of a delivery failed because its endpoint was disabled."""
    return f"endpoint disabled ({reason})"


class Outbox:
    """Triggers, deliveries and disabled endpoints in one SQLite file (WAL, synchronous=FULL)."""

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        # isolation_level=None: no implicit transactions; _tx() opens each one explicitly.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        with self._tx():
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise OutboxError(
                    f"outbox {self.path} has schema version {version}, newer than this daemon's "
                    f"{SCHEMA_VERSION}: run a newer inferwatch, or point retraining.outbox_file elsewhere"
                )
            if version == 0:
                for statement in _SCHEMA:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def has_trigger(self, trigger_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM triggers WHERE id = ?", (trigger_id,)).fetchone()
        return row is not None

    def last_fired_at(self, policy: str, model: str) -> float | None:
        """When `policy` last fired for `model`; None if never."""
        with self._lock:
            (fired_at,) = self._db.execute(
                "SELECT MAX(fired_at) FROM triggers WHERE policy = ? AND model = ?", (policy, model)
            ).fetchone()
        return None if fired_at is None else float(fired_at)

    def add_trigger(
        self, trigger_id: str, policy: str, model: str, body: bytes, endpoints: Sequence[str], fired_at: float
    ) -> bool:
        """Store a trigger and a delivery per endpoint, atomically; False (and no change) if the id is known.

        A delivery to a disabled endpoint is stored already failed.
        """
        with self._lock, self._tx():
            new = self._db.execute(
                "INSERT INTO triggers (id, policy, model, fired_at, body) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                (trigger_id, policy, model, fired_at, body),
            ).rowcount
            if not new:
                return False
            disabled = dict(self._db.execute("SELECT name, reason FROM disabled_endpoints").fetchall())
            self._db.executemany(
                "INSERT INTO deliveries (trigger_id, endpoint, status, next_attempt_at, created_at, last_error) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        trigger_id,
                        endpoint,
                        "failed" if endpoint in disabled else "pending",
                        fired_at,
                        fired_at,
                        disabled_error(disabled[endpoint]) if endpoint in disabled else None,
                    )
                    for endpoint in dict.fromkeys(endpoints)
                ],
            )
            return True

    def due(self, endpoints: Sequence[str], limit: int = 100, now: float | None = None) -> list[Delivery]:
        """Pending deliveries to these (enabled) endpoints whose next attempt is due, oldest first."""
        now = self._clock() if now is None else now
        marks = ", ".join("?" * len(endpoints))
        with self._lock:
            rows = self._db.execute(
                "SELECT d.trigger_id, d.endpoint, d.attempts, d.created_at, t.body "
                "FROM deliveries d JOIN triggers t ON t.id = d.trigger_id "
                f"WHERE d.status = 'pending' AND d.next_attempt_at <= ? AND d.endpoint IN ({marks}) "
                "AND d.endpoint NOT IN (SELECT name FROM disabled_endpoints) "
                "ORDER BY d.created_at, d.trigger_id, d.endpoint LIMIT ?",
                (now, *endpoints, limit),
            ).fetchall()
        return [Delivery(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]

    def next_attempt_at(self, endpoints: Sequence[str]) -> float | None:
        """The earliest next_attempt_at of the pending deliveries to these endpoints; None if none."""
        marks = ", ".join("?" * len(endpoints))
        with self._lock:
            (at,) = self._db.execute(
                "SELECT MIN(next_attempt_at) FROM deliveries "
                f"WHERE status = 'pending' AND endpoint IN ({marks}) "
                "AND endpoint NOT IN (SELECT name FROM disabled_endpoints)",
                tuple(endpoints),
            ).fetchone()
        return None if at is None else float(at)

    def record_attempt(
        self, trigger_id: str, endpoint: str, status: int | None, error: str, next_attempt_at: float
    ) -> None:
        """A failed attempt: the delivery stays pending until `next_attempt_at`."""
        self._finish(trigger_id, endpoint, "pending", status, error, next_attempt_at=next_attempt_at)

    def mark_delivered(self, trigger_id: str, endpoint: str, status: int) -> None:
        self._finish(trigger_id, endpoint, "delivered", status, None, delivered_at=self._clock())

    def mark_failed(self, trigger_id: str, endpoint: str, status: int | None, error: str) -> None:
        """The last attempt failed and there will be no other."""
        self._finish(trigger_id, endpoint, "failed", status, error)

    def _finish(
        self,
        trigger_id: str,
        endpoint: str,
        outcome: str,
        status: int | None,
        error: str | None,
        *,
        next_attempt_at: float | None = None,
        delivered_at: float | None = None,
    ) -> None:
        with self._lock, self._tx():
            self._db.execute(
                "UPDATE deliveries SET status = ?, attempts = attempts + 1, last_status = ?, last_error = ?, "
                "next_attempt_at = COALESCE(?, next_attempt_at), delivered_at = ? "
                "WHERE trigger_id = ? AND endpoint = ?",
                (outcome, status, error, next_attempt_at, delivered_at, trigger_id, endpoint),
            )

    def disable_endpoint(self, name: str, reason: str) -> int:
        """Disable `name` for good and fail its pending deliveries; returns how many were failed."""
        with self._lock, self._tx():
            self._db.execute(
                "INSERT INTO disabled_endpoints (name, disabled_at, reason) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, self._clock(), reason),
            )
            return self._db.execute(
                "UPDATE deliveries SET status = 'failed', last_error = ? WHERE endpoint = ? AND status = 'pending'",
                (disabled_error(reason), name),
            ).rowcount

    def stats(self, endpoints: Sequence[str], now: float | None = None) -> dict[str, EndpointStats]:
        """Per endpoint name given: pending deliveries, the age of the oldest (0.0 if none), disabled or not."""
        now = self._clock() if now is None else now
        with self._lock:
            pending = {
                name: (n, oldest)
                for name, n, oldest in self._db.execute(
                    "SELECT endpoint, COUNT(*), MIN(created_at) FROM deliveries "
                    "WHERE status = 'pending' GROUP BY endpoint"
                )
            }
            disabled = {name for (name,) in self._db.execute("SELECT name FROM disabled_endpoints")}
        out: dict[str, EndpointStats] = {}
        for name in endpoints:
            n, oldest = pending.get(name, (0, None))
            out[name] = {
                "pending": n,
                "oldest_pending_age_seconds": 0.0 if oldest is None else max(0.0, now - oldest),
                "disabled": name in disabled,
            }
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()
