"""Same answers: a seeded replay with drift, labels, a canary and invalid records, against the
report and /metrics recorded before the columnar core (tests/golden/*.json).

`INFERWATCH_GOLDEN_UPDATE=1 pytest tests/unit/test_golden.py` rewrites the recordings; a change
to them needs a reason, here and in the commit.

Changed on purpose since the recording before the columnar core (ecca19d):
- the canary timeline and the canary gauges: comparisons are read every `canary.look_every_requests`
  requests of the model instead of at the end of each poll, so verdicts no longer depend on where
  polls cut the stream. Same verdicts in the same order (inconclusive, then fail on latency_tail);
  the entries name the request of the look (138 and 22394, before 1998 and 21999, the ends of
  the polls), and the gauges show the figures of the last look. A baseline named control/baseline/
  stable/primary is one from its first request (before: from the first look), so the tail
  threshold learns from slightly earlier baseline requests; and only the requests after the one
  that completes the threshold count exceedances (before: the whole poll that completed it).
- `inferwatch_cardinality_overflow_total{dimension="feature_level"}`: a new dimension (levels of a
  categorical feature past drift's per-feature cap), 0 here.
Changed on purpose by issue 14:
- `inferwatch_events_invalid_total` and `inferwatch_labels_total` carry a `partition` label (the
  counts are the partitions' and move with them); same values.
- new: `inferwatch_values_out_of_range_total{field,partition}` (0 here), and the report's
  `out_of_range` ({} here).
Changed on purpose by issue 15:
- the default drift detectors are the scans (`scan`, `scan_categorical`): the same five drift
  alerts on the same streams and variants, each earlier (latency 20264 instead of 21188; the
  `amount` shift from event 26,000 at 26092-26286 instead of 26825-28179), with `details` (the
  test, statistic, threshold, estimated change point and size); `inferwatch_drift_score` is the
  scan's evidence (statistic over threshold) and its `detector` label reads `scan`.
- a fifth stream state, `drifted` (pinned references after a detection; 0 here), in
  `inferwatch_drift_streams` and the report's summary; the summary's `drifted_since` per stream.
- features are tracked from their 10th event (`limits.feature_admission_events`): the same five
  alerts, the `amount` ones now at 26109-26286, and the drift scores of the last looks differ;
  `note` (canary) misses 376 values, not 377: one of the nine events before it was tracked had it null.
- new: `inferwatch_model_performance_samples` (1,000 labelled predictions in each window here, over
  `accuracy.min_samples`, so every figure is still shown).
- the scans keep sums of normal scores in fixed point (1/65,536: exact under any order of
  additions, so their windows are kept by adding and subtracting looks): the same alerts at the
  same events, statistics and scores differ from the 7th significant digit. A window's mean and
  sd (and their shift and ratio to the reference's) come from float32 sums per look, to six
  significant digits.
Changed on purpose by issue 16:
- drift streams of their own for TTFT and the prompt and output lengths (`ttft`,
  `prompt_tokens`, `output_tokens`) where events carry them: `ranker`'s two token counts are
  watched (2 more active streams; no alert).
- LLM histograms (time per output token, queue and decode time, prompt and output length,
  output tokens per second) for the keys with those values: `ranker`'s lengths, and its tokens
  per second derived from its latency; `inferwatch_values_out_of_range_total` lists the new
  timing fields (`tpot_ms`, `queue_ms`, `decode_ms`; 0 here).
The report's counts and summary, and every other sample, are unchanged.
Changed on purpose by issue 16:
- the canary's tail tests read the requests past the baseline's p99 (was: the share over its
  p95): how far past it they go (`latency_tail`) and their share (`latency_tail_share`); the
  canary (about 6% slower) now fails at 24567 (was 22394) on the share past the p99, 1% → 2.3%;
  a fail scores 0 (it scored 70, above the templates' pass line); a `goodput` metric (the share
  of requests within the model's SLOs).
- the latency and TTFT histograms' default buckets are 1-2-5 steps from 1 ms to 10 min (were
  5 ms to 10 s, TTFT 25 ms to 10 s): other `le` labels, the same counts and sums.
- new: `inferwatch_slo_requests_total`, `inferwatch_slo_good_requests_total` (per key: latency and
  goodput against the default objectives, 250 ms and 99%) and `inferwatch_slo_objective`.
  Confidence bounds are the running intersection of the looks' intervals (narrower bounds);
  new: `inferwatch_canary_quantile_effect` (and `_lower`, `_upper`) for the latency's p50, p90,
  p99 (label `percentile`).
- labels from the labels file count towards the canary's accuracy by event time (a prediction
  once its model is `canary.label_wait_seconds`, 300 s, past it), not as they arrive: the last
  look reads the labels of the first 100 s only, so accuracy's lower bound and p-value differ
  (-0.0734 and 0.968, were -0.0741 and 1.0); the verdicts are the same.
Changed on purpose by issue 17:
- three new reasons of `inferwatch_events_invalid_total`, `bad_shape`, `unmatched` and
  `malformed_protobuf` (other log formats' tensors, request/response pairs and protobuf
  messages), 0 here.
Changed on purpose by issue 18 (the report grows; nothing recorded before changed):
- new: the report's `series` (per key and per canary comparison, over event time; see
  docs/replay-report.md), `canary_final` (the /v1/canary body at the end, which docs/operations.md
  said the report showed), and each alert's `distribution` (the reference's and the detecting
  window's shares).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.config import from_mapping
from daemon.export.exposition import LoopStats, MetricsExposition
from daemon.runtime.replay import replay_state
from tests.golden import stream

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE = os.environ.get("INFERWATCH_GOLDEN_UPDATE") == "1"
# Families that depend on the machine or the clock, not on the stream.
VOLATILE = {"inferwatch_build_info", "inferwatch_batch_duration_seconds"}


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, float]]:
    d = tmp_path_factory.mktemp("golden")
    events, labels = d / "events.jsonl", d / "labels.jsonl"
    stream.write(events, labels)
    config = from_mapping({"labels": {"ttl_seconds": 600}})
    report, pipeline = replay_state(events, config, labels)
    loop = LoopStats.idle()
    text = MetricsExposition(pipeline, config.metrics, lambda: loop).render().decode()
    samples = {
        f"{s.name}{json.dumps(dict(sorted(s.labels.items())))}": s.value
        for fam in text_string_to_metric_families(text)
        if fam.name not in VOLATILE
        for s in fam.samples
    }
    return json.loads(json.dumps(report)), samples


def _close(a: Any, b: Any, where: str) -> list[str]:
    """Differences between two JSON values; floats equal to 1e-9 relative (sums in another order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}: key {k!r} only in {'recorded' if k in a else 'new'}" for k in set(a) ^ set(b)]
        for k in sorted(set(a) & set(b), key=str):
            out += _close(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} recorded items, {len(b)} now"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _close(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, int | float) and not isinstance(b, bool):
        if math.isnan(a) and math.isnan(b):
            return []
        if a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
            return []
    elif a == b and type(a) is type(b):
        return []
    return [f"{where}: recorded {a!r}, now {b!r}"]


def _check(name: str, now: Any) -> None:
    path = GOLDEN / f"{name}.json"
    if UPDATE:
        path.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    recorded = json.loads(path.read_text())
    diffs = _close(recorded, now, name)
    assert not diffs, f"{len(diffs)} differences, first ones:\n" + "\n".join(diffs[:20])


def test_report_counts_alerts_and_summary_are_unchanged(golden_run: tuple[dict[str, Any], dict[str, float]]) -> None:
    report, _ = golden_run
    assert report["alerts"], "the stream must raise drift alerts"
    assert any(e["verdict"] == "fail" for e in report["canary"]), "the slow canary must fail"
    _check("report", {k: v for k, v in report.items() if k != "canary"})


def test_canary_timeline_is_unchanged(golden_run: tuple[dict[str, Any], dict[str, float]]) -> None:
    _check("canary", golden_run[0]["canary"])


def test_metrics_text_is_unchanged(golden_run: tuple[dict[str, Any], dict[str, float]]) -> None:
    _check("metrics", golden_run[1])
