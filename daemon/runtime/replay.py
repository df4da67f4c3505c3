"""`inferwatch replay`: the daemon's pipeline over a JSONL file, ending in a JSON report.

With `labels`, a JSONL file of label events is fed beside the events, in file order (the
order a labels topic would deliver them): each label once the events' time has reached its
timestamp, labels without one after the last event. The join's clock is event time (past the
last event, the labels' time), so TTLs mean the same as in the daemon, to within one batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from daemon.config import Config
from daemon.ingest.decode import DecodeFailure, LabelRecord
from daemon.ingest.events import event_time
from daemon.ingest.sources import JsonlSource, RecordsSource
from daemon.monitors.drift import DriftAlert
from daemon.pipeline import Pipeline
from daemon.report.series import MAX_POINTS, SeriesRecorder
from daemon.runtime.app import build_pipeline


def replay(path: str | Path, config: Config, labels: str | Path | None = None, records: bool = False) -> dict[str, Any]:
    """Run the file through the pipeline; return the report (docs/replay-report.md).
    `records`: the file holds whole Kafka records, not values (daemon.ingest.sources.RecordLine)."""
    return replay_state(path, config, labels, records)[0]


def replay_state(
    path: str | Path,
    config: Config,
    labels: str | Path | None = None,
    records: bool = False,
    series_points: int = MAX_POINTS,
) -> tuple[dict[str, Any], Pipeline]:
    """`replay()`'s report and the pipeline it leaves (its state, for /metrics in tests); the
    report's series have at most `series_points` points."""
    alerts: list[DriftAlert] = []
    canary: list[dict[str, Any]] = []
    pipeline = build_pipeline(
        config, join_labels=labels is not None, alert_sink=alerts.extend, canary_sink=canary.extend
    )
    feed = _LabelFeed(pipeline, labels) if labels is not None else None
    source = (RecordsSource if records else JsonlSource)(path, batch_size=config.source.kafka.max_poll_records)
    series = SeriesRecorder(pipeline, series_points)
    try:
        while not source.exhausted:
            pipeline.process(source.poll())
            if feed is not None:
                feed.until(pipeline.watermark)
            series.after_batch()
        if feed is not None:
            feed.until(None)
        series.finish()
    finally:
        source.close()
    summary = pipeline.summary()
    totals = pipeline.totals()
    report: dict[str, Any] = {
        "events": sum(row["events"] for row in summary),
        "invalid": totals.invalid_records,
        "invalid_by_reason": {r: n for r, n in totals.invalid.items() if n},
        "out_of_range": {f: n for f, n in totals.out_of_range.items() if n},
        "alerts": [a.report() for a in sorted(alerts, key=lambda a: a.index)],
        "canary": sorted(canary, key=lambda e: e["index"]),
        "canary_final": pipeline.canary_report()["models"],  # type: ignore[index]
        "summary": summary,
        "series": series.report(),
    }
    if feed is not None:
        report["labels"] = {**totals.labels, "invalid": feed.invalid}
    return report, pipeline


class _LabelFeed:
    """Label events from a JSONL file, handed to the pipeline as event time passes them."""

    def __init__(self, pipeline: Pipeline, path: str | Path) -> None:
        self._pipeline = pipeline
        # Event time: the events' watermark, or past the last event the labels' own time.
        self._label_time = 0.0
        join = pipeline.partition(0).join  # a file is one partition
        assert join is not None
        join.clock = lambda: max(pipeline.watermark, self._label_time)
        self._records = self._read(Path(path))
        self._next: LabelRecord | None = next(self._records, None)
        self.invalid = 0

    def _read(self, path: Path) -> Iterator[LabelRecord]:
        decode = self._pipeline.decoder.labels.decode
        with path.open("rb") as f:
            for line in f:
                label = decode(line.rstrip(b"\r\n"))
                if isinstance(label, DecodeFailure):
                    self.invalid += 1
                    continue
                ts = label.timestamp
                yield label.request_id, label.model, label.label, event_time(ts, None)

    def until(self, watermark: float | None) -> None:
        """Feed the labels up to `watermark` (event time); None: all that are left."""
        batch: list[LabelRecord] = []
        while self._next is not None:
            ts = self._next[3]
            if watermark is not None and (ts is None or ts > watermark):
                break
            if ts is not None and ts > max(self._pipeline.watermark, self._label_time):
                # Past the events' time the clock follows the labels: flush so it moves in step.
                if batch:
                    self._pipeline.add_labels(batch)
                    batch = []
                self._label_time = ts
            batch.append(self._next)
            self._next = next(self._records, None)
            if len(batch) >= 2000:
                self._pipeline.add_labels(batch)
                batch = []
        if batch:
            self._pipeline.add_labels(batch)
