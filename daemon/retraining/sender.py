"""Delivers the outbox's triggers as Standard Webhooks, retrying with backoff until delivered or given up.

Every attempt of a delivery sends the same webhook-id (the receiver's idempotency key) and body,
with its own webhook-timestamp and signature. Only a 2xx counts as delivered. 410 Gone disables the
endpoint for good (it stays disabled across restarts: the outbox remembers). 429, 502, 503 and 504
slow down: Retry-After when given, else twice the next backoff step. Anything else (another status,
a timeout, a connection error) retries after full-jitter exponential backoff. A delivery still
failing give_up_after seconds after its trigger fired is failed. Redirects are not followed.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime

import structlog

from daemon.config import WebhookEndpoint
from daemon.retraining import signing
from daemon.retraining.outbox import Delivery, Outbox, disabled_error
from daemon.runtime import httpclient
from daemon.runtime.httpclient import Post

log = structlog.get_logger(__name__)

# (url, body, headers, timeout seconds) -> (status, response headers); raises OSError (TimeoutError
# for a timeout) when no response came.

RESULTS = ("2xx", "4xx", "5xx", "timeout", "error")
SLOW_DOWN = frozenset({429, 502, 503, 504})
GONE = 410
# No retry comes sooner than this fraction of initial_backoff (full jitter can draw ~0).
MIN_BACKOFF_FRACTION = 0.1
# Exponents past this are capped anyway; it keeps 2**n a float.
MAX_EXPONENT = 60


def result_of(status: int) -> str:
    """The `attempts` counter's result for a response status: 2xx, 4xx, 5xx, else (1xx, 3xx) error."""
    return f"{status // 100}xx" if status // 100 in (2, 4, 5) else "error"


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait by a Retry-After header (delay-seconds or an HTTP date); None if absent or unreadable."""
    value = next((v.strip() for k, v in headers.items() if k.lower() == "retry-after"), None)
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        return parsedate_to_datetime(value).timestamp() - now
    except (TypeError, ValueError):
        return None


class Sender:
    """Sends due deliveries: `run_once()` for one pass, or a background thread (`start`, `wake`, `stop`).

    Counters, every key present from the start: `delivered[endpoint]`, `failed[endpoint]` (given up,
    or failed because the endpoint answered 410) and `attempts[endpoint, result]`, result in RESULTS.
    """

    def __init__(
        self,
        outbox: Outbox,
        endpoints: Sequence[WebhookEndpoint],
        *,
        initial_backoff: float,
        max_backoff: float,
        give_up_after: float,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        post: Post | None = None,
        poll_interval: float = 1.0,
        batch: int = 100,
    ) -> None:
        self._outbox = outbox
        self._endpoints = {e.name: e for e in endpoints}
        self._names = tuple(self._endpoints)
        self._initial = initial_backoff
        self._max = max_backoff
        self._give_up_after = give_up_after
        self._clock = clock
        self._rng = rng or random.Random()
        self._post: Post = post or httpclient.post
        self._poll_interval = poll_interval
        self._batch = batch
        self.delivered = dict.fromkeys(self._names, 0)
        self.failed = dict.fromkeys(self._names, 0)
        self.attempts = {(n, r): 0 for n in self._names for r in RESULTS}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Attempt every due delivery once (at most `batch`); returns the number of attempts made."""
        if not self._names:
            return 0
        made = 0
        disabled: set[str] = set()
        for delivery in self._outbox.due(self._names, limit=self._batch, now=self._clock()):
            if self._stop.is_set():
                break
            if delivery.endpoint in disabled:
                continue
            if self._attempt(delivery):
                disabled.add(delivery.endpoint)
            made += 1
        return made

    def _attempt(self, d: Delivery) -> bool:
        """One attempt; True if it disabled the endpoint."""
        endpoint = self._endpoints[d.endpoint]
        now = self._clock()
        n = d.attempts + 1
        request_headers = signing.headers(endpoint.secret.get_secret_value(), d.trigger_id, int(now), d.body)
        try:
            status, response_headers = self._post(endpoint.url, d.body, request_headers, endpoint.timeout_seconds)
        except TimeoutError:
            self.attempts[d.endpoint, "timeout"] += 1
            self._retry(d, n, now, None, f"timeout after {endpoint.timeout_seconds:g} s", self._backoff(n))
            return False
        except OSError as exc:
            self.attempts[d.endpoint, "error"] += 1
            self._retry(d, n, now, None, f"{type(exc).__name__}: {exc}"[:500], self._backoff(n))
            return False
        self.attempts[d.endpoint, result_of(status)] += 1
        if 200 <= status < 300:
            self._outbox.mark_delivered(d.trigger_id, d.endpoint, status)
            self.delivered[d.endpoint] += 1
            log.info("retraining_delivered", endpoint=d.endpoint, trigger_id=d.trigger_id, status=status, attempt=n)
        elif status == GONE:
            self._outbox.mark_failed(d.trigger_id, d.endpoint, status, disabled_error(str(GONE)))
            others = self._outbox.disable_endpoint(d.endpoint, str(GONE))
            self.failed[d.endpoint] += 1 + others
            log.error(
                "retraining_endpoint_disabled",
                endpoint=d.endpoint,
                trigger_id=d.trigger_id,
                status=status,
                failed_deliveries=1 + others,
                reason="the endpoint answered 410 Gone; it gets no more deliveries (the outbox remembers)",
            )
            return True
        elif status in SLOW_DOWN:
            wait = retry_after(response_headers, now)
            delay = self._slow_down(n) if wait is None else min(self._max, max(self._floor, wait))
            self._retry(d, n, now, status, f"HTTP {status}", delay)
        else:
            self._retry(d, n, now, status, f"HTTP {status}", self._backoff(n))
        return False

    @property
    def _floor(self) -> float:
        return MIN_BACKOFF_FRACTION * self._initial

    def _backoff(self, n: int) -> float:
        """Full jitter: uniform(0, min(max, initial * 2**(n-1))), at least the floor."""
        cap = min(self._max, self._initial * 2.0 ** min(n - 1, MAX_EXPONENT))
        return max(self._floor, self._rng.uniform(0.0, cap))

    def _slow_down(self, n: int) -> float:
        """Twice the next backoff step, without jitter, capped."""
        return min(self._max, self._initial * 2.0 ** min(n, MAX_EXPONENT))

    def _retry(self, d: Delivery, n: int, now: float, status: int | None, error: str, delay: float) -> None:
        if now - d.created_at >= self._give_up_after:
            self._outbox.mark_failed(d.trigger_id, d.endpoint, status, error)
            self.failed[d.endpoint] += 1
            log.error(
                "retraining_delivery_failed",
                endpoint=d.endpoint,
                trigger_id=d.trigger_id,
                attempts=n,
                error=error,
                reason=f"still failing {self._give_up_after:g} s after the trigger fired",
            )
            return
        self._outbox.record_attempt(d.trigger_id, d.endpoint, status, error, now + delay)
        log.warning(
            "retraining_delivery_retry",
            endpoint=d.endpoint,
            trigger_id=d.trigger_id,
            attempt=n,
            error=error,
            retry_in_seconds=round(delay, 3),
        )

    def start(self) -> None:
        """Start the background thread (once)."""
        if self._thread is not None:
            raise RuntimeError("sender already started")
        for name, stats in self._outbox.stats(self._names).items():
            if stats["disabled"]:
                log.error("retraining_endpoint_disabled", endpoint=name, reason="it answered 410 Gone before a restart")
        self._thread = threading.Thread(target=self._loop, name="retraining-sender", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Send now rather than at the next poll (a trigger was just added)."""
        self._wake.set()

    def stop(self, timeout: float) -> bool:
        """Stop the thread after its current attempt; True if it ended within `timeout`."""
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.run_once()
                wait = self._until_next()
            except Exception:
                log.exception("retraining_sender_failed")
                wait = self._poll_interval
            self._wake.wait(wait)

    def _until_next(self) -> float:
        at = self._outbox.next_attempt_at(self._names)
        if at is None:
            return self._poll_interval
        return min(self._poll_interval, max(0.0, at - self._clock()))
