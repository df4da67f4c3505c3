"""The scan kernel: many scan streams' state as rows of arrays, and their looks tested together.

A bank holds the streams of one kind (numeric or categorical) and one look length, one *slot*
(a row of every array) each. `scan()` takes whole looks of many slots at once and tests every
window of every look with a fixed number of numpy calls, whatever the number of slots: a
partition of 1,000 keys whose streams each fill a look now and then costs one set of calls per
batch, not one per stream. `detectors/scan.py` says what the tests are; this module is how they
run.

Per slot:

- a ring of the last HISTORY looks' sums: the tested ones (normal scores, shape or level counts)
  as integers, normal scores in fixed point (Z_UNIT), so the window sums kept by adding each new
  look and taking off the one leaving are exact, whatever order the looks came in, and follow
  from the ring alone (a restore recomputes them);
- the reference as counts per fine cell, the current epoch's counts and the finished epochs
  waiting to join (EPOCH_LOOKS looks each, LAG_EPOCHS of them);
- each look's first input index and time (a window's start is the change point).

A round takes, per slot, the looks up to its next epoch end while its reference may grow (it may
grow there, and the looks after it are then read against the grown one; a full or pinned one
counts no epochs), so a call runs one round, or a few when a slot has many looks.
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from scipy import special

from detectors.base import check_int

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Values per look: the scan reads the stream this often.
LOOK = 50
# Window lengths, in looks.
WINDOW_LOOKS = (1, 2, 4, 8, 16, 32, 64, 128)
WINDOWS = np.array(WINDOW_LOOKS, dtype=np.int64)
HISTORY = WINDOW_LOOKS[-1]
EPOCH_LOOKS = 32
LAG_EPOCHS = HISTORY // EPOCH_LOOKS  # epochs that must pass before one joins the reference
MAX_REFERENCE = 50_000
# An epoch whose tests reached this share of a threshold (or one that followed it did, before it
# joined) never joins the reference.
WARN = 0.6
# Cells of a χ² test expected to hold fewer values than this join the shared "rare" cell.
MIN_EXPECTED = 5.0
# Numeric: fine bins of the reference (its CDF is known at their edges) and shape bins.
FINE_BINS = 256
SHAPE_BINS = 8
# Categorical: levels of the reference with their own cell, and the values each needs.
MAX_CELLS = 31
MIN_LEVEL_COUNT = 5
U_EDGE = 1e-12
# Sums of normal scores are kept in units of 1/Z_UNIT: integers, exact under any order of
# additions (a look's Σz is rounded once, to 1.5e-5: nothing a test can see).
Z_UNIT = float(1 << 16)


@functools.lru_cache(maxsize=8192)
def threshold(df: int, window: int, look: int, rate: float) -> float:
    """x with P(χ²_df > x) · min(1/look, x/window) = rate (per value)."""
    x = float(special.chdtri(df, min(rate * look, 0.5)))
    if x / window >= 1 / look:
        return x
    for _ in range(100):
        nxt = float(special.chdtri(df, min(rate * window / x, 0.5)))
        if abs(nxt - x) < 1e-9:
            break
        x = nxt
    return x


def deviance(counts: npt.NDArray[Any], expected: FloatArray) -> FloatArray:
    """The G statistic 2 Σ O ln(O / E) over the last axis. Its far tail follows χ² much better than
    Pearson's (O - E)² / E, which overstates a thin cell's excess."""
    out: FloatArray = 2.0 * special.xlogy(counts, counts / expected).sum(axis=-1)  # 0 ln 0 = 0
    return out


def _splitmix(n: int) -> FloatArray:
    """n uniforms in (0, 1) from the positions 0..n-1 (splitmix64): the same on every machine."""
    z = np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


# Where each value sits within its fine bin: the value at its position (since the reference) in a
# fixed table, so the same values give the same answer on any replay, however polls cut them.
JITTER = _splitmix(1 << 14)


def _complex(real: npt.NDArray[Any], imag: npt.NDArray[Any]) -> npt.NDArray[np.complex128]:
    """real + i·imag, built by parts (1j * inf would make a NaN real part)."""
    out = np.empty(np.broadcast_shapes(real.shape, imag.shape), dtype=np.complex128)
    out.real, out.imag = real, imag
    return out


class ScanBank:
    """The slots of one kind of scan. Subclasses give the tests, the per-look sums and the statistics."""

    tests: ClassVar[tuple[str, ...]]
    z_dims: ClassVar[int]  # tested sums of normal scores per look (fixed point)
    count_dims: ClassVar[int]  # tested counts per look (shape bins, level cells)
    cells: ClassVar[int]  # reference cells, at most

    # The arrays of `layout`, one row per slot.
    looks: IntArray
    seen: IntArray
    ring_z: npt.NDArray[np.signedinteger[Any]]
    ring_c: npt.NDArray[np.integer[Any]]
    ring_index: IntArray
    ring_time: FloatArray
    ref_cells: npt.NDArray[np.signedinteger[Any]]
    epoch: npt.NDArray[np.integer[Any]]
    epochs: npt.NDArray[np.integer[Any]]
    n_epochs: IntArray
    warned: npt.NDArray[np.bool_]
    epoch_warned: npt.NDArray[np.bool_]
    evidence: FloatArray
    max_reference: IntArray
    rate: FloatArray
    n_cells: IntArray
    n_ref: FloatArray
    sums: IntArray
    limits: FloatArray

    def __init__(self, look: int) -> None:
        check_int("look", look, 1)
        self.look = look
        self.n_values = (WINDOWS * look).astype(np.float64)  # values per window
        self.slots = 0  # slots handed out (free ones included)
        self.free: list[int] = []
        self.findings: list[dict[str, Any] | None] = []
        # The before/after distribution of each slot's last detection (the replay report's), until read.
        self.distributions: dict[int, dict[str, Any]] = {}
        wide = look > 255
        self.layout: dict[str, tuple[tuple[int, ...], Any, Any]] = {
            # The state a checkpoint keeps, then (after "|") what follows from it or from prepare().
            "looks": ((), np.int64, 0),
            "seen": ((), np.int64, 0),
            "ring_z": ((HISTORY, self.z_dims), np.int64 if wide else np.int32, 0),
            "ring_c": ((HISTORY, self.count_dims), np.int32 if wide else np.uint8, 0),
            "ring_index": ((HISTORY,), np.int64, -1),
            "ring_time": ((HISTORY,), np.float64, math.nan),
            "ref_cells": ((self.cells,), np.int64 if wide else np.int32, 0),
            "epoch": ((self.cells,), np.int32 if EPOCH_LOOKS * look >= 1 << 16 else np.uint16, 0),
            "epochs": ((LAG_EPOCHS, self.cells), np.int32 if EPOCH_LOOKS * look >= 1 << 16 else np.uint16, 0),
            "n_epochs": ((), np.int64, 0),
            "warned": ((LAG_EPOCHS,), np.bool_, False),
            "epoch_warned": ((), np.bool_, False),
            "evidence": ((), np.float64, math.nan),
            "max_reference": ((), np.int64, 0),
            **self._kind_state(),
            "|": ((), np.bool_, False),
            "rate": ((), np.float64, 0.0),
            "n_cells": ((), np.int64, 0),
            "n_ref": ((), np.float64, 0.0),
            "sums": ((len(WINDOWS), self.z_dims + self.count_dims), np.int64, 0),
            "limits": ((len(WINDOWS), len(self.tests)), np.float64, math.inf),
            **self._kind_derived(),
        }
        self.kept = list(self.layout)[: list(self.layout).index("|")]
        del self.layout["|"]
        for name, (tail, dtype, _) in self.layout.items():
            setattr(self, name, np.zeros((0, *tail), dtype=dtype))

    def _kind_state(self) -> dict[str, tuple[tuple[int, ...], Any, Any]]:
        return {}

    def _kind_derived(self) -> dict[str, tuple[tuple[int, ...], Any, Any]]:
        return {}

    # -- slots -----------------------------------------------------------------------------------

    def add(self) -> int:
        """A new slot (the lowest freed one if any: which one does not depend on the order they
        were freed, so a restored bank hands out what the uninterrupted one would), empty."""
        if self.free:
            slot = min(self.free)
            self.free.remove(slot)
        else:
            slot = self.slots
            self.slots += 1
            self.findings.append(None)
            if slot >= len(self.looks):
                cap = max(2 * len(self.looks), 16)
                for name, (tail, dtype, _) in self.layout.items():
                    old = getattr(self, name)
                    new = np.zeros((cap, *tail), dtype=dtype)
                    new[: len(old)] = old
                    setattr(self, name, new)
        self._clear(slot)
        self.findings[slot] = None
        return slot

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def reserve(self, n: int, used: IntArray) -> None:
        """Slots 0..n-1 in an empty bank, those not `used` free (before a restore of them all)."""
        if self.slots:
            raise ValueError("a bank reserves its slots once, empty")
        for _ in range(n):
            self.add()
        self.free = sorted(set(range(n)) - set(used.tolist()))

    def _clear(self, slot: int) -> None:
        for name, (_, _, fill) in self.layout.items():
            getattr(self, name)[slot] = fill

    def _prepared(self, slot: int, ref_cells: npt.NDArray[Any], rate: float, max_reference: int) -> None:
        """Start a slot afresh on a reference (its counts per cell; the kind's statics set already)."""
        for name in ("looks", "seen", "ring_z", "ring_c", "ring_index", "ring_time", "epoch", "epochs", "n_epochs"):
            getattr(self, name)[slot] = self.layout[name][2]
        self.warned[slot], self.epoch_warned[slot], self.evidence[slot] = False, False, math.nan
        self.sums[slot] = 0
        self.ref_cells[slot] = 0
        self.ref_cells[slot, : len(ref_cells)] = ref_cells
        self.n_cells[slot] = len(ref_cells)
        self.rate[slot], self.max_reference[slot] = rate, max_reference
        self._derive(np.array([slot]))

    def _derive(self, slots: IntArray) -> None:
        """What follows from the slots' reference counts (prepared, or grown by an epoch)."""
        self.n_ref[slots] = self.ref_cells[slots].sum(axis=1)

    # -- the scan --------------------------------------------------------------------------------

    def scan(self, slots: IntArray, counts: IntArray, values: npt.NDArray[Any], index: Any, times: Any) -> IntArray:
        """Take whole looks of each slot: `values` holds `counts[i]` (a multiple of the look) for
        `slots[i]`, one after another, in order; `index` and `times` (or None) each value's input
        index and time. Returns, per slot, the position (in its values) of the last value of the
        look that fired (then `findings[slot]` says how), or -1."""
        L = self.look
        slots = np.asarray(slots, dtype=np.int64)
        wanted = np.asarray(counts, dtype=np.int64) // L
        offsets = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)
        done = np.zeros(len(slots), dtype=np.int64)
        fired = np.full(len(slots), -1, dtype=np.int64)
        todo = np.flatnonzero(wanted > 0)
        while len(todo):
            s = slots[todo]
            # Never across an epoch's end where the reference may grow, nor more than the ring.
            growing = self.n_ref[s] < self.max_reference[s]
            k = np.minimum(wanted[todo] - done[todo], HISTORY)
            k = np.where(growing, np.minimum(k, EPOCH_LOOKS - self.looks[s] % EPOCH_LOOKS), k)
            last, fire = self._round(s, k, growing, offsets[todo] + done[todo] * L, values, index, times)
            fired[todo[fire]] = (done[todo[fire]] + last[fire] + 1) * L - 1
            done[todo] += last + 1
            todo = todo[~fire & (done[todo] < wanted[todo])]
        return fired

    def _round(
        self,
        s: IntArray,
        k: IntArray,
        growing: npt.NDArray[np.bool_],
        first: IntArray,
        values: npt.NDArray[Any],
        index: Any,
        times: Any,
    ) -> tuple[IntArray, npt.NDArray[np.bool_]]:
        """k[i] looks of slot s[i] from values[first[i]:]: per slot, the last look kept and whether it
        fired. Epochs are counted only for the slots whose reference may still grow."""
        L, H = self.look, HISTORY
        rows = int(k.sum())
        start_row = np.r_[0, np.cumsum(k)[:-1]]
        seg = np.repeat(np.arange(len(s)), k)  # each row's slot, as its place in s
        j = np.arange(rows) - start_row[seg]  # the row's look within the round
        at = first[seg] + j * L  # its first value
        x = values[at[:, None] + np.arange(L)]
        looks = self.looks[s]
        blocks, extra, cells = self._blocks(x, s, seg, self.seen[s][seg] + j * L)
        # Window sums: each slot's running sums, plus each new look, less each window's look leaving.
        q = looks[seg] + j  # the look's number since the slot was prepared
        gone = q[:, None] - WINDOWS  # rows x windows
        srow = s[seg]
        old = np.concatenate(
            [self.ring_z[srow[:, None], gone % H], self.ring_c[srow[:, None], gone % H]], axis=-1
        ).astype(np.int64)
        this_round = gone >= looks[seg][:, None]
        if this_round.any():
            r, w = np.nonzero(this_round)
            old[r, w] = blocks[start_row[seg[r]] + gone[r, w] - looks[seg[r]]]
        old[gone < 0] = 0
        delta = blocks[:, None, :] - old
        delta[start_row] += self.sums[s]
        window = np.cumsum(delta, axis=0)
        before = window[start_row - 1]  # each segment's start: less what the earlier segments summed
        before[0] = 0
        window -= before[seg]
        stats = self._statistics(window, srow)
        ratios = stats / self.limits[srow]
        ratios[(q + 1)[:, None] < WINDOWS] = 0.0
        peak = ratios.reshape(rows, -1).max(axis=1)
        first_hit = np.minimum.reduceat(np.where(peak >= 1.0, j, k[seg]), start_row)
        fire = first_hit < k
        last = np.where(fire, first_hit, k - 1)
        keep = j <= last[seg]
        last_row = start_row + last
        self.evidence[s] = peak[last_row]
        self.epoch_warned[s] |= np.maximum.reduceat(np.where(keep, peak, 0.0), start_row) >= WARN
        # The looks kept go into the ring; the slot's sums are those after its last one.
        slot_k, pos = srow[keep], q[keep] % H
        self.ring_z[slot_k, pos] = blocks[keep, : self.z_dims]
        self.ring_c[slot_k, pos] = blocks[keep, self.z_dims :]
        self._keep(slot_k, pos, extra[keep])
        self.ring_index[slot_k, pos] = -1 if index is None else index[at[keep]]
        self.ring_time[slot_k, pos] = math.nan if times is None else times[at[keep]]
        self.sums[s] = window[last_row]
        self.looks[s] += last + 1
        self.seen[s] += (last + 1) * L
        # The epoch counts the values of slots that did not fire.
        quiet = keep & ~fire[seg] & growing[seg]
        if quiet.any():
            qs = seg[quiet]
            c = np.bincount((qs[:, None] * self.cells + cells[quiet]).ravel(), minlength=len(s) * self.cells)
            grew = np.unique(qs)
            self.epoch[s[grew]] += c.reshape(len(s), self.cells)[grew].astype(self.epoch.dtype)
        for f in np.flatnonzero(fire).tolist():
            row = int(last_row[f])
            self._find(int(s[f]), ratios[row], stats[row], window[row])
        for f in np.flatnonzero(~fire & growing & (self.looks[s] % EPOCH_LOOKS == 0)).tolist():
            self._end_epoch(int(s[f]))
        return last, fire

    def _find(self, slot: int, ratios: FloatArray, stats: FloatArray, window: IntArray) -> None:
        jw, t = np.unravel_index(int(np.argmax(ratios)), ratios.shape)
        w = int(WINDOWS[jw])
        first = (int(self.looks[slot]) - w) % HISTORY
        index, at = int(self.ring_index[slot, first]), float(self.ring_time[slot, first])
        self.findings[slot] = {
            "test": self.tests[int(t)],
            "window_events": w * self.look,
            "statistic": float(stats[jw, t]),
            "threshold": float(self.limits[slot, jw, t]),
            "reference_events": int(self.n_ref[slot]),
            "change_index": index if index >= 0 else None,
            "change_timestamp": None if math.isnan(at) else at,
            **self._describe(slot, window[jw], w),
        }
        self.distributions[slot] = self._distribution(slot, window[jw], w)

    def _end_epoch(self, slot: int) -> None:
        """A finished epoch waits LAG_EPOCHS epochs; the oldest then joins the reference if no test
        came near its threshold meanwhile (and the reference has room)."""
        n = int(self.n_epochs[slot])
        if n < LAG_EPOCHS:
            self.epochs[slot, n], self.warned[slot, n] = self.epoch[slot], self.epoch_warned[slot]
            self.n_epochs[slot] += 1
        else:
            oldest = self.epochs[slot, 0].copy()
            quiet = not (self.warned[slot].any() or self.epoch_warned[slot])
            self.epochs[slot, :-1], self.warned[slot, :-1] = self.epochs[slot, 1:], self.warned[slot, 1:]
            self.epochs[slot, -1], self.warned[slot, -1] = self.epoch[slot], self.epoch_warned[slot]
            if quiet and self.n_ref[slot] < self.max_reference[slot]:
                self.ref_cells[slot] += oldest
                self._derive(np.array([slot]))
        self.epoch[slot] = 0
        self.epoch_warned[slot] = False

    # -- state -----------------------------------------------------------------------------------

    def state(self, slots: IntArray) -> dict[str, npt.NDArray[Any]]:
        """The slots' state (copies): what a checkpoint keeps; the rest follows from it and the reference."""
        return {name: getattr(self, name)[slots] for name in self.kept}

    def copy(self, buffers: dict[str, npt.NDArray[Any]] | None = None) -> dict[str, npt.NDArray[Any]]:
        """Every slot's state (as `state`), copied into `buffers` (kept by the caller between copies,
        grown here: tens of MB of fresh pages at each checkpoint would be faulted in on the loop)
        or, without, afresh."""
        n = self.slots
        out = {}
        for name in self.kept:
            live = getattr(self, name)
            if buffers is None:
                out[name] = live[:n].copy()
                continue
            buffer = buffers.get(name)
            if buffer is None or len(buffer) < n:
                buffer = buffers[name] = np.empty_like(live)
            np.copyto(buffer[:n], live[:n])
            out[name] = buffer[:n]
        return out

    def restore(self, slots: IntArray, state: dict[str, Any]) -> None:
        """Take the slots' state back (after each was prepared on its reference again)."""
        for name in self.kept:
            getattr(self, name)[slots] = state[name]
        self._derive(slots)
        # The running window sums, from the ring.
        H = HISTORY
        for slot in np.asarray(slots).tolist():
            looks = int(self.looks[slot])
            ring = np.concatenate([self.ring_z[slot], self.ring_c[slot]], axis=-1).astype(np.int64)
            for j, w in enumerate(WINDOW_LOOKS):
                held = np.arange(max(0, looks - w), looks) % H
                self.sums[slot, j] = ring[held].sum(axis=0)

    # -- the kind --------------------------------------------------------------------------------

    def _blocks(
        self, x: npt.NDArray[Any], s: IntArray, seg: IntArray, position: IntArray
    ) -> tuple[IntArray, FloatArray, IntArray]:
        """Per look (rows of x, of slot s[seg]): its tested sums (integers), what else the ring keeps
        of it, and its values' reference cells."""
        raise NotImplementedError

    def _keep(self, slots: IntArray, pos: IntArray, extra: FloatArray) -> None:
        """Keep the looks' `extra` in the ring."""

    def _statistics(self, window: IntArray, srow: IntArray) -> FloatArray:
        """Statistics (looks x windows x tests) of window sums (looks x windows x dims)."""
        raise NotImplementedError

    def _describe(self, slot: int, window: IntArray, w: int) -> dict[str, Any]:
        raise NotImplementedError

    def _distribution(self, slot: int, window: IntArray, w: int) -> dict[str, Any]:
        """The reference's and the window's shares, in cells a plot can draw."""
        raise NotImplementedError


