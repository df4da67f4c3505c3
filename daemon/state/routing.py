"""Which partition's state holds each key: a model lives where this replica first saw it.

Producers key by model, so a model's records come from one partition and its keys, canary,
reservoir and label-join entries are that partition's state. A model whose records arrive on
several partitions (the producer keys by request id, say) still has one home in this replica: its
events from every partition update the state of the partition it was first seen on, so its
figures and verdicts are whole here. Across replicas each one that reads such a model has a state
of its own for it (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from daemon.ingest.batch import Key
from daemon.monitors.names import OTHER, Overflow

if TYPE_CHECKING:
    from daemon.state.partition import PartitionState

OTHER_KEY: Key = (OTHER, OTHER, OTHER)


class Router:
    """Key -> (partition state, row), with at most `max_keys` keys in all; past the cap, events
    fold into the overflow key of the partition they arrived on (counted)."""

    def __init__(self, max_keys: int, overflow: Overflow) -> None:
        self.max_keys = max_keys
        self._overflow = overflow
        self._keys: dict[Key, tuple[PartitionState, int]] = {}
        self._homes: dict[str, PartitionState] = {}
        self._count = 0  # keys other than the overflow ones

    def get(self, key: Key) -> tuple[PartitionState, int] | None:
        """Where `key`'s events go, when it has a place already (the fast path of a batch)."""
        return self._keys.get(key)

    def route(self, key: Key, arrival: PartitionState, n_events: int) -> tuple[PartitionState, int, bool]:
        """The state and row that `n_events` events of `key` that arrived on `arrival` update, and
        whether that is an overflow key."""
        hit = self._keys.get(key)
        if hit is not None:
            return hit[0], hit[1], False
        if self._count < self.max_keys and OTHER not in key:
            home = self._homes.setdefault(key[0], arrival)
            row = home.add_keys([key])[0]
            self._keys[key] = (home, row)
            self._count += 1
            return home, row, False
        self._overflow.add("key", n_events)
        return arrival, arrival.overflow_row(), True

    def adopt(self, state: PartitionState) -> None:
        """A restored partition's keys and models; those this replica already routes elsewhere stay
        where they are (the exposition sums their counters)."""
        for row, key in enumerate(state.keys):
            if key == OTHER_KEY or key in self._keys:
                continue
            self._keys[key] = (state, row)
            self._homes.setdefault(key[0], state)
            self._count += 1
        for model in state.models():
            self._homes.setdefault(model, state)

    def drop(self, state: PartitionState, others: list[PartitionState]) -> None:
        """Forget a partition's keys and models; a key another partition also holds routes there."""
        for key in [k for k, (s, _) in self._keys.items() if s is state]:
            del self._keys[key]
            self._count -= 1
            for other in others:
                row = other.row_of(key)
                if row is not None:
                    self._keys[key] = (other, row)
                    self._count += 1
                    break
        for model in [m for m, s in self._homes.items() if s is state]:
            del self._homes[model]

    def primary(self, key: Key) -> tuple[PartitionState, int] | None:
        """Where `key`'s events go now: its series, of the partitions that hold it, to expose."""
        return self._keys.get(key)

    def home(self, model: str) -> PartitionState | None:
        return self._homes.get(model)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._keys)

    def __len__(self) -> int:
        return self._count
