"""Goodput against per-model objectives: which requests each objective judges, the counts per key,
their gauges, and checkpoints."""

from __future__ import annotations

import json

import pytest

from daemon.config import ConfigError, from_mapping
from daemon.ingest.sources import RawRecord, chunks_of
from daemon.runtime.app import Daemon
from daemon.state import codec
from tests.unit.test_exposition import scrape as exposition_scrape

SLO = {
    "default": {"latency_ms": 100, "goodput": 0.99, "error_rate": 0.01},
    "models": {"chat": {"ttft_ms": 500, "tpot_ms": 50, "goodput": 0.95, "accuracy": 0.8}},
}


def _record(i: int, model: str, **fields: object) -> RawRecord:
    body = {"request_id": f"r{i}", "model": model, "version": "1", "variant": "a", **fields}
    return RawRecord("t", 0, i, 1000.0 + i, None, json.dumps(body).encode())


def _daemon(records: list[RawRecord]) -> Daemon:
    d = Daemon(from_mapping({"http": {"host": "127.0.0.1", "port": 0}, "slo": SLO}))
    d.pipeline.process(chunks_of(records))
    return d


RECORDS = [
    # A classic model: judged on latency (100 ms) and errors.
    _record(0, "clf", latency_ms=50),
    _record(1, "clf", latency_ms=150),  # too slow
    _record(2, "clf", latency_ms=20, status="error"),  # fast, but an error
    _record(3, "clf"),  # no latency: good unless an error
    # An LLM (its own objectives: TTFT and time per output token; no e2e, no latency).
    _record(4, "chat", latency_ms=3000, ttft_ms=200, tokens_out=101),  # tpot 28 ms: good
    _record(5, "chat", latency_ms=9000, ttft_ms=200, tokens_out=101),  # tpot 88 ms: too slow per token
    _record(6, "chat", latency_ms=3000, ttft_ms=900, tokens_out=101),  # TTFT too slow
    _record(7, "chat", latency_ms=200, tokens_out=1),  # an LLM request (tokens) without TTFT or TPOT
]


def scrape(d: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {k: v for k, v in exposition_scrape(d).items() if k[0].startswith("inferwatch_slo_")}


def test_each_objective_judges_its_requests_and_goodput_all_of_them() -> None:
    s = scrape(_daemon(RECORDS))
    counts = {
        (name, dict(labels)["model"], dict(labels)["slo"]): v
        for (name, labels), v in s.items()
        if "model" in dict(labels) and "version" in dict(labels)
    }
    assert counts == {
        ("inferwatch_slo_requests_total", "clf", "latency"): 3,
        ("inferwatch_slo_good_requests_total", "clf", "latency"): 2,  # the error was fast
        ("inferwatch_slo_requests_total", "clf", "goodput"): 4,
        ("inferwatch_slo_good_requests_total", "clf", "goodput"): 2,  # not the slow one, not the error
        ("inferwatch_slo_requests_total", "chat", "ttft"): 3,
        ("inferwatch_slo_good_requests_total", "chat", "ttft"): 2,
        ("inferwatch_slo_requests_total", "chat", "tpot"): 3,  # derived from latency, TTFT and tokens
        ("inferwatch_slo_good_requests_total", "chat", "tpot"): 2,
        ("inferwatch_slo_requests_total", "chat", "goodput"): 4,
        ("inferwatch_slo_good_requests_total", "chat", "goodput"): 2,
    }


def test_objectives_are_gauges_the_rules_read() -> None:
    s = scrape(_daemon(RECORDS))
    gauges = {
        dict(labels)["model"] + "/" + dict(labels)["slo"]: v
        for (name, labels), v in s.items()
        if name == "inferwatch_slo_objective"
    }
    assert gauges == {
        "clf/latency": 0.1,
        "clf/goodput": 0.99,
        "clf/error_rate": 0.01,
        "chat/ttft": 0.5,
        "chat/tpot": 0.05,
        "chat/goodput": 0.95,
        "chat/accuracy": 0.8,
    }


def test_counts_survive_a_checkpoint() -> None:
    d = _daemon(RECORDS[:5])
    after = Daemon(from_mapping({"http": {"host": "127.0.0.1", "port": 0}, "slo": SLO}))
    after.pipeline.restore(codec.decode(codec.encode(d.pipeline.snapshot(fresh=True))))
    after.pipeline.process(chunks_of(RECORDS[5:]))
    assert scrape(after) == scrape(_daemon(RECORDS))


def test_a_model_entry_replaces_the_default_whole() -> None:
    c = from_mapping({"slo": SLO})
    assert c.slo.of("chat").latency_ms is None and c.slo.of("clf").latency_ms == 100
    with pytest.raises(ConfigError, match=r"slo\.models\.x\.goodput"):
        from_mapping({"slo": {"models": {"x": {"goodput": 1.5}}}})
