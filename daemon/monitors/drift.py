"""Drift monitoring: one calibrated detector per stream of every key of a partition, values in arrays.

A key's streams are `score`, `latency`, `feature:<name>` (numeric or categorical by its first
value) and `errors` (misclassified, from joined labels). Each stream:

1. collects its reference: the first `reference_events` values, or a reference file's;
2. calibrates its detector on that reference to the target expected run time (ERT), inline
   (replay: deterministic) or on a background thread (the daemon: off the ingest loop; values
   that arrive meanwhile wait in a bounded buffer);
3. detects. Window tests judge each tumbling window of `window_events` values against the
   reference; River's detectors take the values one by one. Every detection becomes a
   `DriftAlert` carrying the input index of the event that completed the evidence, and the
   stream learns a new reference.

Storage: a bank per value kind holds every stream's reference and window in one row, `[reference
| window]` (numbers as float64; categories as this partition's level codes). A batch scatters each
stream's values into its row at once; Python runs per stream only when a reference or a window
fills, a few times per thousand values.

Multiple testing: with `bonferroni`, each of a key's m feature streams is calibrated to
m × target, so the key's features together raise about one false alarm per target events.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import structlog

from daemon.config import DriftConfig
from daemon.export.families import Sink, escape
from daemon.ingest.batch import Batch, Key
from daemon.monitors.arrays import grown
from daemon.monitors.names import Overflow, RowNames
from daemon.state import codec
from detectors.calibration import Calibration, calibrate
from detectors.distribution import (
    EXACT_KS_MAX,
    CategoricalTest,
    ErrorRateTest,
    KSTest,
    WindowedTest,
    ks_asymptotic,
)
from detectors.registry import DETECTORS
from detectors.scan import (
    LOOK,
    SPLIT_EDGE,
    CategoricalScan,
    ScanTest,
    categorical_reference_change,
    numeric_reference_change,
)
from detectors.scan_bank import CategoricalBank, NumericBank, ScanBank

log = structlog.get_logger(__name__)

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
StreamState = Literal["reference", "calibrating", "active", "failed", "drifted"]
STREAM_STATES: tuple[StreamState, ...] = ("reference", "calibrating", "active", "failed", "drifted")
Kind = Literal["numeric", "categorical", "binary"]
# A key's streams that are not features, by their column of `Drift.fixed`: the numeric ones are
# read from the batch's columns of the same name (NUMERIC_FIXED), errors from the labels' grading.
FIXED = ("score", "latency", "errors", "ttft", "prompt_tokens", "output_tokens", "tpot", "finish_reason")
# The finish_reason stream's level table (`Drift.levels` is keyed by feature name otherwise).
FINISH_LEVELS = "__finish_reason__"
NUMERIC_FIXED = {"score": "score", "latency": "latency_ms", "ttft": "ttft_ms", "prompt_tokens": "tokens_in",
                 "output_tokens": "tokens_out", "tpot": "tpot_ms"}  # fmt: skip
# A stream's kind is also its bank of values; as a code, its place here.
KINDS: tuple[Kind, ...] = ("numeric", "categorical", "binary")

# Phases of a stream, in an array (`Drift.phase`). DRIFTED: a pinned reference's stream after a
# detection, holding until its reference is reset.
# RELEASED: a feature's stream whose feature the key no longer tracks (gone, shown nowhere).
COLLECT, WINDOW, HOLD, SEQUENTIAL, OFF, DRIFTED, RELEASED = 0, 1, 2, 3, 4, 5, 6
PHASES = 7
_STATE_OF_PHASE: tuple[StreamState, ...] = (
    "reference", "active", "calibrating", "active", "failed", "drifted", "failed"
)  # fmt: skip
# Values held per stream while its calibration runs in the background; beyond it they are
# skipped (counted) rather than held without bound.
MAX_PENDING = 100_000
# Levels of one categorical feature a partition tells apart; later ones share code 0 (OTHER),
# counted as `feature_level` overflow. Level codes are what the bank stores.
MAX_LEVELS = 10_000
OTHER_LEVEL = "__other__"
# Rows of references copied into the snapshot mirror at a time (temporaries of ~2 MB).
MIRROR_CHUNK = 256
# KS windows tested at a time (temporaries of ~2 MB at 1,000 x 500).
KS_BLOCK_ROWS = 128


@dataclass(frozen=True, slots=True)
class DriftAlert:
    """One detection, as the replay report and the log line show it."""

    index: int
    timestamp: float | None
    key: Key
    stream: str
    detector: str
    score: float | None
    target_ert: float
    # How it drifted: the test, its statistic and threshold, the change (scan tests: see
    # detectors/scan.py), the estimated change point.
    details: dict[str, Any] | None = None
    # The reference's and the detecting window's shares, in cells (scans only; the replay report's).
    distribution: dict[str, Any] | None = None

    def report(self) -> dict[str, Any]:
        model, version, variant = self.key
        return {
            "index": self.index,
            "timestamp": self.timestamp,
            "kind": "drift",
            "model": model,
            "version": version,
            "variant": variant,
            "stream": self.stream,
            "detector": self.detector,
            "score": self.score,
            "target_ert": self.target_ert,
            "details": self.details,
            "distribution": self.distribution,
        }


class Calibrator:
    """Runs calibrations: inline (`workers=0`) or on background threads."""

    def __init__(self, workers: int = 0) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="calibrate") if workers else None

    def submit(self, fn: Callable[[], Calibration]) -> Future[Calibration]:
        if self._pool is not None:
            return self._pool.submit(fn)
        done: Future[Calibration] = Future()
        try:
            done.set_result(fn())
        except Exception as exc:
            done.set_exception(exc)
        return done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class Stream:
    """What a stream keeps besides its bank row and the arrays: its detector and calibration."""

    __slots__ = (
        "calibration",
        "detector",
        "error",
        "feature",
        "future",
        "kind",
        "lut",
        "name",
        "pending",
        "row",
        "scan",
        "skipped",
        "slot_codes",
        "static",
        "target",
        "tester",
        "windowed",
    )

    def __init__(self, name: str, kind: Kind, detector: str, row: int, feature: str | None) -> None:
        self.name = name
        self.kind = kind
        self.detector = detector
        self.windowed = issubclass(DETECTORS[detector], WindowedTest)
        self.scan = issubclass(DETECTORS[detector], ScanTest)
        self.row = row  # the key's row
        self.feature = feature
        self.tester: Any = None  # the calibrated detector while the stream is active
        self.calibration: Calibration | None = None
        self.target: float | None = None  # the target ERT of the calibration last submitted
        self.future: Future[Calibration] | None = None
        # Values that came while calibrating: (values, event indices, event times) arrays.
        self.pending: list[tuple[npt.NDArray[Any], Ints, Floats]] = []
        self.skipped = 0
        self.error: str | None = None
        # Categorical window tests: the level code of each of the tester's reference levels;
        # categorical scans: the scan's cell of each level code.
        self.slot_codes: Ints | None = None
        self.lut: Ints | None = None
        # Its snapshot's parts that change only with a calibration (built when a snapshot needs them).
        self.static: dict[str, Any] | None = None


class Drift:
    """Every drift stream of a partition's keys. `keys` is the partition's list of keys by row."""

    def __init__(
        self,
        settings: DriftConfig,
        calibrator: Calibrator,
        max_features: int,
        keys: list[Key],
        overflow: Overflow,
        references: dict[Key, dict[str, list[Any]]] | None = None,
    ) -> None:
        self.settings = settings
        self.calibrator = calibrator
        self.keys = keys
        self.overflow = overflow
        self.references = references or {}
        self.R, self.W = settings.reference_events, settings.window_events
        # Scans read every LOOK values (a window test every W): a stream's window in the bank.
        self.look = min(LOOK, self.W)
        # The scan streams' state, one slot each (`scan_slot`), per kind: their looks are tested together.
        self.scans: dict[str, ScanBank] = {"numeric": NumericBank(self.look), "categorical": CategoricalBank(self.look)}
        watch = settings.streams
        self.watch = {s: s in watch for s in ("features", *FIXED)}
        self.streams: list[Stream] = []
        # Per stream: phase, values in its buffer, detections, monotonic time of the last one, the
        # detector's latest statistic (NaN: none), and its row in the bank of its kind.
        self.phase = np.zeros(0, dtype=np.int8)
        self.fill = np.zeros(0, dtype=np.int64)
        self.detections = np.zeros(0, dtype=np.int64)
        self.last_detection = np.zeros(0, dtype=np.float64)
        self.score = np.zeros(0, dtype=np.float64)
        self.p_value = np.zeros(0, dtype=np.float64)
        self.bank_row = np.zeros(0, dtype=np.int64)
        self.wlen = np.zeros(0, dtype=np.int64)  # values per window (W, or a scan's look)
        self.scan_slot = np.zeros(0, dtype=np.int64)  # a scan stream's slot in its bank (-1: none yet)
        # The input index and time of the first value in each stream's window (a scan's change point).
        self.window_index = np.zeros(0, dtype=np.int64)
        self.window_time = np.zeros(0, dtype=np.float64)
        # Drifted since (the estimated change point of its last detection) until the stream has
        # learned its new reference from data after it: input index (-1: not drifted) and time.
        self.since_index = np.zeros(0, dtype=np.int64)
        self.since_time = np.zeros(0, dtype=np.float64)
        # Pinned references neither grow nor are re-learned after a detection (drift.pin_references,
        # or by API): the stream holds (DRIFTED) until its reference is reset.
        self.pinned = np.zeros(0, dtype=np.bool_)
        # How many leading values of the stream's reference the mirror (what snapshots share
        # instead of copying references) holds as they stand: references change only while they
        # are collected (appended to) and once when they are prepared, so a snapshot copies what
        # was appended since the last one and almost nothing once they are full.
        self.mirrored = np.zeros(0, dtype=np.int64)
        self.mirrors: dict[str, npt.NDArray[Any]] = {}
        self.window_copies: dict[str, npt.NDArray[Any]] = {}
        self.scan_copies: dict[str, dict[str, npt.NDArray[Any]]] = {}  # the scan banks' state, likewise
        # Per bank, the encoded chunks of the mirror's rows kept between checkpoints (codec.Chunked).
        self.mirror_encoded: dict[str, list[tuple[int, bytes] | None]] = {kind: [] for kind in KINDS}
        self.kind_code = np.zeros(0, dtype=np.int8)  # per stream: its kind's place in KINDS
        # A bank per kind, a row per stream: its reference, then room for its window (a look for a
        # scan: scans are what most streams run, so their rows are narrow).
        detectors = {
            "numeric": settings.numeric_detector,
            "categorical": settings.categorical_detector,
            "binary": settings.error_detector,
        }
        self.banks: dict[str, npt.NDArray[Any]] = {
            kind: np.zeros(
                (0, self.R + (self.look if issubclass(DETECTORS[detectors[kind]], ScanTest) else self.W)),
                dtype=np.int32 if kind == "categorical" else np.float64,
            )
            for kind in KINDS
        }
        self.bank_rows: dict[str, int] = dict.fromkeys(KINDS, 0)
        # Per key row: its score, latency and errors streams, and its feature streams by column.
        self.rows = 0
        self.fixed = np.full((0, len(FIXED)), -1, dtype=np.int64)
        self.by_row: list[list[int]] = []
        # Each stream's label pairs for the exposition, built once.
        self.stream_labels: list[str] = []
        self.feature_names = RowNames(max_features, "feature", Overflow())  # drift does not count overflow
        self.feature_stream = np.full((0, max_features), -1, dtype=np.int64)
        # Each categorical feature's level codes (0 is OTHER), shared by the partition's keys.
        self.levels: dict[str, dict[str, int]] = {}
        self.level_names: dict[str, list[str]] = {}
        # Streams whose background calibration finished: taken at the next batch or poll().
        self._ready: deque[int] = deque()
        # Monotonic time of the newest detection of any stream (the exposition checks holds only then).
        self.newest_detection: float | None = None

    # -- rows and streams ---------------------------------------------------------------------

    def add_rows(self, n: int) -> None:
        self.rows += n
        self.feature_names.add_rows(n)
        self.by_row.extend([] for _ in range(n))
        if self.rows > len(self.fixed):
            cap = max(self.rows, 2 * len(self.fixed), 16)
            self.fixed = grown(self.fixed, cap, -1)
            self.feature_stream = grown(self.feature_stream, cap, -1)

    def _stream(self, row: int, name: str, kind: Kind, feature: str | None = None) -> int:
        s = self.settings
        detector = {"numeric": s.numeric_detector, "categorical": s.categorical_detector, "binary": s.error_detector}[
            kind
        ]
        sid = len(self.streams)
        self.streams.append(Stream(name, kind, detector, row, feature))
        if sid >= len(self.phase):
            cap = max(2 * len(self.phase), 64)
            self.phase = grown(self.phase, cap, COLLECT)
            self.fill = grown(self.fill, cap, 0)
            self.detections = grown(self.detections, cap, 0)
            self.last_detection = grown(self.last_detection, cap, math.nan)
            self.score = grown(self.score, cap, math.nan)
            self.p_value = grown(self.p_value, cap, math.nan)
            self.mirrored = grown(self.mirrored, cap, 0)
            self.bank_row = grown(self.bank_row, cap, -1)
            self.wlen = grown(self.wlen, cap, self.W)
            self.scan_slot = grown(self.scan_slot, cap, -1)
            self.window_index = grown(self.window_index, cap, -1)
            self.window_time = grown(self.window_time, cap, math.nan)
            self.since_index = grown(self.since_index, cap, -1)
            self.since_time = grown(self.since_time, cap, math.nan)
            self.pinned = grown(self.pinned, cap, False)
            self.kind_code = grown(self.kind_code, cap, 0)
        self.kind_code[sid] = KINDS.index(kind)
        self.wlen[sid] = self.look if self.streams[sid].scan else self.W
        self.pinned[sid] = s.pin_references
        self.by_row[row].append(sid)
        bank = kind
        brow = self.bank_rows[bank]
        self.bank_rows[bank] += 1
        if brow >= len(self.banks[bank]):
            self._grow_bank(bank, max(2 * len(self.banks[bank]), 64))
        self.bank_row[sid] = brow
        self.phase[sid], self.fill[sid] = COLLECT, 0
        reference = self.references.get(self.keys[row], {}).get(name)
        if reference:
            values = reference[: self.R]
            if kind == "categorical":
                assert feature is not None
                codes, folded = self._level_codes(feature, [str(v) for v in values])
                if folded.any():
                    self.overflow.add("feature_level", int(np.count_nonzero(folded)))
                self.banks[bank][brow, : len(codes)] = codes
            else:
                self.banks[bank][brow, : len(values)] = values
            self.fill[sid] = len(values)
        return sid

    def _grow_bank(self, bank: str, rows: int) -> None:
        """A bigger bank: the window testers' references are views of it, so they move along."""
        self.banks[bank] = new = grown(self.banks[bank], rows, 0)
        if bank == "numeric":
            for sid, st in enumerate(self.streams):
                if hasattr(st.tester, "rebind"):
                    st.tester.rebind(new[self.bank_row[sid], : self.R])

    def _level_codes(self, feature: str, names: Sequence[str]) -> tuple[Ints, npt.NDArray[np.bool_]]:
        """The partition's code of each level name, and which of them were folded into OTHER (past
        MAX_LEVELS; the caller counts the values that carry them)."""
        table = self.levels.get(feature)
        if table is None:
            table = self.levels[feature] = {OTHER_LEVEL: 0}
            self.level_names[feature] = [OTHER_LEVEL]
        out, folded = [], []
        for name in names:
            code = table.get(name)
            if code is None and len(table) < MAX_LEVELS:
                code = table[name] = len(table)
                self.level_names[feature].append(name)
            out.append(0 if code is None else code)
            folded.append(code is None)
        return np.array(out, dtype=np.int64), np.array(folded, dtype=np.bool_)

    # -- batches ------------------------------------------------------------------------------

    def update(self, rows: Ints, order: Ints, batch: Batch) -> list[DriftAlert]:
        """Feed a batch; `order` sorts its events by row, stably. Returns the detections."""
        alerts = self._take_ready()
        srows = rows[order]
        numeric: list[tuple[Ints, Floats, Ints]] = []
        categorical: list[tuple[Ints, Ints, Ints]] = []
        for name, column in NUMERIC_FIXED.items():
            if self.watch[name]:
                v = getattr(batch, column)[order]
                has = ~np.isnan(v)
                if has.any():
                    sids = self._fixed_streams(srows, has, FIXED.index(name), name, "numeric")
                    numeric.append((sids[has], v[has], order[has]))
        if self.watch["finish_reason"] and batch.finish_reasons:
            codes = batch.finish_reason[order]
            has = codes >= 0
            if has.any():
                sids = self._fixed_streams(srows, has, FIXED.index("finish_reason"), "finish_reason", "categorical")
                table, folded = self._level_codes(FINISH_LEVELS, batch.finish_reasons)
                mapped = codes[has]
                if folded[mapped].any():
                    self.overflow.add("feature_level", int(np.count_nonzero(folded[mapped])))
                categorical.append((sids[has], table[mapped], order[has]))
        if self.watch["features"] and batch.features:
            self._features(srows, order, batch, numeric, categorical)
        for kind, triples in (("numeric", numeric), ("categorical", categorical)):
            if triples:
                sids = np.concatenate([t[0] for t in triples])
                values = np.concatenate([t[1] for t in triples])
                events = np.concatenate([t[2] for t in triples])
                keep = sids >= 0
                if not keep.all():
                    sids, values, events = sids[keep], values[keep], events[keep]
                alerts += self._place(sids, values, batch.index[events], batch.time[events], kind)
        return alerts

    def _fixed_streams(self, srows: Ints, has: npt.NDArray[np.bool_], slot: int, name: str, kind: Kind) -> Ints:
        sids: Ints = self.fixed[srows, slot]
        missing = has & (sids < 0)
        if missing.any():
            feature = FINISH_LEVELS if kind == "categorical" else None
            for row in np.unique(srows[missing]).tolist():
                self.fixed[row, slot] = self._stream(row, name, kind, feature)
            sids = self.fixed[srows, slot]
        return sids

    def _features(
        self,
        srows: Ints,
        order: Ints,
        batch: Batch,
        numeric: list[tuple[Ints, Floats, Ints]],
        categorical: list[tuple[Ints, Ints, Ints]],
    ) -> None:
        # Register the batch's new (key, feature) streams first, all of them, in the order of their
        # first value: a feature stream's Bonferroni target counts every feature known by then.
        usable_masks = []
        for f in batch.features:
            usable = f.present[order]
            if f.num is not None and f.codes is not None:  # mixed: strings and bools or numbers
                usable = usable & ((f.codes[order] >= 0) | ~np.isnan(f.num[order]))
            usable_masks.append(usable)
        where = [np.flatnonzero(u) for u in usable_masks]
        positions = np.concatenate(where)
        codes = np.concatenate([np.full(len(w), i, dtype=np.int64) for i, w in enumerate(where)])
        names = [f.name for f in batch.features]

        def within(i: int) -> int:  # the name's place in its event's features (new names only)
            return list(batch.events[order[positions[i]]].features or ()).index(names[codes[i]])

        all_cols, taken = self.feature_names.columns(srows[positions], codes, names, order[positions], within)
        for row, col, at in taken:
            f = batch.features[int(codes[at])]
            e = order[positions[at]]
            kind: Kind = "categorical" if f.codes is not None and f.codes[e] >= 0 else "numeric"
            self.feature_stream[row, col] = self._stream(row, f"feature:{f.name}", kind, f.name)
        columns = []
        start = 0
        for f, usable, w in zip(batch.features, usable_masks, where, strict=True):
            cols = np.full(len(srows), -1, dtype=np.int64)
            cols[w] = all_cols[start : start + len(w)]
            start += len(w)
            columns.append((f, usable, cols))
        for f, usable, cols in columns:
            ok = usable & (cols >= 0) & (cols < self.feature_names.cap)
            if not ok.any():
                continue
            sids = np.full(len(srows), -1, dtype=np.int64)
            sids[ok] = self.feature_stream[srows[ok], cols[ok]]
            # A stream takes the values of its kind only: numbers in a categorical stream (and
            # strings in a numeric one) are skipped, as if absent.
            is_cat = self.kind_code[np.maximum(sids, 0)] == KINDS.index("categorical")
            if f.codes is not None:
                codes = f.codes[order]
                cat = ok & is_cat & (codes >= 0)
                if cat.any():
                    table, folded = self._level_codes(f.name, f.levels)
                    mapped = codes[cat]
                    n_folded = int(np.count_nonzero(folded[mapped]))
                    if n_folded:
                        self.overflow.add("feature_level", n_folded)
                    categorical.append((sids[cat], table[mapped], order[cat]))
            if f.num is not None:
                values = f.num[order]
                num = ok & ~is_cat & ~np.isnan(values)
                if num.any():
                    numeric.append((sids[num], values[num], order[num]))

    def update_errors(self, rows: Ints, wrong: npt.NDArray[np.bool_], index: Ints, times: Floats) -> list[DriftAlert]:
        """Graded predictions in label order: True where the prediction was wrong."""
        if not self.watch["errors"] or not len(rows):
            return []
        alerts = self._take_ready()
        order = np.argsort(rows, kind="stable")
        srows = rows[order]
        sids = self.fixed[srows, FIXED.index("errors")]
        for row in np.unique(srows[sids < 0]).tolist():
            self.fixed[row, FIXED.index("errors")] = self._stream(row, "errors", "binary")
        sids = self.fixed[srows, FIXED.index("errors")]
        return alerts + self._place(sids, wrong[order].astype(np.float64), index[order], times[order], "binary")

    def poll(self) -> list[DriftAlert]:
        """Streams whose calibration finished take it now and test the values held meanwhile.

        Without this a stream would wait for its key's next event: a key gone quiet would show
        `calibrating` forever and never test a drift that arrived while it was calibrating.
        """
        return self._take_ready()

    # -- the placement ------------------------------------------------------------------------

    def _place(self, sids: Ints, values: npt.NDArray[Any], index: Ints, times: Floats, kind: str) -> list[DriftAlert]:
        """Put each stream's values (contiguous runs per stream, in input order) where they belong.

        A round fills every stream's buffer; the values past a full window form further full
        windows straight from `values` (tested with it, in order), and what follows a detection, or
        the last partial window, goes round again.
        """
        alerts: list[DriftAlert] = []
        bank = self.banks[kind]
        while len(sids):
            n = len(sids)
            starts = np.flatnonzero(np.r_[True, sids[1:] != sids[:-1]])
            run_sid = sids[starts]
            run_len = np.diff(np.r_[starts, n])
            phase = self.phase[run_sid]
            buffered = (phase == COLLECT) | (phase == WINDOW)
            room = np.where(phase == COLLECT, self.R, self.wlen[run_sid]) - self.fill[run_sid]
            room = np.where(buffered, room, 0)
            rank = np.arange(n) - np.repeat(starts, run_len)
            fits = rank < np.repeat(room, run_len)
            if fits.any():
                s = sids[fits]
                col = np.where(self.phase[s] == COLLECT, 0, self.R) + self.fill[s] + rank[fits]
                bank[self.bank_row[s], col] = values[fits]
                fresh = (self.fill[run_sid] == 0) & (room > 0)
                self.window_index[run_sid[fresh]] = index[starts[fresh]]
                self.window_time[run_sid[fresh]] = times[starts[fresh]]
                self.fill[run_sid] += np.minimum(run_len, room)
            leftover = ~fits
            # Streams whose buffer filled, and those that take values another way, one by one;
            # then the windows that filled, together.
            full = buffered & (self.fill[run_sid] == np.where(phase == COLLECT, self.R, self.wlen[run_sid]))
            windows: list[tuple[int, int, int]] = []  # (stream, start of its values here, values after the bank's)
            for u in np.flatnonzero(full | ~buffered).tolist():
                sid = int(run_sid[u])
                a, b = int(starts[u]), int(starts[u] + run_len[u])
                if not buffered[u]:
                    done = self._unbuffered(sid, values[a:b], index[a:b], times[a:b], alerts)
                    leftover[a + done : b] = True
                    leftover[a : a + done] = False
                elif phase[u] == COLLECT:
                    last = a + int(room[u]) - 1  # the value that completed it
                    alerts += self._reference_full(sid, int(index[last]), float(times[last]))
                else:
                    windows.append((sid, a + int(room[u]), b))
            if windows:
                alerts += self._judge(windows, values, index, times, leftover)
            sids, values, index, times = sids[leftover], values[leftover], index[leftover], times[leftover]
        return alerts

    def _unbuffered(
        self, sid: int, values: npt.NDArray[Any], index: Ints, times: Floats, alerts: list[DriftAlert]
    ) -> int:
        """Values of a stream that holds them (calibrating), drops them (failed) or feeds a River
        detector; returns how many it used (the rest go round again: a detection restarted it)."""
        st, phase = self.streams[sid], self.phase[sid]
        if phase in (OFF, DRIFTED, RELEASED):
            return len(values)
        if phase == HOLD:
            held = sum(len(p[0]) for p in st.pending)
            room = max(MAX_PENDING - held, 0)
            if room < len(values):
                st.skipped += len(values) - room
            if room:
                st.pending.append((values[:room].copy(), index[:room].copy(), times[:room].copy()))
            return len(values)
        hits = st.tester.update_many(values.tolist(), stop_at_first=True)
        if not hits:
            return len(values)
        h = int(hits[0])
        alerts.append(self._detected(sid, int(index[h]), float(times[h]), None))
        return h + 1

    def _reference_full(self, sid: int, index: int, at: float) -> list[DriftAlert]:
        """A stream's reference is complete: calibrate, and (inline) start testing. A scan's
        reference is checked first: if it changed within, the change is reported and the values
        after it start the reference again (a reference never straddles a change)."""
        st = self.streams[sid]
        if st.scan and not self.pinned[sid]:
            change = (
                categorical_reference_change(self.reference(sid))
                if st.kind == "categorical"
                else numeric_reference_change(self.reference(sid))
            )
            if change is not None:
                return [self._split(sid, change, index, at)]
        self._submit(sid)
        if st.future is not None and st.future.done():
            return self._finish(sid)
        return []

    def _judge(
        self,
        windows: list[tuple[int, int, int]],
        values: npt.NDArray[Any],
        index: Ints,
        times: Floats,
        leftover: npt.NDArray[np.bool_],
    ) -> list[DriftAlert]:
        """Test the streams whose window filled: the bank's window, then each further full window
        of values[start:end], in order, until one drifts (what follows it goes round again).
        `windows` holds (stream, start, end); KS windows of large samples are tested together."""
        W, R = self.W, self.R
        alerts = []
        scans = [w for w in windows if self.streams[w[0]].scan]
        if scans:
            alerts += self._scan(scans, values, index, times, leftover)
            windows = [w for w in windows if not self.streams[w[0]].scan]
        # Per stream, its windows: None for the one in the bank, else the start of a slice of values.
        plan = [(sid, [None, *range(start, end - W + 1, W)], start, end) for sid, start, end in windows]
        ks = [p for p in plan if type(self.streams[p[0]].tester) is KSTest and R * W > EXACT_KS_MAX]
        ks_results: dict[int, list[tuple[float, float]]] = {}
        if ks:
            bank = self.banks["numeric"]
            ref_rows = np.repeat(self.bank_row[[p[0] for p in ks]], [len(p[1]) for p in ks])
            tested = [(sid, w) for sid, ws, _, _ in ks for w in ws]
            stats, p_values = np.empty(len(tested)), np.empty(len(tested))
            # In blocks of rows: the temporaries of thousands of windows at once (all 1,000 keys'
            # windows fill together under even traffic) would be fresh pages, 4-5x the arithmetic.
            for i in range(0, len(tested), KS_BLOCK_ROWS):
                block = slice(i, i + KS_BLOCK_ROWS)
                wins = np.stack(
                    [bank[self.bank_row[sid], R:] if w is None else values[w : w + W] for sid, w in tested[block]]
                )
                stats[block], p_values[block] = ks_asymptotic(bank[ref_rows[block], :R], wins)
            k = 0
            for sid, ws, _, _ in ks:
                ks_results[sid] = list(
                    zip(stats[k : k + len(ws)].tolist(), p_values[k : k + len(ws)].tolist(), strict=True)
                )
                k += len(ws)
        for sid, ws, start, end in plan:
            st = self.streams[sid]
            tester: WindowedTest = st.tester
            brow = self.bank_row[sid]
            used = start
            for j, w in enumerate(ws):
                if sid in ks_results:
                    drifted = tester.judged(*ks_results[sid][j])
                else:
                    window = self.banks[st.kind][brow, R:] if w is None else values[w : w + W]
                    drifted = tester.judge(self._counts(st, window) if st.kind == "categorical" else window)
                last = start - 1 if w is None else w + W - 1  # the value that filled this window
                used = last + 1
                if drifted:
                    stat, p = tester.score, tester.p_value
                    self.score[sid] = math.nan if stat is None or not math.isfinite(stat) else stat
                    self.p_value[sid] = math.nan if p is None else p
                    alerts.append(self._detected(sid, int(index[last]), float(times[last]), self.score[sid]))
                    break
            else:
                stat, p = tester.score, tester.p_value
                self.score[sid] = math.nan if stat is None or not math.isfinite(stat) else stat
                self.p_value[sid] = math.nan if p is None else p
                self.fill[sid] = 0
            # The windows tested used values up to `used`; the rest go round again.
            leftover[start:used] = False
            leftover[used:end] = True
        return alerts

    def _scan(
        self,
        windows: list[tuple[int, int, int]],
        values: npt.NDArray[Any],
        index: Ints,
        times: Floats,
        leftover: npt.NDArray[np.bool_],
    ) -> list[DriftAlert]:
        """Scan streams whose look in the bank filled: that look and the further whole looks of
        values[start:end], all streams of a kind in one call of its bank."""
        R, L = self.R, self.look
        alerts = []
        for kind, bank in self.scans.items():
            mine = [w for w in windows if self.streams[w[0]].kind == kind]
            if not mine:
                continue
            sids, start, end = (np.array(c, dtype=np.int64) for c in zip(*mine, strict=True))
            more = (end - start) // L * L
            # Each stream's looks: the one in the bank, then `more` of `values` from its start.
            counts = L + more
            seg = np.repeat(np.arange(len(sids)), counts)
            pos = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
            held = pos < L
            src = (start[seg] + pos - L)[~held]
            looks = np.empty(len(pos), dtype=values.dtype)
            looks[held] = self.banks[kind][self.bank_row[sids[seg[held]]], R + pos[held]]
            looks[~held] = values[src]
            at = np.empty(len(pos), dtype=np.int64)
            at[held], at[~held] = self.window_index[sids[seg[held]]], index[src]
            when = np.empty(len(pos), dtype=np.float64)
            when[held], when[~held] = self.window_time[sids[seg[held]]], times[src]
            if kind == "categorical":
                first = 0
                for sid, n in zip(sids.tolist(), counts.tolist(), strict=True):
                    looks[first : first + n] = self._cells(self.streams[sid], looks[first : first + n])
                    first += n
            slots = self.scan_slot[sids]
            fired = bank.scan(slots, counts, looks, at, when)
            self.score[sids] = bank.evidence[slots]
            self.fill[sids[fired < 0]] = 0
            # The value that completed the look that fired: the one before `start` for the bank's.
            last = np.where(fired < L, start - 1, start + fired - L)
            used = np.where(fired < 0, start + more, last + 1)
            for i, (a, u, b) in enumerate(zip(start.tolist(), used.tolist(), end.tolist(), strict=True)):
                leftover[a:u] = False
                leftover[u:b] = True
                if fired[i] >= 0:
                    sid = int(sids[i])
                    alerts.append(self._detected(sid, int(index[u - 1]), float(times[u - 1]), self.score[sid]))
        return alerts

    def _cells(self, st: Stream, codes: npt.NDArray[Any]) -> Ints:
        """A categorical scan's cell of each of the partition's level codes (levels seen after its
        reference share the rare cell)."""
        names = self.level_names[st.feature or ""]
        if st.lut is None or len(st.lut) < len(names):
            tester: CategoricalScan = st.tester
            known = 0 if st.lut is None else len(st.lut)
            st.lut = np.r_[st.lut if st.lut is not None else np.zeros(0, np.int64), tester.slot_of(names[known:])]
        cells: Ints = st.lut[codes.astype(np.int64)]
        return cells

    def _counts(self, st: Stream, window: npt.NDArray[Any]) -> Floats:
        """A categorical window as counts over the tester's reference levels, OTHER last."""
        assert st.slot_codes is not None
        counts = np.bincount(window, minlength=len(self.level_names[st.feature or ""]))
        slots = counts[st.slot_codes].astype(np.float64)
        out: Floats = np.r_[slots, self.W - slots.sum()]
        return out

    def _split(self, sid: int, change: dict[str, Any], index: int, at: float) -> DriftAlert:
        """A change inside a stream's reference: reported, and the values after it kept as the start
        of the reference (after a margin of SPLIT_EDGE: the estimated split can be early, and a few
        values of the old regime left at the start would be found again)."""
        k = min(self.R, int(change["reference_offset"]) + int(SPLIT_EDGE * self.R))
        st = self.streams[sid]
        bank = self.banks[st.kind]
        brow = self.bank_row[sid]
        bank[brow, : self.R - k] = bank[brow, k : self.R].copy()
        self.fill[sid], self.mirrored[sid] = self.R - k, 0
        self.detections[sid] += 1
        self.last_detection[sid] = self.newest_detection = time.monotonic()
        self.since_index[sid], self.since_time[sid] = index, at
        self.score[sid] = float(change["statistic"] / change["threshold"])
        details = {**change, "change_index": None, "change_timestamp": None}
        target = st.calibration.target_ert if st.calibration is not None else self._target(sid)
        alert = DriftAlert(
            index, None if math.isnan(at) else at, self.keys[st.row], st.name, st.detector,
            float(self.score[sid]), target, details,
        )  # fmt: skip
        self._log(alert)
        return alert

    def _log(self, alert: DriftAlert) -> None:
        log.warning(
            "drift_detected",
            model=alert.key[0],
            version=alert.key[1],
            variant=alert.key[2],
            stream=alert.stream,
            detector=alert.detector,
            index=alert.index,
            event_timestamp=alert.timestamp,
            score=alert.score,
            details=alert.details,
        )

    def _detected(self, sid: int, index: int, at: float, score: float | None) -> DriftAlert:
        st = self.streams[sid]
        now = time.monotonic()
        self.detections[sid] += 1
        self.last_detection[sid] = self.newest_detection = now
        if score is None:
            stat = getattr(st.tester, "score", None)
            score = None if stat is None or not math.isfinite(stat) else float(stat)
        elif math.isnan(score):
            score = None
        assert st.calibration is not None
        finding = getattr(st.tester, "finding", None)
        details = dict(finding) if finding else {"test": st.detector, "statistic": score}
        distribution = st.tester.take_distribution() if st.scan else None
        alert = DriftAlert(
            index, None if math.isnan(at) else at, self.keys[st.row], st.name, st.detector,
            None if score is None else float(score), st.calibration.target_ert, details, distribution,
        )  # fmt: skip
        since = details.get("change_index")
        self.since_index[sid] = index if since is None else since
        since_at = details.get("change_timestamp")
        self.since_time[sid] = at if since_at is None else since_at
        if self.pinned[sid]:
            # A pinned reference stays: the stream holds until its reference is reset.
            self.phase[sid] = DRIFTED
        else:
            # Start over: the values after the detection are the new reference, and the threshold is
            # calibrated on it afresh (a bootstrapped test's null depends on its reference).
            self.phase[sid], self.fill[sid] = COLLECT, 0
            self.mirrored[sid] = 0
            st.tester = None
            st.slot_codes = st.lut = None
        self._log(alert)
        return alert

    def release(self, row: int, name: str) -> None:
        """A feature the key no longer tracks: its stream goes (its column to the next feature)."""
        col = self.feature_names.release(row, name)
        if col is None:
            return
        sid = int(self.feature_stream[row, col])
        self.feature_stream[row, col] = -1
        if sid >= 0:
            st = self.streams[sid]
            self.phase[sid] = RELEASED
            st.tester, st.pending, st.future, st.slot_codes, st.lut = None, [], None, None, None
            if self.scan_slot[sid] >= 0:
                self.scans[st.kind].release(int(self.scan_slot[sid]))
                self.scan_slot[sid] = -1
            self.by_row[row].remove(sid)

    # -- references by API --------------------------------------------------------------------

    def reference_action(self, row: int, stream: str | None, action: Literal["reset", "pin", "unpin"]) -> list[str]:
        """Reset (learn again from the next values), pin or unpin the references of a key's
        streams (all, or the one named). Returns the streams it applied to."""
        done = []
        for sid in self.by_row[row]:
            st = self.streams[sid]
            if stream is not None and st.name != stream:
                continue
            relearn = action == "reset" or (action == "unpin" and self.phase[sid] == DRIFTED)
            if relearn and self.phase[sid] != OFF:
                self.phase[sid], self.fill[sid], self.mirrored[sid] = COLLECT, 0, 0
                st.tester, st.slot_codes, st.lut, st.pending, st.future = None, None, None, [], None
            if action in ("pin", "unpin"):
                self.pinned[sid] = action == "pin"
                if isinstance(st.tester, ScanTest):
                    st.tester.pin(action == "pin")
            done.append(st.name)
        return done

    # -- calibration --------------------------------------------------------------------------

    def _target(self, sid: int) -> float:
        s = self.settings
        st = self.streams[sid]
        if st.name.startswith("feature:") and s.multiple_testing == "bonferroni":
            return float(s.target_ert_events) * max(1, self.feature_names.taken(st.row))
        return float(s.target_ert_events)

    def reference(self, sid: int) -> Any:
        """A copy of a stream's reference in the order it was collected (what calibration resamples):
        level names for a categorical stream, a float (or, for errors, bool) array otherwise."""
        st = self.streams[sid]
        brow = self.bank_row[sid]
        if st.kind == "categorical":
            names = self.level_names[st.feature or ""]
            return [names[c] for c in self.banks["categorical"][brow, : self.R].tolist()]
        ref = self.banks[st.kind][brow, : self.R]
        return ref.astype(np.bool_) if st.kind == "binary" else ref.copy()

    def _submit(self, sid: int, target: float | None = None) -> None:
        st = self.streams[sid]
        st.target = target = self._target(sid) if target is None else target
        st.static = None
        params: dict[str, Any] = {}
        if st.windowed:
            params = {"reference_size": self.R, "window_size": int(self.wlen[sid])}
        name, reference = st.detector, self.reference(sid)
        st.future = self.calibrator.submit(lambda: calibrate(name, reference, target, params=params))
        self.phase[sid] = HOLD
        if not st.future.done():
            st.future.add_done_callback(lambda _f: self._ready.append(sid))

    def _take_ready(self) -> list[DriftAlert]:
        alerts: list[DriftAlert] = []
        while self._ready:
            sid = self._ready.popleft()
            st = self.streams[sid]
            if self.phase[sid] == HOLD and st.future is not None and st.future.done():
                alerts += self._finish(sid)
        return alerts

    def _finish(self, sid: int) -> list[DriftAlert]:
        """Build the detector from a finished calibration, then test what was held meanwhile."""
        st = self.streams[sid]
        assert st.future is not None
        future, st.future = st.future, None
        try:
            cal = future.result()
        except Exception as exc:
            # A reference a detector cannot learn from (a constant stream, no errors at all), or
            # a bug: this stream stays unmonitored, and says why; ingestion goes on.
            self.phase[sid], st.error = OFF, f"{type(exc).__name__}: {exc}"
            st.pending = []
            log.info("drift_stream_not_monitored", stream=st.name, detector=st.detector, reason=st.error)
            return []
        st.calibration = cal
        st.static = None
        self._activate(sid)
        self.since_index[sid], self.since_time[sid] = -1, math.nan  # a new reference: no longer drifted
        pending, st.pending = st.pending, []
        if not pending:
            return []
        values = np.concatenate([p[0] for p in pending])
        index = np.concatenate([p[1] for p in pending])
        times = np.concatenate([p[2] for p in pending])
        sids = np.full(len(values), sid, dtype=np.int64)
        return self._place(sids, values, index, times, st.kind)

    def _activate(self, sid: int) -> None:
        """The calibrated detector, with this stream's reference (a window test's, a River one's warm-up)."""
        st = self.streams[sid]
        assert st.calibration is not None
        tester = st.calibration.build()
        brow = self.bank_row[sid]
        if isinstance(tester, ScanTest):
            if self.scan_slot[sid] < 0:
                self.scan_slot[sid] = self.scans[st.kind].add()
            tester.bind(self.scans[st.kind], int(self.scan_slot[sid]))
        if isinstance(tester, WindowedTest):
            if isinstance(tester, CategoricalScan):
                tester.prepare(self.reference(sid))
                st.lut = None
            elif isinstance(tester, CategoricalTest):
                tester.prepare(self.reference(sid))
                table = self.levels[st.feature or ""]
                st.slot_codes = np.array([table[level] for level in tester.levels], dtype=np.int64)
            else:
                tester.prepare(self.banks[st.kind][brow, : self.R])
            tester.prepared = True
            if isinstance(tester, ScanTest) and self.pinned[sid]:
                tester.pin(True)
            self.phase[sid] = WINDOW
        else:
            tester.update_many(self.reference(sid))
            self.phase[sid] = SEQUENTIAL
        st.tester = tester
        self.fill[sid] = 0
        self.score[sid] = self.p_value[sid] = math.nan
        self.mirrored[sid] = 0  # prepare() sorted the reference in place

    # -- reading ------------------------------------------------------------------------------

    def state(self, sid: int) -> StreamState:
        return _STATE_OF_PHASE[int(self.phase[sid])]

    def states(self, row: int | None = None) -> dict[str, int]:
        """Streams by state, of one key row or of all."""
        phases = self.phase[: len(self.streams)] if row is None else self.phase[self.by_row[row]]
        counts = np.bincount(phases, minlength=PHASES)
        return {
            "reference": int(counts[COLLECT]),
            "calibrating": int(counts[HOLD]),
            "active": int(counts[WINDOW] + counts[SEQUENTIAL]),
            "failed": int(counts[OFF]),
            "drifted": int(counts[DRIFTED]),
        }

    def drifted_since(self, row: int) -> dict[str, dict[str, Any]]:
        """A key's streams that are drifted: since which input index and time."""
        return {
            self.streams[sid].name: {
                "index": int(self.since_index[sid]),
                "timestamp": None if math.isnan(self.since_time[sid]) else float(self.since_time[sid]),
            }
            for sid in self.by_row[row]
            if self.since_index[sid] >= 0
        }

    def detections_of(self, row: int) -> dict[str, int]:
        return {self.streams[sid].name: int(self.detections[sid]) for sid in self.by_row[row] if self.detections[sid]}

    # -- checkpoints --------------------------------------------------------------------------

    def snapshot(self, fresh: bool = False) -> dict[str, Any]:
        """The state, consistent as of now: what the loop does for a checkpoint, so it copies little.

        The arrays are copied; windows into the buffer the previous snapshot used. References are
        not: they change only while collected and once when prepared, so the mirror (`mirrors`)
        gets what changed since the last snapshot, and is shared. The caller guarantees that no
        earlier snapshot is still being read when it takes the next (the handover writes one
        checkpoint at a time), or asks for `fresh` copies. A stream still calibrating is stored
        with its reference: a restore calibrates again (deterministically). Detection times are
        stored as ages (monotonic clocks do not cross processes).
        """
        n = len(self.streams)
        now = time.monotonic()
        banks: dict[str, Any] = {}
        for name, bank in self.banks.items():
            rows = self.bank_rows[name]
            if fresh:
                banks[f"{name}_windows"] = bank[:rows, self.R :].copy()
                banks[f"{name}_references"] = bank[:rows, : self.R].copy()
            else:
                banks[f"{name}_windows"] = self._windows(name, rows)
                # Shared, and encoded only where it changed since the last checkpoint.
                banks[f"{name}_references"] = codec.chunked(self._mirror(name)[:rows], self.mirror_encoded[name])
        return {
            "streams": [st.static or _static(st) for st in self.streams],
            "extra": {sid: e for sid, st in enumerate(self.streams) if (e := _extra(st))},
            "phase": self.phase[:n].copy(),
            "fill": self.fill[:n].copy(),
            "detections": self.detections[:n].copy(),
            "last_detection_age": now - self.last_detection[:n],
            "score": self.score[:n].copy(),
            "p_value": self.p_value[:n].copy(),
            "bank_row": self.bank_row[:n].copy(),
            # Only a window holding values has a first one (an empty one's are stale: whether the
            # last looks went through the bank depends on where batches were cut).
            "window_index": np.where(self.fill[:n] > 0, self.window_index[:n], -1),
            "window_time": np.where(self.fill[:n] > 0, self.window_time[:n], math.nan),
            "since_index": self.since_index[:n].copy(),
            "since_time": self.since_time[:n].copy(),
            "pinned": self.pinned[:n].copy(),
            **banks,
            # Scan streams' state: their banks' arrays, and each stream's slot in them.
            "scan_slot": self.scan_slot[:n].copy(),
            "scans": {
                kind: bank.copy(None if fresh else self.scan_copies.setdefault(kind, {}))
                for kind, bank in self.scans.items()
            },
            "fixed": self.fixed[: self.rows].copy(),
            "feature_names": [list(x) for x in self.feature_names.names],
            "feature_stream": self.feature_stream[: self.rows].copy(),
            "levels": {feature: list(names) for feature, names in self.level_names.items()},
            "reference_events": self.R,
            "window_events": self.W,
        }

    def _mirror(self, bank: str) -> npt.NDArray[Any]:
        """The references of `bank`'s rows, brought up to date where they changed."""
        live = self.banks[bank]
        mirror = self.mirrors.get(bank)
        if mirror is None or len(mirror) < len(live):
            grown_mirror = np.zeros((len(live), self.R), dtype=live.dtype)
            if mirror is not None:
                grown_mirror[: len(mirror)] = mirror
            mirror = self.mirrors[bank] = grown_mirror
        n = len(self.streams)
        mine = self.kind_code[:n] == KINDS.index(bank)
        # A reference being collected holds its first `fill` values; any other, all R.
        held = np.where(self.phase[:n] == COLLECT, self.fill[:n], self.R)
        stale = np.flatnonzero(mine & (self.mirrored[:n] < held))
        if len(stale):
            # What was appended since: one block of columns over those rows, from the least mirrored
            # to the most held (references grow alike under even traffic). A row the mirror holds
            # nothing of is copied whole (what lies past a reference being collected, zeros or the
            # previous one, included): the mirror stays equal to the bank.
            first = self.mirrored[stale]
            lo = int(first.min())
            hi = self.R if lo == 0 else int(held[stale].max())
            rows = self.bank_row[stale]
            used = self.bank_rows[bank]
            if 2 * len(rows) > used:  # most rows (references filling or prepared together): all of them
                np.copyto(mirror[:used, lo:hi], live[:used, lo:hi])
            else:  # in chunks: a gather's temporary of many rows would be fresh pages
                for i in range(0, len(rows), MIRROR_CHUNK):
                    chunk = rows[i : i + MIRROR_CHUNK]
                    mirror[chunk, lo:hi] = live[chunk, lo:hi]
            self.mirrored[stale] = held[stale]
            encoded = self.mirror_encoded[bank]
            for c in np.unique(rows // codec.CHUNK_ROWS):
                if c < len(encoded):
                    encoded[c] = None
        return mirror

    def _windows(self, bank: str, rows: int) -> npt.NDArray[Any]:
        """`bank`'s windows copied into the buffer the last snapshot used (allocating 40 MB afresh
        at 1,000 keys would fault in every page of it on the loop, each time)."""
        buffer = self.window_copies.get(bank)
        if buffer is None or len(buffer) < rows:
            live = self.banks[bank]
            buffer = self.window_copies[bank] = np.empty((len(live), live.shape[1] - self.R), live.dtype)
        np.copyto(buffer[:rows], self.banks[bank][:rows, self.R :])
        return buffer[:rows]

    def restore(self, state: dict[str, Any]) -> None:
        """Take a snapshot into this drift, whose rows (the keys) are added already and empty."""
        if self.streams:
            raise ValueError("drift state restores into an empty partition only")
        if (state["reference_events"], state["window_events"]) != (self.R, self.W):
            raise ValueError(
                f"the checkpoint's drift streams have references of {state['reference_events']} and windows of "
                f"{state['window_events']} values, this config {self.R} and {self.W} (drift.reference_events, "
                "window_events changed): set them back, or start afresh"
            )
        s = self.settings
        configured = {"numeric": s.numeric_detector, "categorical": s.categorical_detector, "binary": s.error_detector}
        for st_state in state["streams"]:
            if st_state["detector"] not in DETECTORS:
                raise ValueError(f"drift stream {st_state['name']!r} uses an unknown detector {st_state['detector']!r}")
            if configured.get(st_state["kind"], st_state["detector"]) != st_state["detector"]:
                raise ValueError(
                    f"the checkpoint's drift stream {st_state['name']!r} runs {st_state['detector']!r}, this config "
                    f"{configured[st_state['kind']]!r} (the drift.*_detector for {st_state['kind']} streams changed): "
                    "set it back, or start afresh"
                )
        self.level_names = {f: list(names) for f, names in state["levels"].items()}
        self.levels = {f: {name: i for i, name in enumerate(names)} for f, names in self.level_names.items()}
        for row, names in enumerate(state["feature_names"]):
            self.feature_names.restore_row(row, names)
        # A checkpoint from before the LLM streams has fewer columns: theirs are empty.
        self.fixed[: self.rows, : state["fixed"].shape[1]] = state["fixed"]
        k = min(state["feature_stream"].shape[1], self.feature_stream.shape[1])
        self.feature_stream[: self.rows, :k] = state["feature_stream"][:, :k]
        state = _errors_apart(state)
        for bank in KINDS:
            rows = len(state[f"{bank}_windows"])
            self._grow_bank(bank, max(rows, 64))
            self.banks[bank][:rows, : self.R] = state[f"{bank}_references"]
            # A window holds what its stream's test takes (a checkpoint's may be wider: a look used
            # the start of a window before a bank's rows were as narrow as their tests need).
            width = self.banks[bank].shape[1] - self.R
            self.banks[bank][:rows, self.R :] = state[f"{bank}_windows"][:, :width]
            self.bank_rows[bank] = rows
        n = len(state["streams"])
        cap = max(n, 64)
        self.phase, self.fill = state["phase"].astype(np.int8), state["fill"].astype(np.int64)
        self.detections = state["detections"].astype(np.int64)
        self.last_detection = time.monotonic() - state["last_detection_age"]
        self.score = state["score"].astype(np.float64)
        self.p_value = state["p_value"].astype(np.float64)
        self.bank_row = state["bank_row"].astype(np.int64)
        for name in ("phase", "fill", "detections", "last_detection", "score", "p_value", "bank_row"):
            nan = name in ("last_detection", "score", "p_value")
            setattr(self, name, grown(getattr(self, name), cap, math.nan if nan else 0))
        self.mirrored = np.zeros(cap, dtype=np.int64)
        self.kind_code = np.zeros(cap, dtype=np.int8)
        self.wlen = np.full(cap, self.W, dtype=np.int64)
        self.window_index = grown(np.asarray(state.get("window_index", np.full(n, -1)), dtype=np.int64), cap, -1)
        self.window_time = grown(np.asarray(state.get("window_time", np.full(n, math.nan)), np.float64), cap, math.nan)
        self.since_index = grown(np.asarray(state.get("since_index", np.full(n, -1)), dtype=np.int64), cap, -1)
        self.since_time = grown(np.asarray(state.get("since_time", np.full(n, math.nan)), np.float64), cap, math.nan)
        self.pinned = grown(np.asarray(state.get("pinned", np.zeros(n, np.bool_)), dtype=np.bool_), cap, False)
        # Each scan stream keeps its slot: the banks come back as they were, free slots included.
        self.scan_slot = grown(np.asarray(state.get("scan_slot", np.full(n, -1)), dtype=np.int64), cap, -1)
        scans = state.get("scans", {})
        for kind, scan_bank in self.scans.items():
            if kind in scans:
                mine = np.array([static["kind"] == "categorical" for static in state["streams"]]) == (
                    kind == "categorical"
                )
                scan_bank.reserve(len(scans[kind]["looks"]), self.scan_slot[:n][mine[:n] & (self.scan_slot[:n] >= 0)])
        if np.any(~np.isnan(self.last_detection[:n])):
            self.newest_detection = float(np.nanmax(self.last_detection[:n]))
        extras = state["extra"]
        for sid, static in enumerate(state["streams"]):
            st_state = {**static, **_NO_EXTRA, **extras.get(sid, {})}
            st = _stream_from(st_state)
            self.streams.append(st)
            self.kind_code[sid] = KINDS.index(st.kind)
            self.wlen[sid] = self.look if st.scan else self.W
            if self.phase[sid] != RELEASED:
                self.by_row[st.row].append(sid)
            phase = int(self.phase[sid])
            if phase in (WINDOW, SEQUENTIAL, DRIFTED):
                if st.calibration is None:
                    raise ValueError(f"drift stream {st.name!r} is active but its checkpoint lacks its calibration")
                self._activate(sid)
                self.phase[sid] = phase  # a held (DRIFTED) stream keeps holding
                self.fill[sid] = state["fill"][sid]
                self.score[sid], self.p_value[sid] = state["score"][sid], state["p_value"][sid]
                if phase in (WINDOW, DRIFTED) and isinstance(st.tester, WindowedTest):
                    score, p = self.score[sid], self.p_value[sid]
                    st.tester.restore_judged_state(
                        {
                            "score": None if math.isnan(score) else float(score),
                            "p_value": None if math.isnan(p) else float(p),
                            **(st_state["tester"] or {}),
                        }
                    )
                else:
                    st.tester.restore(st_state["tester"])
                if isinstance(st.tester, ScanTest) and self.pinned[sid]:
                    st.tester.pin(True)
            elif phase == HOLD:
                if st.target is None:
                    raise ValueError(f"drift stream {st.name!r} is calibrating but its checkpoint lacks the target")
                self._submit(sid, st.target)
                if st.future is not None and st.future.done():
                    self._ready.append(sid)
        for kind, kept in scans.items():
            self.scans[kind].restore(np.arange(self.scans[kind].slots), kept)
        # The checkpoint's references are the mirror: equal to the banks (a prepared reference was
        # stored sorted, and sorting it again changed nothing), so the next snapshot copies none.
        self.mirrors = {b: np.array(state[f"{b}_references"], dtype=self.banks[b].dtype) for b in self.banks}
        self.mirrored[:n] = np.where(self.phase[:n] == COLLECT, self.fill[:n], self.R)


def _errors_apart(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint that kept the errors streams' rows among the numeric bank's, with a bank of
    their own (rows in the order the streams came, as a new drift gives them)."""
    if "binary_windows" in state:
        return state
    kinds = np.array([st["kind"] for st in state["streams"]])
    numeric, binary = np.flatnonzero(kinds == "numeric"), np.flatnonzero(kinds == "binary")
    rows = state["bank_row"][binary]
    keep = np.setdiff1d(np.arange(len(state["numeric_windows"])), rows)
    renumbered = np.full(len(state["numeric_windows"]), -1, dtype=np.int64)
    renumbered[keep] = np.arange(len(keep))
    bank_row = state["bank_row"].copy()
    bank_row[numeric] = renumbered[bank_row[numeric]]
    bank_row[binary] = np.arange(len(binary))
    return {
        **state,
        "bank_row": bank_row,
        "numeric_references": state["numeric_references"][keep],
        "numeric_windows": state["numeric_windows"][keep],
        "binary_references": state["numeric_references"][rows],
        "binary_windows": state["numeric_windows"][rows],
    }


def _static(st: Stream) -> dict[str, Any]:
    """A stream's snapshot parts that change only with its calibration (cached on the stream)."""
    cal = st.calibration
    st.static = {
        "name": st.name,
        "kind": st.kind,
        "detector": st.detector,
        "row": st.row,
        "feature": st.feature,
        "calibration": None
        if cal is None
        else {
            "name": cal.name,
            "params": dict(cal.params),
            "target_ert": cal.target_ert,
            "estimated_ert": cal.estimated_ert,
            "method": cal.method,
            "simulated_events": cal.simulated_events,
            "points": [list(p) for p in cal.points],
        },
        "target": st.target,
    }
    return st.static


# What `_extra` leaves out of a snapshot: the usual stream has none of it.
_NO_EXTRA: dict[str, Any] = {"tester": None, "pending": None, "skipped": 0, "error": None}


def _extra(st: Stream) -> dict[str, Any]:
    """The rest of a stream's state, for the few streams that have any: a River detector's state,
    an error-rate test's absorbed windows, values held while calibrating, skipped values, an error.
    (A window test's score and p-value are arrays of the drift.)"""
    out: dict[str, Any] = {}
    tester = st.tester
    if tester is not None:
        if not isinstance(tester, WindowedTest):
            out["tester"] = tester.snapshot()
        elif isinstance(tester, ErrorRateTest):
            out["tester"] = {"absorbed": list(tester.absorbed)}
    if st.pending:
        out["pending"] = [
            np.concatenate([p[0] for p in st.pending]),
            np.concatenate([p[1] for p in st.pending]),
            np.concatenate([p[2] for p in st.pending]),
        ]
    if st.skipped:
        out["skipped"] = st.skipped
    if st.error is not None:
        out["error"] = st.error
    return out


def _stream_from(state: dict[str, Any]) -> Stream:
    kind = state["kind"]
    if kind not in ("numeric", "categorical", "binary"):
        raise ValueError(f"drift stream {state['name']!r} has an unknown kind {kind!r}")
    if state["detector"] not in DETECTORS:
        raise ValueError(f"drift stream {state['name']!r} uses an unknown detector {state['detector']!r}")
    st = Stream(str(state["name"]), kind, str(state["detector"]), int(state["row"]), state["feature"])
    cal = state["calibration"]
    if cal is not None:
        st.calibration = Calibration(
            name=cal["name"],
            params=dict(cal["params"]),
            target_ert=float(cal["target_ert"]),
            estimated_ert=float(cal["estimated_ert"]),
            method=cal["method"],
            simulated_events=int(cal["simulated_events"]),
            points=[(float(v), float(arl), int(n)) for v, arl, n in cal["points"]],
        )
    st.target = None if state["target"] is None else float(state["target"])
    if state["pending"] is not None:
        values, index, times = state["pending"]
        st.pending = [(values, index.astype(np.int64), times.astype(np.float64))]
    st.skipped, st.error = int(state["skipped"]), state["error"]
    return st


# -- the exposition: a copy under the lock, samples outside it ---------------------------------


@dataclass(slots=True)
class DriftCopy:
    rows: Ints  # each stream's key row
    labels: list[str]  # each stream's `stream="...",detector="..."`
    phase: npt.NDArray[np.int8]
    detections: Ints
    last_detection: Floats
    score: Floats
    since_index: Ints


def copy(d: Drift) -> DriftCopy:
    """What the drift families show, copied (call under the pipeline's lock)."""
    n = len(d.streams)
    if len(d.stream_labels) != n:
        d.stream_labels += [
            f'stream="{escape(st.name)}",detector="{st.detector}"' for st in d.streams[len(d.stream_labels) :]
        ]
    return DriftCopy(
        np.array([st.row for st in d.streams], dtype=np.int64) if n else np.zeros(0, dtype=np.int64),
        d.stream_labels[:n],
        d.phase[:n].copy(),
        d.detections[:n].copy(),
        d.last_detection[:n].copy(),
        d.score[:n].copy(),
        d.since_index[:n].copy(),
    )


def collect(c: DriftCopy, key_sets: Sequence[str | None], hold_s: float, now: float, out: Sink) -> None:
    """Streams that are active, or re-learning their reference after a detection (still held);
    `key_sets[row]` is None for a key another partition shows."""
    shown = (
        ((c.phase == WINDOW) | (c.phase == SEQUENTIAL) | (c.detections > 0))
        & (c.phase != RELEASED)
        & np.array([key_sets[r] is not None for r in c.rows.tolist()], dtype=np.bool_)
    )
    idx = np.flatnonzero(shown).tolist()
    if not idx:
        return
    sets = [f"{key_sets[c.rows[i]]},{c.labels[i]}" for i in idx]
    scored = [k for k, i in enumerate(idx) if not math.isnan(c.score[i])]
    out.samples("inferwatch_drift_score", [sets[k] for k in scored], c.score[[idx[k] for k in scored]].tolist())
    # 1 while drifted (until a new reference is learned from data after the change) and for
    # hold_s after the detection. NaN (never) compares False.
    held = ((now - c.last_detection[idx]) < hold_s) | (c.since_index[idx] >= 0)
    out.samples("inferwatch_drift_detected", sets, held.astype(np.int64).tolist())
    out.samples("inferwatch_drift_events", sets, c.detections[idx].tolist())


def state_counts(c: DriftCopy) -> Ints:
    """Streams by phase (index: COLLECT, WINDOW, HOLD, SEQUENTIAL, OFF, DRIFTED)."""
    return np.bincount(c.phase, minlength=PHASES)


def reference_values(batch: Batch, settings: DriftConfig, max_features: int) -> dict[Key, dict[str, list[Any]]]:
    """Each key's stream values in `batch`, as its streams would take them: a reference file's."""
    out: dict[Key, dict[str, list[Any]]] = {}
    watch = settings.streams
    for k, key in enumerate(batch.keys):
        idx = np.flatnonzero(batch.key == k)
        streams: dict[str, list[Any]] = {}
        for name, column in NUMERIC_FIXED.items():
            if name in watch:
                v = getattr(batch, column)[idx]
                streams[name] = v[~np.isnan(v)].tolist()
        if "finish_reason" in watch:
            reasons = batch.finish_reason[idx]
            streams["finish_reason"] = [batch.finish_reasons[c] for c in reasons[reasons >= 0].tolist()]
        if "features" in watch:
            for f in batch.features:
                if sum(n.startswith("feature:") for n in streams) >= max_features:
                    break
                codes = f.codes[idx] if f.codes is not None else None
                num = f.num[idx] if f.num is not None else None
                usable = np.flatnonzero(
                    (codes >= 0 if codes is not None else False) | (~np.isnan(num) if num is not None else False)
                )
                if not len(usable):
                    continue
                if codes is not None and codes[usable[0]] >= 0:
                    streams[f"feature:{f.name}"] = [f.levels[c] for c in codes[codes >= 0].tolist()]
                else:
                    assert num is not None
                    streams[f"feature:{f.name}"] = num[~np.isnan(num)].tolist()
        out[key] = streams
    return out
