from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.config import from_mapping
from daemon.export.exposition import BATCH_BUCKETS, FAMILIES, LoopStats, MetricsExposition
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.monitors.traffic import Histograms
from daemon.runtime.app import Daemon, build_pipeline
from tests.integration.support import parse, total

ROOT = Path(__file__).resolve().parents[2]


def _record(i: int, **fields: object) -> RawRecord:
    body = {"request_id": f"r{i}", "model": "m", **fields}
    return RawRecord("t", 0, i, 1000.0 + i, None, json.dumps(body).encode())


@pytest.fixture
def daemon() -> Daemon:
    limits = {"max_keys": 2, "feature_admission_events": 1}  # features tracked from their first event
    d = Daemon(from_mapping({"http": {"host": "127.0.0.1", "port": 0}, "limits": limits}))
    records = [
        _record(0, variant="a", latency_ms=5, features={"x": 1}, score=0.3),
        _record(1, variant="a", latency_ms=50, status="error", error_type="oom", features={"x": None}),
        _record(2, variant="b", latency_ms=500, prediction="yes", ttft_ms=40, tokens_in=4, tokens_out=9),
        _record(3, variant="c"),  # third key: over max_keys=2
        RawRecord("t", 0, 4, None, None, b"{broken"),
        RawRecord("t", 0, 5, None, None, b'{"model": "m"}'),
    ]
    d.pipeline.process(chunks_of(records))
    return d


def scrape(d: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = d.exposition.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def key(variant: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"model": "m", "version": "unknown", "variant": variant, **extra}.items()))


def test_scrape_reflects_state_exactly(daemon: Daemon) -> None:
    s = scrape(daemon)
    assert s[("inferwatch_events_total", key("a"))] == 2
    assert s[("inferwatch_events_total", key("b"))] == 1
    assert s[("inferwatch_events_total", key("__other__", model="__other__", version="__other__"))] == 1
    assert s[("inferwatch_errors_total", key("a", error_type="oom"))] == 1
    assert s[("inferwatch_request_latency_seconds_bucket", key("a", le="0.005"))] == 1
    assert s[("inferwatch_request_latency_seconds_bucket", key("a", le="0.05"))] == 2
    assert s[("inferwatch_request_latency_seconds_count", key("a"))] == 2
    assert s[("inferwatch_request_latency_seconds_sum", key("a"))] == pytest.approx(0.055)
    assert s[("inferwatch_feature_missing_total", key("a", feature="x"))] == 1
    assert s[("inferwatch_prediction_score_count", key("a"))] == 1
    assert s[("inferwatch_predictions_total", key("b", **{"class": "yes"}))] == 1
    assert s[("inferwatch_llm_time_to_first_token_seconds_count", key("b"))] == 1
    assert s[("inferwatch_llm_output_tokens_total", key("b"))] == 9
    assert s[("inferwatch_last_event_timestamp_seconds", key("b"))] == 1002.0
    assert s[("inferwatch_events_invalid_total", (("partition", "0"), ("reason", "malformed_json")))] == 1
    assert s[("inferwatch_events_invalid_total", (("partition", "0"), ("reason", "missing_field")))] == 1
    assert s[("inferwatch_cardinality_overflow_total", (("dimension", "key"),))] == 1
    assert s[("inferwatch_build_info", (("python_version", _py()), ("version", _ver())))] == 1


def _py() -> str:
    import platform

    return platform.python_version()


def _ver() -> str:
    from daemon import __version__

    return __version__


def test_keys_without_llm_or_scores_emit_no_empty_histograms(daemon: Daemon) -> None:
    s = scrape(daemon)
    assert ("inferwatch_llm_time_to_first_token_seconds_count", key("a")) not in s
    assert ("inferwatch_prediction_score_count", key("b")) not in s


def test_metric_names_follow_conventions() -> None:
    for name, (kind, _doc, labels) in FAMILIES.items():
        assert name.startswith("inferwatch_")
        assert not name.endswith("_total"), "counters get _total from the exposition"
        assert "request_id" not in labels
        if kind == "histogram" and "latency" in name:
            assert name.endswith("_seconds")
        # Prometheus reserves `quantile` for summaries and `le` for histograms (promtool check metrics).
        assert kind == "summary" or "quantile" not in labels, name
        assert kind == "histogram" or "le" not in labels, name


def test_docs_list_every_family_and_no_other() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\|\s*`(inferwatch_[a-z_]+)`", text, flags=re.M))
    exposed = {n + "_total" if k == "counter" else n for n, (k, _, _) in FAMILIES.items()}
    assert documented == exposed


def test_broker_contact_families() -> None:
    config = from_mapping({})
    pipeline = build_pipeline(config)

    def names(up: bool | None = None, contact: float | None = None) -> dict[str, float]:
        stats = LoopStats({}, {}, {}, Histograms.single(BATCH_BUCKETS), source_up=up, source_last_contact=contact)
        text = MetricsExposition(pipeline, config.metrics, lambda: stats).render().decode()
        return {name: value for (name, _), value in parse(text).items() if name.startswith("inferwatch_source_")}

    assert names(True, 1_700_000_000.25) == {
        "inferwatch_source_up": 1,
        "inferwatch_source_last_contact_timestamp_seconds": 1_700_000_000.25,
    }
    # Never reached (start-up): an outage, and no contact to report.
    assert names(False) == {"inferwatch_source_up": 0}
    assert names() == {}  # no Kafka source


def test_a_daemon_not_yet_connected_reports_the_broker_down(daemon: Daemon) -> None:
    s = scrape(daemon)
    assert s[("inferwatch_source_up", ())] == 0
    assert ("inferwatch_source_last_contact_timestamp_seconds", ()) not in s


