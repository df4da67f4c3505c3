from __future__ import annotations

import itertools
import json
import math
import statistics

import pytest

from daemon.dev.generator import TrafficGenerator, TrafficSpec, parse_change, parse_duration, parse_model


def test_same_seed_same_traffic() -> None:
    spec = TrafficSpec(rate=100, duration_s=5, seed=3, start_time=1.0)
    a = list(TrafficGenerator(spec).encoded())
    assert a == list(TrafficGenerator(spec).encoded())
    assert len(a) == 500


def test_events_are_realistic() -> None:
    events = list(TrafficGenerator(TrafficSpec(rate=1000, duration_s=10, start_time=0.0)).events())
    assert {e["model"] for e in events} == {"fraud-detector", "recsys-ranker"}
    assert {e.get("variant") for e in events if e["model"] == "fraud-detector"} == {"control", "canary"}
    assert all(len(e["features"]) >= 8 for e in events)
    error_rate = sum(e["status"] == "error" for e in events) / len(events)
    assert 0.005 < error_rate < 0.02
    assert events[-1]["timestamp"] == pytest.approx(9.999)


def test_change_plan_applies_from_its_time() -> None:
    spec = TrafficSpec(
        models=(("m", ("control", "canary")),),
        rate=1000,
        duration_s=20,
        start_time=0.0,
        changes=(
            parse_change("after=10s model=m variant=canary latency=+30%"),
            parse_change("after=10s feature=f0 shift=2"),
        ),
    )
    events = list(TrafficGenerator(spec).events())

    def med(variant: str, late: bool) -> float:
        return statistics.median(
            e["latency_ms"] for e in events if e["variant"] == variant and (e["timestamp"] >= 10) == late
        )

    assert med("canary", False) / med("control", False) == pytest.approx(1.0, abs=0.08)
    assert med("canary", True) / med("control", True) == pytest.approx(1.3, abs=0.1)
    early = statistics.mean(e["features"]["f0"] for e in events if e["timestamp"] < 10)
    late = statistics.mean(e["features"]["f0"] for e in events if e["timestamp"] >= 10)
    sd = statistics.stdev(e["features"]["f0"] for e in itertools.islice(events, 5000))
    assert (late - early) / sd == pytest.approx(2.0, abs=0.2)


def test_parsers_reject_bad_specs() -> None:
    assert parse_duration("3m") == 180 and parse_duration("90s") == 90 and parse_duration("250ms") == 0.25
    assert parse_model("m:a,b") == ("m", ("a", "b")) and parse_model("m") == ("m", ())
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        parse_change("after=1m colour=red")
    with pytest.raises(ValueError, match="needs shift"):
        parse_change("feature=f0")
    with pytest.raises(ValueError, match="bad duration"):
        parse_change("after=soon")


def test_generate_cli_writes_jsonl_and_rejects_bad_plans(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from daemon.cli import main

    out = tmp_path / "events.jsonl"
    args = ["generate", "--rate", "50", "--duration", "2", "--model", "a:x,y", "--output", str(out)]
    assert main([*args, "--change", "after=1s model=a variant=y latency=+50%"]) == 0
    lines = out.read_bytes().splitlines()
    assert len(lines) == 100
    assert {json.loads(line)["variant"] for line in lines} == {"x", "y"}
    assert main([*args, "--change", "after=1s speed=fast"]) == 2
    assert "unknown key 'speed'" in capsys.readouterr().err


def test_labels_leave_the_events_unchanged_and_follow_the_score() -> None:
    spec = TrafficSpec(rate=1000, duration_s=20, seed=4, start_time=0.0)
    plain = list(TrafficGenerator(spec).events())
    gen = TrafficGenerator(spec)
    pairs = [(ev, gen.label(ev)) for ev in gen.events()]
    assert [ev for ev, _ in pairs] == plain
    assert all(lab["request_id"] == ev["request_id"] for ev, lab in pairs)
    assert [lab["timestamp"] for _, lab in pairs] == pytest.approx([ev["timestamp"] + 5.0 for ev, _ in pairs])
    # The truth is 1 with probability `score`, so the two means agree (20k draws: sd ~0.003).
    scores = sum(ev["score"] for ev, _ in pairs) / len(pairs)
    truths = sum(lab["label"] for _, lab in pairs) / len(pairs)
    assert abs(scores - truths) < 0.015


def test_an_llm_model_logs_ttft_tokens_and_finish_reasons_and_its_canary_changes_per_token() -> None:
    spec = TrafficSpec(
        models=(("chat", ("control", "canary")),),
        llm_models=("chat",),
        rate=1000,
        duration_s=20,
        start_time=0.0,
        changes=(parse_change("after=0 model=chat variant=canary tpot=+30% tokens=-20%"),),
    )
    events = list(TrafficGenerator(spec).events())
    assert all("score" not in e and "prediction" not in e for e in events)
    assert {e["finish_reason"] for e in events} == {"stop", "length"}
    assert all(e["finish_reason"] == ("length" if e["tokens_out"] == 512 else "stop") for e in events)

    def med(variant: str, what: str) -> float:
        if what == "tpot":
            return statistics.median(
                (e["latency_ms"] - e["ttft_ms"]) / (e["tokens_out"] - 1) for e in events if e["variant"] == variant
            )
        return statistics.median(e[what] for e in events if e["variant"] == variant)

    assert med("canary", "tpot") / med("control", "tpot") == pytest.approx(1.3, abs=0.05)
    assert med("canary", "tokens_out") / med("control", "tokens_out") == pytest.approx(0.8, abs=0.08)
    assert med("canary", "ttft_ms") / med("control", "ttft_ms") == pytest.approx(1.0, abs=0.08)
    # A classic model's stream is the same with or without an LLM model named (and not drawn).
    classic = TrafficSpec(rate=100, duration_s=5, seed=3, start_time=1.0)
    assert list(TrafficGenerator(classic).encoded()) == list(
        TrafficGenerator(TrafficSpec(rate=100, duration_s=5, seed=3, start_time=1.0, llm_models=("chat",))).encoded()
    )


def test_logit_is_the_score_before_its_noise() -> None:
    """The demo's production shadow model is `logit`: a score's log-odds minus x @ weights + bias is
    the generator's N(0, 0.5) noise alone, however the features drift."""
    spec = TrafficSpec(rate=1000, duration_s=4, seed=2, changes=(parse_change("after=2s feature=f0 shift=2"),))
    gen = TrafficGenerator(spec)
    weights, bias = gen.logit("fraud-detector")
    noise = [
        math.log(e["score"] / (1 - e["score"])) - sum(w * e["features"][f"f{j}"] for j, w in enumerate(weights)) - bias
        for e in gen.events()
        if e["model"] == "fraud-detector" and 0 < e["score"] < 1 and e["features"]["f3"] is not None
    ]
    assert len(noise) > 1000
    assert abs(statistics.fmean(noise)) < 0.05 and statistics.stdev(noise) == pytest.approx(0.5, abs=0.05)
