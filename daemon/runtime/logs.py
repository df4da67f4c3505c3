"""structlog set-up (once, at start-up) and a rate limiter for hot-path log lines."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


def configure(level: str = "info", fmt: str = "auto") -> None:
    """JSON lines when not on a terminal (or when asked), a console renderer on one.

    Standard-library records (kafka-python's) go through the same renderer, so a JSON log
    pipeline sees one format.
    """
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.getLevelNamesMapping()[level.upper()])
    # kafka-python logs every reconnect attempt; its warnings are enough.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))


class SampledLog:
    """At most one line per `interval_s` per key, carrying how many were suppressed since."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def should_log(self, key: str) -> int | None:
        """None to stay quiet; else the count suppressed since the last line for `key`."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)

    def warning(self, logger: structlog.typing.FilteringBoundLogger, key: str, event: str, **fields: object) -> None:
        """`event` on `logger` at warning level, at most once per interval for `key`, with the count
        suppressed since the last line."""
        suppressed = self.should_log(key)
        if suppressed is not None:
            logger.warning(event, **fields, suppressed_since_last=suppressed)