class NumericBank(ScanBank):
    """Normal scores of values against the reference's fine cells: location, scale and shape."""

    tests = ("mean", "scale", "shape")
    z_dims = 2  # Σz, Σ(z² - 1)
    count_dims = SHAPE_BINS
    cells = FINE_BINS
    ring_x: npt.NDArray[np.float32]
    edges: FloatArray
    shape_of: npt.NDArray[np.uint8]
    shape_p: FloatArray
    ref_mean: FloatArray
    ref_sd: FloatArray

    def _kind_state(self) -> dict[str, tuple[tuple[int, ...], Any, Any]]:
        # Σx, Σx² per look, only to describe a change (float32: a quarter of a stream's checkpoint
        # otherwise; beyond its range, the description says nothing).
        return {"ring_x": ((HISTORY, 2), np.float32, 0.0)}

    def _kind_derived(self) -> dict[str, tuple[tuple[int, ...], Any, Any]]:
        return {
            "edges": ((FINE_BINS - 1,), np.float64, math.inf),  # interior edges of the cells; inf past the last
            "shape_of": ((FINE_BINS,), np.uint8, 0),
            "shape_p": ((SHAPE_BINS,), np.float64, 0.0),
            "ref_mean": ((), np.float64, 0.0),
            "ref_sd": ((), np.float64, 1.0),
        }

    def prepare(self, slot: int, reference: FloatArray, rate: float, max_reference: int) -> None:
        """Learn a sorted reference: cells between its quantiles (ties merge them), shape bins of
        about equal share of it (fixed from now on)."""
        r = len(reference)
        g = max(2, min(FINE_BINS, r // 4))
        edges = np.unique(reference[(np.arange(1, g) * r) // g])
        cells = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1)
        self.edges[slot] = math.inf
        self.edges[slot, : len(edges)] = edges
        share = np.cumsum(cells) / r
        self.shape_of[slot] = 0
        self.shape_of[slot, : len(cells)] = np.minimum((share - cells / r / 2) * SHAPE_BINS, SHAPE_BINS - 1)
        self.ref_mean[slot] = float(reference.mean())
        self.ref_sd[slot] = float(reference.std()) or 1.0
        self._prepared(slot, cells, rate, max_reference)
        self.limits[slot] = [
            [threshold(df, int(n), self.look, rate) for df in (1, 1, SHAPE_BINS - 1)] for n in self.n_values.tolist()
        ]

    def _derive(self, slots: IntArray) -> None:
        super()._derive(slots)
        shape = np.zeros((len(slots), SHAPE_BINS))
        np.add.at(shape, (np.arange(len(slots))[:, None], self.shape_of[slots]), self.ref_cells[slots])
        shape += 0.5
        self.shape_p[slots] = shape / shape.sum(axis=1, keepdims=True)

    def _blocks(
        self, x: npt.NDArray[Any], s: IntArray, seg: IntArray, position: IntArray
    ) -> tuple[IntArray, FloatArray, IntArray]:
        rows, L = x.shape
        C = self.cells
        x = x.astype(np.float64, copy=False)
        # Each value's cell among its own slot's edges: one search, slots apart as real parts.
        keys = _complex(np.arange(len(s))[:, None].astype(np.float64), self.edges[s]).ravel()
        cell = np.searchsorted(keys, _complex(seg[:, None].astype(np.float64), x), side="right")
        cell -= seg[:, None] * (C - 1)
        # Its place in the reference's distribution, uniform within the cell: the normal score.
        ref = self.ref_cells[s].astype(np.float64)
        real = np.arange(C) < self.n_cells[s][:, None]
        p = np.where(real, (ref + 0.5) / (self.n_ref[s] + 0.5 * self.n_cells[s])[:, None], 0.0)
        below = np.zeros_like(p)
        np.cumsum(p[:, :-1], axis=1, out=below[:, 1:])
        flat = seg[:, None] * C + cell
        u = JITTER[(position[:, None] + np.arange(L)) % len(JITTER)] * p.ravel()[flat]
        u += below.ravel()[flat]
        z = special.ndtri(np.clip(u, U_EDGE, 1 - U_EDGE, out=u))
        blocks = np.empty((rows, 2 + SHAPE_BINS), dtype=np.int64)
        blocks[:, 0] = np.rint(z.sum(axis=1) * Z_UNIT)
        blocks[:, 1] = np.rint((z * z - 1).sum(axis=1) * Z_UNIT)
        shape = self.shape_of[s[seg][:, None], cell].astype(np.int64)
        blocks[:, 2:] = np.bincount(
            (np.arange(rows)[:, None] * SHAPE_BINS + shape).ravel(), minlength=rows * SHAPE_BINS
        ).reshape(rows, SHAPE_BINS)
        with np.errstate(over="ignore"):
            extra = np.stack([x.sum(axis=1), (x * x).sum(axis=1)], axis=1)
        return blocks, extra, cell

    def _keep(self, slots: IntArray, pos: IntArray, extra: FloatArray) -> None:
        with np.errstate(over="ignore"):  # past float32: inf, and the description says nothing
            self.ring_x[slots, pos] = extra

    def _statistics(self, window: IntArray, srow: IntArray) -> FloatArray:
        n = self.n_values
        n_ref = self.n_ref[srow][:, None]
        spread = 1.0 / n + 1.0 / n_ref
        mean = window[..., 0] / Z_UNIT / n
        # Σz² is χ²_n: its cube root per value is nearly normal (Wilson-Hilferty), where the plain
        # normal approximation of a short window's Σz² has far too light an upper tail.
        cube = np.cbrt(np.maximum(window[..., 1] / Z_UNIT / n + 1.0, 0.0)) - (1.0 - 2.0 / (9 * n))
        shape = deviance(window[..., 2:], self.shape_p[srow][:, None, :] * n[:, None]) / (1.0 + n / n_ref)
        return np.stack([mean * mean / spread, cube * cube / (2.0 / 9.0 * spread), shape], axis=-1)

    def _describe(self, slot: int, window: IntArray, w: int) -> dict[str, Any]:
        looks = int(self.looks[slot])
        sx, sxx = self.ring_x[slot, np.arange(looks - w, looks) % HISTORY].astype(np.float64).sum(axis=0)
        n = w * self.look
        mean = float(sx) / n
        sd = math.sqrt(max(float(sxx) / n - mean * mean, 0.0))
        ref_mean, ref_sd = float(self.ref_mean[slot]), float(self.ref_sd[slot])
        described = {
            "window_mean": mean,
            "window_sd": sd,
            "mean_shift_sd": (mean - ref_mean) / ref_sd,
            "sd_ratio": sd / ref_sd,
        }
        return {
            "reference_mean": ref_mean,
            "reference_sd": ref_sd,
            # Six significant digits: what float32 sums hold.
            **{k: float(f"{v:.6g}") if math.isfinite(v) else None for k, v in described.items()},
        }

    def _distribution(self, slot: int, window: IntArray, w: int) -> dict[str, Any]:
        """The shape bins (about equal shares of the reference) with their edges in the values' units."""
        n_cells = int(self.n_cells[slot])
        bins = self.shape_of[slot, :n_cells].astype(np.int64)
        used = np.unique(bins)
        change = np.flatnonzero(bins[1:] != bins[:-1])  # the fine edge after cell i closes a shape bin
        return {
            "edges": [float(e) for e in self.edges[slot, change].tolist()],
            "reference_share": [float(x) for x in self.shape_p[slot, used].tolist()],
            "window_share": [float(x) for x in (window[2 + used] / (w * self.look)).tolist()],
        }


class CategoricalBank(ScanBank):
    """Level counts against the reference's shares (a G test per window), thin cells pooled."""

    tests = ("levels",)
    z_dims = 0
    count_dims = MAX_CELLS + 1
    cells = MAX_CELLS + 1
    group: npt.NDArray[np.int8]
    expected: FloatArray

    def __init__(self, look: int) -> None:
        super().__init__(look)
        self.names: list[list[str]] = []  # per slot: its levels' names, the rare cell's last

    def _kind_derived(self) -> dict[str, tuple[tuple[int, ...], Any, Any]]:
        W, K = len(WINDOWS), self.cells
        # Per window length, each cell's group: the cells expected to hold MIN_EXPECTED values alone,
        # in order, then one group for the rest (the rare cell among them); padded groups expect 1
        # value and hold none (terms of 0).
        return {"group": ((W, K), np.int8, 0), "expected": ((W, K), np.float64, 1.0)}

    def add(self) -> int:
        slot = super().add()
        while len(self.names) <= slot:
            self.names.append([])
        return slot

    def prepare(self, slot: int, names: list[str], ref_cells: FloatArray, rate: float, max_reference: int) -> None:
        """Learn a reference's counts per cell (its own levels, then the rare cell; `names` theirs)."""
        self.names[slot] = names
        self._prepared(slot, ref_cells, rate, max_reference)

    def _derive(self, slots: IntArray) -> None:
        super()._derive(slots)
        K = self.cells
        for slot in slots.tolist():
            dims = int(self.n_cells[slot])
            ref = self.ref_cells[slot, :dims].astype(np.float64)
            p = (ref + 0.5) / (self.n_ref[slot] + 0.5 * dims)
            own = (p[None, :] * self.n_values[:, None] >= MIN_EXPECTED) & (np.arange(dims) < dims - 1)
            self.group[slot], self.expected[slot] = 0, 1.0
            for j, n in enumerate(self.n_values.tolist()):
                mine = np.flatnonzero(own[j])
                g = len(mine)
                groups = np.full(K, g, dtype=np.int8)
                groups[mine] = np.arange(g)
                self.group[slot, j] = groups
                self.expected[slot, j, : g + 1] = np.r_[p[mine], p[~own[j]].sum()] * n
                self.limits[slot, j, 0] = threshold(g, int(n), self.look, float(self.rate[slot])) if g else math.inf

    def _blocks(
        self, x: npt.NDArray[Any], s: IntArray, seg: IntArray, position: IntArray
    ) -> tuple[IntArray, FloatArray, IntArray]:
        rows, K = len(x), self.cells
        cell = x.astype(np.int64, copy=False)
        blocks = np.bincount((np.arange(rows)[:, None] * K + cell).ravel(), minlength=rows * K).reshape(rows, K)
        return blocks, np.zeros((rows, 0)), cell

    def _statistics(self, window: IntArray, srow: IntArray) -> FloatArray:
        rows, W, K = window.shape
        group = self.group[srow].astype(np.int64).reshape(rows * W, K)
        counts = np.bincount(
            (np.arange(rows * W)[:, None] * K + group).ravel(), weights=window.reshape(-1), minlength=rows * W * K
        ).reshape(rows, W, K)
        stat = deviance(counts, self.expected[srow]) / (1.0 + self.n_values / self.n_ref[srow][:, None])
        out: FloatArray = stat[..., None]
        return out

    def _describe(self, slot: int, window: IntArray, w: int) -> dict[str, Any]:
        dims = int(self.n_cells[slot])
        p = self.ref_cells[slot, :dims] / self.n_ref[slot]
        q = window[:dims] / (w * self.look)
        names = self.names[slot]
        moved = np.argsort(-np.abs(q - p), kind="stable")[:3]
        return {
            "levels": [
                {"level": names[i], "reference_share": float(p[i]), "window_share": float(q[i])} for i in moved.tolist()
            ]
        }

    def _distribution(self, slot: int, window: IntArray, w: int) -> dict[str, Any]:
        """Every cell (the reference's frequent levels, then the shared rare cell)."""
        dims = int(self.n_cells[slot])
        return {
            "levels": list(self.names[slot][:dims]),
            "reference_share": (self.ref_cells[slot, :dims] / self.n_ref[slot]).tolist(),
            "window_share": (window[:dims] / (w * self.look)).tolist(),
        }
