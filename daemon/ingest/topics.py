"""Topic entries of `source.kafka.topics`: a name, or a regular expression when it starts with `^`
(librdkafka's convention, which the confluent client follows natively), standing for every
topic it matches, those created later included (seen at the next metadata refresh)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable


def is_pattern(entry: str) -> bool:
    return entry.startswith("^")


@functools.cache
def _compiled(entry: str) -> re.Pattern[str]:
    return re.compile(entry)


def entry_of(entries: Iterable[str], topic: str) -> str | None:
    """The entry that stands for `topic`: its name, else the first pattern that matches it."""
    entries = tuple(entries)
    if topic in entries:
        return topic
    return next((e for e in entries if is_pattern(e) and _compiled(e).match(topic)), None)


def one_pattern(entries: Iterable[str]) -> str:
    """All entries as one regular expression (kafka-python subscribes to names or one pattern)."""
    return "|".join(f"(?:{e})" if is_pattern(e) else f"^{re.escape(e)}$" for e in entries)


def check(entries: Iterable[str]) -> None:
    """Raises ValueError naming a pattern that does not compile."""
    for e in entries:
        if is_pattern(e):
            try:
                _compiled(e)
            except re.error as exc:
                raise ValueError(f"{e!r} starts with ^, so it is a regular expression, but: {exc}") from None
