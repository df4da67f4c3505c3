"""What a partition's records came to, beyond its keys: records read, invalid records by reason,
implausible values by field, label outcomes. Part of the partition's state, so these counts are
checkpointed with it, survive restarts and move with the partition to another replica; the
exposition carries the partition as a label, so a moved count continues its own series there
instead of jumping another's."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from daemon.ingest.decode import REASONS
from daemon.ingest.plausible import FIELDS
from daemon.monitors.labels import COUNTS

# Label outcomes: the join's, and labels carried inside inference events.
LABEL_OUTCOMES = (*COUNTS, "inline")


class Totals:
    __slots__ = ("invalid", "labels", "out_of_range", "records")

    def __init__(self) -> None:
        self.records = 0  # of every topic, valid or not
        self.invalid: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.out_of_range: dict[str, int] = dict.fromkeys(FIELDS, 0)
        # The label join counts into this dict (LabelJoin(counts=...)); "inline" here.
        self.labels: dict[str, int] = dict.fromkeys(LABEL_OUTCOMES, 0)

    @property
    def invalid_records(self) -> int:
        return sum(self.invalid.values())

    def copy(self) -> Totals:
        return Totals.of([self])

    @staticmethod
    def of(parts: Iterable[Totals]) -> Totals:
        """The sum of `parts`."""
        out = Totals()
        for t in parts:
            out.records += t.records
            for mine, theirs in ((out.invalid, t.invalid), (out.out_of_range, t.out_of_range), (out.labels, t.labels)):
                for k, n in theirs.items():
                    mine[k] = mine.get(k, 0) + n
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "invalid": dict(self.invalid),
            "out_of_range": dict(self.out_of_range),
            "labels": dict(self.labels),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.records = int(state["records"])
        for mine, name in ((self.invalid, "invalid"), (self.out_of_range, "out_of_range"), (self.labels, "labels")):
            mine.update({str(k): int(n) for k, n in state[name].items()})
