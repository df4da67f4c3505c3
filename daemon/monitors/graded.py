"""Labels for the canary's accuracy, at looks that do not depend on when the labels arrived.

A label comes on its own topic, some time after its prediction. Counted at its arrival, which
look it lands in would depend on how polls interleave the two topics, and so would accuracy's
p-value: a restored run would differ from an uninterrupted one, and two uninterrupted runs from
each other. Instead a graded prediction counts from the first look at which its model's *clock*
(the newest event time among the model's requests so far) is past the prediction's time, in
whole seconds, plus `wait_s`. Which looks count it then depends on the events alone.

A label that comes after that, or whose own time is more than `wait_s` after its prediction's,
is left out of the canary (`late`; the quality windows still take it). With event-time alignment
(daemon/ingest/align.py: a poll releases labels and events in time order, and the pipeline folds
a poll's labels before its events) a label timed within `wait_s` of its prediction always
arrives in time, so every run counts the same labels at the same looks. Predictions without a
time count at once, as before.

Memory: per arm, one entry per second of prediction time within the wait.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


class PendingGrades:
    """Graded predictions per arm, by the second of their prediction's time, until their model's
    clock passes it by `wait_s`.

    >>> p = PendingGrades(wait_s=10)
    >>> p.add(0, clock=100.0, graded=[(100.4, 105.0, False), (101.0, None, True)])
    0
    >>> p.due(0, clock=110.0), p.due(0, clock=110.5)
    ((0.0, 0.0), (1.0, 1.0))
    >>> p.settle(0, clock=111.5), p.due(0, clock=200.0)
    ((2.0, 1.0), (0.0, 0.0))
    >>> p.add(0, clock=111.5, graded=[(100.0, None, False), (111.0, 130.0, False)])
    2
    """

    def __init__(self, wait_s: float) -> None:
        self.wait_s = float(wait_s)
        self._arms: dict[int, dict[int, list[float]]] = {}  # arm -> second -> [graded, right]

    def add(self, arm: int, clock: float, graded: Iterable[tuple[float, float | None, bool]]) -> int:
        """Hold an arm's graded predictions: (the prediction's time, the label's, wrong or not);
        return how many came too late to count."""
        late = 0
        seconds = self._arms.setdefault(arm, {})
        for t, at, wrong in graded:
            second = math.floor(t)
            if second + self.wait_s < clock or (at is not None and at > t + self.wait_s):
                late += 1
                continue
            entry = seconds.setdefault(second, [0.0, 0.0])
            entry[0] += 1.0
            entry[1] += 0.0 if wrong else 1.0
        return late

    def due(self, arm: int, clock: float) -> tuple[float, float]:
        """(graded, right) among the arm's held predictions that count at `clock`."""
        graded = right = 0.0
        for second, (n, r) in self._arms.get(arm, {}).items():
            if second + self.wait_s < clock:
                graded += n
                right += r
        return graded, right

    def settle(self, arm: int, clock: float) -> tuple[float, float]:
        """Take out and return what counts at `clock`: from then on it is in the arm's moments."""
        out = self.due(arm, clock)
        seconds = self._arms.get(arm)
        if seconds:
            for second in [s for s in seconds if s + self.wait_s < clock]:
                del seconds[second]
        return out

    def drop(self, arm: int) -> None:
        """The arm restarted (a new version): its held predictions were of the old one."""
        self._arms.pop(arm, None)

    def arms(self) -> list[int]:
        return [arm for arm, seconds in self._arms.items() if seconds]

    def snapshot(self) -> list[list[float]]:
        return [[arm, second, n, r] for arm, seconds in self._arms.items() for second, (n, r) in seconds.items()]

    def restore(self, rows: list[Any], arms: int) -> None:
        for row in rows:
            if len(row) != 4 or not 0 <= int(row[0]) < arms or not 0 <= float(row[3]) <= float(row[2]):
                raise ValueError(f"canary snapshot: malformed pending grades {row!r}")
            self._arms.setdefault(int(row[0]), {})[int(row[1])] = [float(row[2]), float(row[3])]