def test_status_json_summarises_keys(daemon: Daemon) -> None:
    st = daemon.status()
    assert st["events"] == 4
    assert st["invalid"] == {"malformed_json": 1, "missing_field": 1}
    a = next(k for k in st["keys"] if k["variant"] == "a")
    assert a["errors"] == 1 and a["error_rate"] == 0.5
    assert a["latency_seconds"]["p99"] == pytest.approx(0.05, rel=0.02)
    json.dumps(st)


def test_label_values_are_escaped_and_round_trip() -> None:
    d = Daemon(from_mapping({"http": {"host": "127.0.0.1", "port": 0}, "limits": {"feature_admission_events": 1}}))
    odd = 'we"ird\\mo%del\nname %d'
    body = {"request_id": "r", "model": odd, "status": "error", "error_type": "50%", "features": {'f"%s': None}}
    d.pipeline.process(chunks_of([RawRecord("t", 0, 0, 1.0, None, json.dumps(body).encode())]))
    s = scrape(d)
    labels = {"model": odd, "version": "unknown", "variant": "default"}
    assert s[("inferwatch_events_total", tuple(sorted(labels.items())))] == 1
    assert s[("inferwatch_errors_total", tuple(sorted({**labels, "error_type": "50%"}.items())))] == 1
    assert s[("inferwatch_feature_missing_total", tuple(sorted({**labels, "feature": 'f"%s'}.items())))] == 1


def test_drift_and_quality_families_follow_the_state(monkeypatch: pytest.MonkeyPatch) -> None:
    config = from_mapping({"drift": {"hold_seconds": 60}, "accuracy": {"slice_features": ["region"]}})
    pipeline = build_pipeline(config)
    exposition = MetricsExposition(pipeline, config.metrics, lambda: LoopStats.idle())
    rng = random.Random(3)
    records = [
        _record(
            i,
            features={"x": rng.gauss(3.0 if i >= 1_000 else 0.0, 1.0), "region": "eu" if i % 2 else "us"},
            prediction=i % 2,
            label=i % 2 if i % 4 else 1 - i % 2,  # every fourth prediction is wrong
        )
        for i in range(1_500)
    ]
    pipeline.process(chunks_of(records))
    s = parse(exposition.render().decode())
    drift = {"stream": "feature:x", "detector": "scan"}
    assert total(s, "inferwatch_drift_events_total", **drift) == 1
    assert total(s, "inferwatch_drift_detected", **drift) == 1
    assert total(s, "inferwatch_drift_score", **drift) >= 1  # the scan's evidence: past its threshold
    assert total(s, "inferwatch_drift_detected", stream="feature:region") == 0
    # region and the label errors are active; x re-learns its reference after the detection.
    assert total(s, "inferwatch_drift_streams", state="active") == 2
    assert total(s, "inferwatch_drift_streams", state="reference") == 1
    assert total(s, "inferwatch_labels_total", outcome="inline") == 1_500
    assert total(s, "inferwatch_model_performance", metric="accuracy", slice_feature="__all__") == 0.75
    # Odd ids are "eu" and never wrong (i % 4 == 0 only for even i).
    assert total(s, "inferwatch_model_performance", metric="accuracy", slice_value="eu") == 1.0
    assert total(s, "inferwatch_model_performance", metric="accuracy", slice_value="us") == 0.5
    # Past the hold, x is still drifted: it has not yet learned its new reference from data after
    # the change (1,000 values; ~450 came after the detection).
    later = time.monotonic() + 61
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert total(parse(exposition.render().decode()), "inferwatch_drift_detected", **drift) == 1
    more = [_record(i, features={"x": rng.gauss(3.0, 1.0), "region": "eu"}) for i in range(1_500, 2_200)]
    pipeline.process(chunks_of(more))
    s = parse(exposition.render().decode())
    assert total(s, "inferwatch_drift_detected", **drift) == 0
    assert total(s, "inferwatch_drift_events_total", **drift) == 1


def test_a_model_with_buckets_of_its_own_exports_them_and_the_others_the_global_ones() -> None:
    llm_buckets = [1.0, 10.0, 60.0, 600.0]
    metrics = {"models": {"chat": {"latency_buckets_seconds": llm_buckets}}}
    d = Daemon(from_mapping({"http": {"host": "127.0.0.1", "port": 0}, "metrics": metrics}))
    records = [
        RawRecord(
            "t", 0, 0, 1000.0, None, json.dumps({"request_id": "a", "model": "chat", "latency_ms": 45_000}).encode()
        ),
        RawRecord(
            "t", 0, 1, 1000.0, None, json.dumps({"request_id": "b", "model": "clf", "latency_ms": 45_000}).encode()
        ),
    ]
    d.pipeline.process(chunks_of(records))
    s = scrape(d)

    def buckets(model: str) -> dict[str, float]:
        return {
            dict(labels)["le"]: v
            for (name, labels), v in s.items()
            if name == "inferwatch_request_latency_seconds_bucket" and dict(labels)["model"] == model
        }

    assert buckets("chat") == {"1.0": 0, "10.0": 0, "60.0": 1, "600.0": 1, "+Inf": 1}
    clf = buckets("clf")
    assert len(clf) == 19 and clf["20.0"] == 0 and clf["50.0"] == 1  # 1 ms to 10 min, then +Inf
    # A checkpoint of chat's counts does not restore where its buckets changed.
    state = d.pipeline.snapshot(fresh=True)
    other = Daemon(from_mapping({"http": {"host": "127.0.0.1", "port": 0}}))
    with pytest.raises(ValueError, match="other buckets"):
        other.pipeline.restore(state)
