"""What the crash-safety tests share: a labelled traffic with a drift, the daemon's config for it,
and the per-key state that must come out the same whatever happened to the daemon."""

from __future__ import annotations

from typing import Any

from daemon.dev.broker import TansuBroker
from daemon.dev.generator import TrafficGenerator, TrafficSpec, encode, parse_change
from tests.integration.support import DaemonProcess, wait_for


def traffic(n: int, seed: int, extra_models: int = 0) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """`n` events keyed by model (fraud-detector's f0 drifts half-way) and a label for each;
    `extra_models` more models spread the keys over more partitions."""
    spec = TrafficSpec(
        models=(*TrafficSpec.models, *((f"model-{i}", ()) for i in range(extra_models))),
        rate=200,
        duration_s=n / 200,
        seed=seed,
        start_time=1_700_000_000.0,
        changes=(parse_change(f"after={n / 400}s model=fraud-detector feature=f0 shift=2"),),
    )
    gen = TrafficGenerator(spec)
    events = list(gen.events())
    return [encode(e) for e in events], [encode(gen.label(e)) for e in events]


def daemon_config(
    broker: TansuBroker, topics: tuple[str, str], group: str, checkpoint: dict[str, Any], client: str = "kafka-python"
) -> dict[str, Any]:
    return {
        "source": {
            "kafka": {
                "bootstrap_servers": [broker.bootstrap],
                "topics": [topics[0]],
                "group_id": group,
                "max_poll_records": 300,
                "commit_interval_ms": 100,
                "session_timeout_ms": 6000,
                "client": client,
            }
        },
        # Labels held for as long as a catch-up may read the labels topic ahead of the events one:
        # how polls interleave the topics then decides nothing.
        "labels": {"topic": topics[1], "hold_seconds": 3600, "max_entries": 400_000},
        # Every labelled prediction stays in the window and the error stream (graded in label
        # order, which depends on how polls interleave the two topics) is left out: the rest of
        # the state must match exactly.
        "accuracy": {"window_events": 1_000_000},
        "drift": {"reference_events": 500, "window_events": 250, "streams": ["features", "score", "latency"]},
        "checkpoint": checkpoint,
    }


def key_state(d: DaemonProcess) -> list[dict[str, Any]]:
    """/v1/status's keys, sorted, less what depends on poll order (CBPE fits on the first labels)."""
    keys = d.status()["keys"]
    for k in keys:
        k["quality"].pop("accuracy_estimated", None)
    return sorted(keys, key=lambda k: (k["model"], k["version"], k["variant"]))


def counted(d: DaemonProcess) -> tuple[int, int]:
    """Events counted and labels in their keys' windows, from the per-key state (which follows
    partitions; the process-wide label counters start from zero with the topic store)."""
    keys = d.status()["keys"]
    return sum(k["events"] for k in keys), sum(k["quality"]["window"] for k in keys)


def wait_counted(d: DaemonProcess, events: int, labels: int, timeout: float, what: str) -> None:
    """Until `counted(d)` is (events, labels); a timeout says how far it got."""
    last: tuple[int, int] | None = None

    def done() -> bool:
        nonlocal last
        last = counted(d)
        return last == (events, labels)

    try:
        wait_for(done, timeout, what)
    except AssertionError:
        raise AssertionError(f"{what}: (events, labels) counted {last}, expected {(events, labels)}") from None
