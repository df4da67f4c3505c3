"""A bounded, uniform sample of recent real inputs per logged model: the shadow runner's food.

Vitter's Algorithm L keeps a uniform sample of at most `size` of everything seen, and draws how
many items to skip rather than a random number per item, so a batch costs O(size · log(seen /
size)) overall, not O(batch); only the items taken are converted to a Sample. Labels that
arrive later attach to their sampled prediction by request_id.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass
from typing import Any, TypeVar

SNAPSHOT_VERSION = 1


@dataclass(slots=True)
class Sample:
    """One logged inference, as the shadow runner replays it."""

    request_id: str
    features: dict[str, Any]
    prediction: Any = None
    score: float | None = None
    label: Any = None
    version: str | None = None
    variant: str | None = None

    def row(self) -> list[Any]:
        """The JSON form (snapshots, the runner's request); Sample(*row) reads it back."""
        return list(astuple(self))


T = TypeVar("T")


def _same(item: Any) -> Sample:
    return item  # type: ignore[no-any-return]


class Reservoir:
    """A uniform sample of at most `size` items of a stream (Algorithm L), in bounded memory.

    `add_many` takes any items and a `make` that turns the ones sampled into Samples.

    >>> r = Reservoir(size=3, seed=1)
    >>> r.add_many([Sample(str(i), {"x": i}) for i in range(1000)])
    >>> len(r.items), r.seen
    (3, 1000)
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an integer >= 1, got {size!r}")
        self.size = size
        self._rng = random.Random(seed)
        self.items: list[Sample] = []
        self.seen = 0
        self._slots: dict[str, int] = {}  # request_id -> index in items
        self._w = 1.0
        self._next = 0  # stream position of the next item to take, once full

    def add_many(self, samples: Sequence[T], make: Callable[[T], Sample] = _same) -> None:
        start = self.seen
        i = 0
        while i < len(samples) and len(self.items) < self.size:
            self._put(len(self.items), make(samples[i]))
            i += 1
            if len(self.items) == self.size:
                self._w = math.exp(math.log(self._random()) / self.size)
                self._next = start + i + self._skip()
        while len(self.items) == self.size:
            j = self._next - start
            if j >= len(samples):
                break
            self._put(self._rng.randrange(self.size), make(samples[j]))
            self._w *= math.exp(math.log(self._random()) / self.size)
            self._next += 1 + self._skip()
        self.seen += len(samples)

    def attach_label(self, request_id: str, label: Any) -> bool:
        """Give a sampled prediction its label; False when the request is not in the sample."""
        slot = self._slots.get(request_id)
        if slot is None:
            return False
        self.items[slot].label = label
        return True

    def _put(self, slot: int, sample: Sample) -> None:
        if slot < len(self.items):
            self._slots.pop(self.items[slot].request_id, None)
            self.items[slot] = sample
        else:
            self.items.append(sample)
        self._slots[sample.request_id] = slot

    def _skip(self) -> int:
        return int(math.log(self._random()) / math.log(1.0 - self._w))

    def _random(self) -> float:
        return self._rng.random() or 1e-300  # log(0) guard: random() may return exactly 0.0

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state, the random generator's included: a restore continues exactly."""
        state = self._rng.getstate()
        return {
            "version": SNAPSHOT_VERSION,
            "size": self.size,
            "seen": self.seen,
            "w": self._w,
            "next": self._next,
            "rng": [state[0], list(state[1]), state[2]],
            "items": [s.row() for s in self.items],
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"reservoir snapshot version must be {SNAPSHOT_VERSION}, got {state.get('version')!r}")
        if state["size"] != self.size:
            raise ValueError(f"snapshot is of a reservoir of size {state['size']}, this one holds {self.size}")
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        self.seen, self._w, self._next = int(state["seen"]), float(state["w"]), int(state["next"])
        self.items = [Sample(*row) for row in state["items"]]
        self._slots = {s.request_id: i for i, s in enumerate(self.items)}
