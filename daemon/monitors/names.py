"""Names per key, capped: classes, error types and features become label values, so a key keeps at
most `cap` of each; later ones fold into OTHER and an overflow counter says so."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

OTHER = "__other__"
# A column freed for a later name (a released feature).
FREE = "\x00free"
# Longer class and feature names fold into OTHER: they become label values.
MAX_LABEL_VALUE_CHARS = 128

Ints = npt.NDArray[np.int64]


class Overflow:
    """Counts values folded into OTHER because a cap was reached, by dimension."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, dimension: str, n: int = 1) -> None:
        self.counts[dimension] = self.counts.get(dimension, 0) + n


class RowNames:
    """Per key row, up to `cap` names in first-seen order, each at a column 0..cap-1; OTHER is `cap`.

    Every name some row took has an id, and `_col[row, id]` holds its column in that row (-1: not
    taken there), so a batch resolves its names with one gather; Python runs only for the pairs
    seen for the first time, and for names folded into OTHER before any row took them.
    """

    def __init__(self, cap: int, dimension: str, overflow: Overflow) -> None:
        self.cap = cap
        self.dimension = dimension
        self.overflow = overflow
        self.names: list[list[str]] = []
        self._ids: dict[str, int] = {}
        self._dtype = np.int16 if cap < np.iinfo(np.int16).max else np.int32
        self._col = np.full((0, 0), -1, dtype=self._dtype)
        # Bumped whenever a row takes a name: what the exposition's templates depend on.
        self.layout = 0

    def add_rows(self, n: int) -> None:
        self.names.extend([] for _ in range(n))
        if len(self.names) > len(self._col):
            self._resize(max(len(self.names), 2 * len(self._col), 16), self._col.shape[1])

    def _resize(self, rows: int, width: int) -> None:
        grown = np.full((rows, width), -1, dtype=self._dtype)
        r, w = self._col.shape
        grown[:r, :w] = self._col
        self._col = grown

    def columns(
        self,
        rows: Ints,
        codes: Ints,
        names: Sequence[str],
        events: Ints | None = None,
        within: Callable[[int], int] | None = None,
    ) -> tuple[Ints, list[tuple[int, int, int]]]:
        """The column of each pair's name (`names[codes[i]]` in row `rows[i]`; code -1: no name, column
        -1), and the pairs taken now as (row, column, index i of their first pair). New pairs are
        taken in the order of `events[i]` (the event each pair belongs to; default: i), then of
        `within(i)` (the name's place in its event), so that a key keeps the first names its own
        events showed, whatever order the pairs come in."""
        out = np.full(len(rows), -1, dtype=np.int64)
        has = codes >= 0
        if not names or not has.any():
            return out, []
        ids = np.array([self._ids.get(name, -1) for name in names], dtype=np.int64)
        ev_ids = np.where(has, ids[np.maximum(codes, 0)], -1)
        known = ev_ids >= 0
        out[known] = self._col[rows[known], ev_ids[known]]
        taken: list[tuple[int, int, int]] = []
        todo = np.flatnonzero(has & (out < 0))
        if len(todo):
            combined = rows[todo] * len(names) + codes[todo]
            when = todo if events is None else events[todo]
            by_event = np.argsort(when, kind="stable")
            uniq, first_sorted = np.unique(combined[by_event], return_index=True)
            first = by_event[first_sorted]
            # In the order of their first event: the cap keeps the first names seen.
            new = np.argsort(when[first], kind="stable").tolist()
            if within is not None:
                new.sort(key=lambda u: (int(when[first[u]]), within(int(todo[first[u]]))))
            for u in new:
                row, code = divmod(int(uniq[u]), len(names))
                col = self._take(row, names[code])
                if col < self.cap:
                    taken.append((row, col, int(todo[first[u]])))
            ids = np.array([self._ids.get(name, -1) for name in names], dtype=np.int64)
            sub_ids = ids[codes[todo]]
            resolved = np.where(sub_ids >= 0, self._col[rows[todo], np.maximum(sub_ids, 0)], -1)
            out[todo] = np.where(resolved >= 0, resolved, self.cap)
        folded = int(np.count_nonzero(out == self.cap))
        if folded:
            self.overflow.add(self.dimension, folded)
        return out, taken

    def _take(self, row: int, name: str) -> int:
        """The column of `name` in `row`, taking it if the row has room; `cap` (OTHER) otherwise."""
        i = self._ids.get(name)
        if i is not None and self._col[row, i] >= 0:
            return int(self._col[row, i])
        row_names = self.names[row]
        free = row_names.index(FREE) if FREE in row_names else -1
        if (free < 0 and len(row_names) >= self.cap) or len(name) > MAX_LABEL_VALUE_CHARS or name in (OTHER, FREE):
            if i is not None:
                self._col[row, i] = self.cap  # remembered: the name has an id already
            return self.cap
        if i is None:
            i = self._ids[name] = len(self._ids)
            if i >= self._col.shape[1]:
                self._resize(len(self._col), max(2 * self._col.shape[1], 8))
        if free >= 0:
            col = free
            row_names[col] = name
        else:
            col = len(row_names)
            row_names.append(name)
        self._col[row, i] = col
        self.layout += 1
        return col

    def release(self, row: int, name: str) -> int | None:
        """Free `name`'s column in `row` for a later name; the column, or None if it had none."""
        i = self._ids.get(name)
        if i is None or not 0 <= self._col[row, i] < self.cap:
            return None
        col = int(self._col[row, i])
        self._col[row, i] = -1
        # Names folded into OTHER for want of room may take the free column now.
        self._col[row][self._col[row] == self.cap] = -1
        self.names[row][col] = FREE
        self.layout += 1
        return col

    def taken(self, row: int) -> int:
        """Names the row holds (freed columns not counted)."""
        return sum(1 for n in self.names[row] if n != FREE)

    def restore_row(self, row: int, names: Sequence[str]) -> list[int]:
        """Give `row` a snapshot's names, in order (FREE: a freed column); the column each got (`cap`
        for one past the cap)."""
        out = []
        for name in names:
            if name == FREE:
                self.names[row].append(FREE)
                out.append(len(self.names[row]) - 1)
            else:
                out.append(self._take(row, name))
        return out
