"""Shutdown as in uvicorn: the first signal sets a flag, a second SIGINT forces the exit."""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
import threading
import time
from types import FrameType

import structlog

log = structlog.get_logger(__name__)


# Allocations between young-generation collections. CPython's 700 makes a batch of 2,000 events
# (a struct and a dict or two each, alive until the batch is folded in) trigger ~10 collections
# that walk the whole batch; at 50,000 a batch triggers at most one (bench/replay_throughput.py:
# +11% events/s). Memory is still freed by reference counting as it always is.
YOUNG_COLLECTION_ALLOCATIONS = 50_000


def tune_gc() -> None:
    """Once, after start-up: the objects alive now (modules, config) leave the collector's walks,
    and young collections come every YOUNG_COLLECTION_ALLOCATIONS allocations."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_ALLOCATIONS, older, oldest)


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a child process (the shadow runner, the Kafka consumer): be killed when the parent dies,
    whatever killed it (SIGKILL included)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the child ends by itself (its pipes close)
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(1)


class Shutdown:
    """Set by SIGTERM/SIGINT; the main loop checks it on every poll."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._signals = 0

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str = "requested") -> None:
        if not self._event.is_set():
            log.info("shutdown_requested", reason=reason)
        self._event.set()

    def wait(self, timeout_s: float) -> bool:
        return self._event.wait(timeout_s)

    def install(self) -> None:
        """Install handlers; only from the main thread."""
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1 and signum == signal.SIGINT:
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            os._exit(130)
        self.request(signal.Signals(signum).name)


class Watchdog:
    """/healthz is true while the main loop has beaten within `timeout_s`."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._last = time.monotonic()
        self.ready = False

    def beat(self) -> None:
        self._last = time.monotonic()

    @property
    def seconds_since_beat(self) -> float:
        return time.monotonic() - self._last

    @property
    def healthy(self) -> bool:
        return self.seconds_since_beat < self.timeout_s


def arm_deadline(shutdown: Shutdown, deadline_s: float, done: threading.Event) -> threading.Thread:
    """From the moment shutdown is requested, allow `deadline_s` for `done`; then exit hard.

    Better a restart than a hang: a stuck commit or close must not outlive the grace period.
    """

    def _guard() -> None:
        while not shutdown.wait(1.0):
            if done.is_set():
                return
        if not done.wait(deadline_s):
            log.error("shutdown_deadline_exceeded", deadline_seconds=deadline_s)
            os._exit(1)

    t = threading.Thread(target=_guard, name="shutdown-deadline", daemon=True)
    t.start()
    return t
