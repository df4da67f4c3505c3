"""`inferwatch demo`: embedded broker, synthetic traffic and the daemon, in one command."""

from __future__ import annotations

import random
import threading
import time
from collections import deque

from kafka import KafkaProducer

from daemon.config import Config, from_mapping
from daemon.dev.broker import TansuBroker, free_port
from daemon.dev.generator import LABEL_DELAY_S, TrafficGenerator, TrafficSpec, encode, parse_change
from daemon.runtime.app import Daemon

TOPIC = "inference-logs"
LABELS_TOPIC = "inference-labels"
DEAD_LETTER_TOPIC = "inference-logs-dead-letter"
# The story the demo tells: fraud-detector's canary is 20% slower from the start; the LLM's
# canary is 30% slower per output token but writes 20% shorter answers (its end-to-end latency
# hardly moves: judged on time per output token, it fails); fraud-detector's f0 drifts by 1 sd
# from minute 3.
CHANGES = (
    "after=0 model=fraud-detector variant=canary latency=+20%",
    "after=0 model=chat-llm variant=canary tpot=+30% tokens=-20%",
    "after=3m model=fraud-detector feature=f0 shift=1",
)
MODELS = (
    ("fraud-detector", ("control", "canary")),
    ("recsys-ranker", ()),
    ("chat-llm", ("control", "canary")),
)
LLM_MODELS = ("chat-llm",)
# Objectives the demo's healthy keys meet, so that only the injected faults alert: the
# generator's models err 1% of the time and are right 68-76% of the time; the LLM answers
# in ~250 ms to its first token and ~30 ms per token after it.
SLO = {
    "default": {"latency_ms": 250, "goodput": 0.97, "error_rate": 0.02, "accuracy": 0.6},
    "models": {"chat-llm": {"ttft_ms": 1000, "tpot_ms": 60, "goodput": 0.97, "error_rate": 0.02}},
}
# One malformed record in this many, to show that bad input costs only a counter.
MALFORMED_EVERY = 500


def demo_config(bootstrap: str, http_port: int) -> Config:
    return from_mapping(
        {
            "source": {"kafka": {"bootstrap_servers": [bootstrap], "topics": [TOPIC], "group_id": "inferwatch-demo"}},
            "dead_letter": {"topic": DEAD_LETTER_TOPIC},
            "labels": {"topic": LABELS_TOPIC},
            "http": {"host": "127.0.0.1", "port": http_port},
            "slo": SLO,
            # Labels come LABEL_DELAY_S after their events: the canary's accuracy need not wait
            # the default 300 s of event time for them.
            "canary": {"label_wait_seconds": 30},
        }
    )


def _produce(bootstrap: str, spec: TrafficSpec, stop: threading.Event) -> None:
    """Events at the spec's pace, and each event's label LABEL_DELAY_S later (keyed alike)."""
    producer = KafkaProducer(bootstrap_servers=[bootstrap], linger_ms=20)
    rng = random.Random(spec.seed)
    gen = TrafficGenerator(spec)
    due: deque[tuple[float, bytes, bytes]] = deque()
    try:
        for i, ev in enumerate(gen.paced_events()):
            if stop.is_set():
                break
            key, value = encode(ev)
            if i % MALFORMED_EVERY == MALFORMED_EVERY - 1:
                value = value[: rng.randrange(1, len(value) - 1)]  # truncated JSON
            producer.send(TOPIC, key=key, value=value)
            now = time.monotonic()
            if "score" in ev:  # an LLM's answers have no label
                due.append((now + LABEL_DELAY_S, *encode(gen.label(ev))))
            while due and due[0][0] <= now:
                _, k, v = due.popleft()
                producer.send(LABELS_TOPIC, key=k, value=v)
    finally:
        producer.close(timeout=5)


def _print_summary(daemon: Daemon, started: float) -> None:
    st = daemon.status()
    lag = sum(st["lag"].values())
    invalid = sum(st["invalid"].values())
    print(f"\n[{time.time() - started:5.0f}s] events={st['events']:,} invalid={invalid:,} lag={lag:,}", flush=True)
    for k in sorted(st["keys"], key=lambda k: (k["model"], k["variant"])):
        lat = k["latency_seconds"]
        ms = {q: f"{v * 1000:6.1f}" if v is not None else "     -" for q, v in lat.items()}
        quality = k["quality"]
        acc = quality["metrics"].get("accuracy")
        est = quality["accuracy_estimated"]
        drift = sum(k.get("drift", {}).get("detections", {}).values())
        print(
            f"  {k['model']:<16} v{k['version']:<3} {k['variant']:<8} events={k['events']:>7,}"
            f"  errors={k['error_rate']:6.2%}  p50={ms['p50']}ms p95={ms['p95']}ms p99={ms['p99']}ms"
            f"  accuracy={_pct(acc)} (estimated {_pct(est)})  drift alerts={drift}",
            flush=True,
        )
    _print_canaries(daemon)


def _print_canaries(daemon: Daemon) -> None:
    for model, m in (daemon.canary_report(None) or {}).get("models", {}).items():
        for variant, c in m["variants"].items():
            why = f"  ({'; '.join(c['reasons'])})" if c["reasons"] else ""
            print(
                f"  canary {model}/{variant} vs {m['baseline']}: {c['verdict']} (score {c['score']:.0f}){why}",
                flush=True,
            )


def _pct(x: float | None) -> str:
    return "    -" if x is None else f"{x:5.1%}"


def run_demo(duration_s: float | None, http_port: int | None, rate: float, every_s: float, seed: int) -> int:
    with TansuBroker() as broker:
        broker.create_topics([TOPIC, LABELS_TOPIC], partitions=3)
        broker.create_topics([DEAD_LETTER_TOPIC])
        daemon = Daemon(demo_config(broker.bootstrap, http_port or free_port()))
        spec = TrafficSpec(
            models=MODELS,
            llm_models=LLM_MODELS,
            rate=rate,
            duration_s=duration_s + 60 if duration_s else 7 * 24 * 3600.0,
            seed=seed,
            changes=tuple(parse_change(c) for c in CHANGES),
        )
        stop = threading.Event()
        producer = threading.Thread(target=_produce, args=(broker.bootstrap, spec, stop), name="generator", daemon=True)
        producer.start()
        started = time.time()
        base = f"http://127.0.0.1:{daemon.http.port}"
        print(f"inferwatch demo: broker {broker.bootstrap}, topic {TOPIC}, {rate:g} events/s", flush=True)
        for path in ("/metrics", "/v1/status", "/healthz", "/readyz"):
            print(f"  {base}{path}", flush=True)
        print("Ctrl-C stops everything.", flush=True)

        def reporter() -> None:
            next_summary = started + every_s
            end = started + duration_s if duration_s is not None else float("inf")
            while not daemon.shutdown.wait(max(min(next_summary, end) - time.time(), 0.0)):
                if time.time() >= end:
                    daemon.shutdown.request("demo_duration_reached")
                    return
                _print_summary(daemon, started)
                next_summary += every_s

        threading.Thread(target=reporter, name="reporter", daemon=True).start()
        rc = daemon.run()
        stop.set()
        producer.join(timeout=10)
        _print_summary(daemon, started)
        return rc
