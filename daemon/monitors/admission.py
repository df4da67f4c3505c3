"""Which features a key tracks: admitted once common enough, released once gone a long time.

A feature name becomes a label value, a missing-value counter and a drift stream, and a key keeps
at most `limits.max_features` of them. Without a gate, one event carrying 10,000 junk names would
take every slot for good. So, per key (a row of the partition):

- a name is a *candidate* from its first event; it is *admitted* at the event where it has been
  named in at least `feature_admission_events` of the key's events and in at least
  `feature_admission_share` of the key's events since its first (values before that are not
  tracked). A candidate that has not made it by the time the key has had
  `feature_admission_events / feature_admission_share` events since its first starts over. A key
  counts at most 4 × max_features candidates, space-saving style: a new name takes the place of
  the least-counted one, so a burst of junk names cannot keep real ones out;
- an admitted name the key's last `feature_release_events` events did not name is *released*:
  its slot, counters and drift stream go, and a name that comes later can take the slot.

The gate runs once per batch, before traffic and drift, and hands them the batch with the
features each key has not admitted masked out (`present` and `named` false there). Decisions
are per event, so they do not depend on where polls cut the stream.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.config import LimitsConfig
from daemon.ingest.batch import Batch, Feature
from daemon.monitors.arrays import grown

Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

CANDIDATES_PER_FEATURE = 4


class FeatureAdmission:
    """Per key row: admitted names (with the key's event count when each was last named) and candidates."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.share = limits.feature_admission_share
        self.min_events = limits.feature_admission_events
        self.release_events = limits.feature_release_events
        self.max_candidates = CANDIDATES_PER_FEATURE * limits.max_features
        self.events = np.zeros(0, dtype=np.int64)  # per row: events so far
        self.ids: dict[str, int] = {}  # names admitted by some row
        self.admitted = np.zeros((0, 0), dtype=np.bool_)  # row x id
        self.last_seen = np.zeros((0, 0), dtype=np.int64)  # row x id: the row's event count when last named
        # Per row: name -> [count (inherited included), the row's event count before its evidence
        # started, the count inherited or held before that].
        self.candidates: list[dict[str, list[int]]] = []

    def add_rows(self, n: int) -> None:
        self.candidates.extend({} for _ in range(n))
        rows = len(self.candidates)
        if rows > len(self.events):
            cap = max(rows, 2 * len(self.events), 16)
            self.events = grown(self.events, cap)
            self.admitted = _grown2(self.admitted, cap, self.admitted.shape[1], False)
            self.last_seen = _grown2(self.last_seen, cap, self.last_seen.shape[1], 0)

    def _id(self, name: str) -> int:
        i = self.ids.get(name)
        if i is None:
            i = self.ids[name] = len(self.ids)
            if i >= self.admitted.shape[1]:
                width = max(2 * self.admitted.shape[1], 16)
                self.admitted = _grown2(self.admitted, len(self.admitted), width, False)
                self.last_seen = _grown2(self.last_seen, len(self.last_seen), width, 0)
        return i

    def filter(self, rows: Ints, rank: Ints, batch: Batch) -> tuple[Batch, list[tuple[int, str]]]:
        """The batch with each key's unadmitted features masked out, and the (row, name) pairs
        released by it. `rank[i]`: how many of event i's key's events came before it in the batch."""
        before = self.events.copy()
        np.add.at(self.events, rows, 1)
        if not batch.features:
            return batch, self._release(rows)
        at = before[rows] + rank + 1  # each event's count within its key
        features = []
        changed = False
        for f in batch.features:
            named = f.named if f.named is not None else f.present
            fid = self.ids.get(f.name)
            ok = np.zeros(len(rows), dtype=np.bool_)
            if fid is not None:
                ok[named] = self.admitted[rows[named], fid]
            todo = named & ~ok
            if todo.any():
                ok |= self._candidates(f.name, rows, at, todo)
                fid = self.ids.get(f.name)
            if fid is not None:
                seen = named & ok
                np.maximum.at(self.last_seen[:, fid], rows[seen], at[seen])
            if ok[named].all():
                features.append(f)
                continue
            changed = True
            features.append(
                Feature(f.name, f.num, f.codes, f.levels, f.present & ok, None if f.named is None else f.named & ok)
            )
        out = dataclasses.replace(batch, features=features) if changed else batch
        return out, self._release(rows)

    def _candidates(self, name: str, rows: Ints, at: Ints, todo: Bools) -> Bools:
        """Events (of `todo`) whose key admits `name` at or before them."""
        where = np.flatnonzero(todo)
        where = where[np.argsort(rows[where], kind="stable")]  # by key row, in order within each
        r = rows[where]
        starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
        lengths = np.diff(np.r_[starts, len(r)])
        # Per key row (dictionary work only): the candidate's count so far and where its evidence starts.
        held = np.empty(len(starts), dtype=np.int64)
        first = np.empty(len(starts), dtype=np.int64)
        entries = []
        for i, (row, a) in enumerate(zip(r[starts].tolist(), at[where[starts]].tolist(), strict=True)):
            table = self.candidates[row]
            entry = table.get(name)
            start = a - 1
            if entry is not None and start - entry[1] > self._horizon():
                entry[1], entry[2] = start, entry[0]  # too late: its evidence starts over
            if entry is None:
                # Space-saving: a full table gives the least-counted candidate's place to the new
                # name, which inherits its count (for the ranking) but not as evidence: a name
                # seen once can never be admitted, and junk cannot keep real names out.
                inherited = 0
                if len(table) >= self.max_candidates:
                    victim = min(table, key=lambda n: table[n][0])
                    inherited = table.pop(victim)[0]
                entry = table[name] = [inherited, start, inherited]
            entries.append(entry)
            held[i], first[i] = entry[0] - entry[2], entry[1]
        seg = np.repeat(np.arange(len(starts)), lengths)
        rank = np.arange(len(r)) - starts[seg]
        count = held[seg] + rank + 1  # times named since its evidence started
        admit = (count >= self.min_events) & (count >= self.share * (at[where] - first[seg]))
        first_admit = np.minimum.reduceat(np.where(admit, rank, len(r)), starts)
        ok = np.zeros(len(rows), dtype=np.bool_)
        ok[where[rank >= first_admit[seg]]] = True
        admitted = first_admit < lengths
        if admitted.any():
            i = self._id(name)
            self.admitted[r[starts[admitted]], i] = True
        for k in np.flatnonzero(admitted).tolist():
            del self.candidates[int(r[starts[k]])][name]
        for k in np.flatnonzero(~admitted).tolist():
            entries[k][0] += int(lengths[k])
        return ok

    def _horizon(self) -> float:
        """Key events within which a candidate must be admitted, else its evidence starts over."""
        return self.min_events / self.share if self.share > 0 else float("inf")

    def _release(self, rows: Ints) -> list[tuple[int, str]]:
        if not self.release_events or not self.ids:
            return []
        touched = np.unique(rows)
        stale = self.admitted[touched] & (self.events[touched, None] - self.last_seen[touched] > self.release_events)
        if not stale.any():
            return []
        names = list(self.ids)
        out = []
        for r, i in zip(*np.nonzero(stale), strict=True):
            row = int(touched[r])
            self.admitted[row, i] = False
            out.append((row, names[int(i)]))
        return out

    # -- checkpoints --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        n, k = len(self.candidates), len(self.ids)
        return {
            "events": self.events[:n].copy(),
            "names": list(self.ids),
            "admitted": self.admitted[:n, :k].copy(),
            "last_seen": self.last_seen[:n, :k].copy(),
            "candidates": [{name: list(v) for name, v in table.items()} for table in self.candidates],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take a snapshot into this gate, whose rows are added already and empty."""
        n = len(state["candidates"])
        self.events[:n] = state["events"]
        for name in state["names"]:
            self._id(name)
        k = len(state["names"])
        self.admitted[:n, :k] = state["admitted"]
        self.last_seen[:n, :k] = state["last_seen"]
        for row, table in enumerate(state["candidates"]):
            self.candidates[row] = {name: [int(c), int(first), int(held)] for name, (c, first, held) in table.items()}


def _grown2(a: npt.NDArray[Any], rows: int, cols: int, fill: Any) -> npt.NDArray[Any]:
    out = np.full((rows, cols), fill, dtype=a.dtype)
    out[: a.shape[0], : a.shape[1]] = a
    return out
