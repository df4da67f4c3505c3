"""`inferwatch replay`: the daemon's pipeline over a JSONL file, ending in a JSON report."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from daemon.app import build_pipeline
from daemon.config import Config
from daemon.sources import JsonlSource


def replay(path: str | Path, config: Config) -> dict[str, Any]:
    """Run the file through the pipeline; return the report (architecture.md, Replay report)."""
    pipeline = build_pipeline(config)
    source = JsonlSource(path, batch_size=config.source.kafka.max_poll_records)
    try:
        while not source.exhausted:
            pipeline.process(source.poll())
    finally:
        source.close()
    summary = [asdict(s.summary(k)) for k, s in pipeline.keys.items()]
    return {
        "events": sum(row["events"] for row in summary),
        "invalid": pipeline.invalid.total,
        "invalid_by_reason": {r: n for r, n in pipeline.invalid.counts.items() if n},
        "alerts": [],
        "canary": [],
        "summary": summary,
    }
