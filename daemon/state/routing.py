"""Route events to per-(model, version, variant) state, with a cap on the number of keys."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from daemon.monitors.traffic import OTHER, Overflow

Key = tuple[str, str, str]
OTHER_KEY: Key = (OTHER, OTHER, OTHER)
S = TypeVar("S")


class KeyTable(Generic[S]):
    """At most `max_keys` keys; events of any later key fold into OTHER_KEY (counted)."""

    def __init__(self, max_keys: int, factory: Callable[[Key], S], overflow: Overflow) -> None:
        self.max_keys = max_keys
        self._factory = factory
        self._overflow = overflow
        self._states: dict[Key, S] = {}

    def route(self, key: Key, n_events: int) -> tuple[Key, S]:
        """The key that `n_events` events of `key` are accounted under, and its state."""
        state = self._states.get(key)
        if state is not None:
            return key, state
        if len(self._states) < self.max_keys and OTHER not in key:
            state = self._states[key] = self._factory(key)
            return key, state
        self._overflow.add("key", n_events)
        state = self._states.get(OTHER_KEY)
        if state is None:
            # The overflow key may push the table one past max_keys; it is the only one that can.
            state = self._states[OTHER_KEY] = self._factory(OTHER_KEY)
        return OTHER_KEY, state

    def get(self, key: Key) -> S | None:
        return self._states.get(key)

    def adopt(self, key: Key) -> S:
        """A fresh state for `key`, outside the cap (a restore brings back keys the table had)."""
        state = self._states[key] = self._factory(key)
        return state

    def remove(self, key: Key) -> None:
        self._states.pop(key, None)

    def items(self) -> Iterator[tuple[Key, S]]:
        return iter(list(self._states.items()))

    def __len__(self) -> int:
        return len(self._states)
