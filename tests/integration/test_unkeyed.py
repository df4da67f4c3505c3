"""Any keying works, exactly: producers that do not key by model, read by 2 replicas through the
repartition topic (source.kafka.repartition), through kill -9, SIGTERM and a replica added.

4 partitions; events and labels keyed by request id or not keyed at all. After every step each
key's count equals the truth, each key lives on exactly one replica, every label joins, one real
shift is one drift detection and each model has one canary verdict series.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from daemon.dev.broker import TansuBroker
from tests.integration.checkpointing import daemon_config, traffic
from tests.integration.support import DaemonProcess, get, produce, wait_for

PARTITIONS = 4
WAVE = 8_000


def _keyed(items: list[tuple[bytes, bytes]], by: str) -> list[tuple[bytes | None, bytes]]:
    if by == "none":
        return [(None, v) for _, v in items]
    return [(json.loads(v)["request_id"].encode(), v) for _, v in items]


def _truth(events: list[tuple[bytes, bytes]]) -> Counter[tuple[str, str, str]]:
    out: Counter[tuple[str, str, str]] = Counter()
    for _, v in events:
        e = json.loads(v)
        out[(e["model"], e.get("version", "unknown"), e.get("variant", "default"))] += 1
    return out


def _keys(replicas: list[DaemonProcess]) -> list[tuple[tuple[str, str, str], dict[str, Any]]]:
    return [((k["model"], k["version"], k["variant"]), k) for d in replicas for k in d.status()["keys"]]


def _wait_exact(replicas: list[DaemonProcess], truth: Counter[tuple[str, str, str]], what: str) -> None:
    last: Any = None

    def done() -> bool:
        nonlocal last
        keys = _keys(replicas)
        counts = Counter({key: k["events"] for key, k in keys})
        labelled = sum(k["quality"]["window"] for _, k in keys)
        last = (dict(counts), labelled, [key for key, _ in keys])
        return counts == truth and labelled == sum(truth.values()) and len(keys) == len(truth)

    try:
        wait_for(done, 120, what, interval=0.5)
    except AssertionError:
        raise AssertionError(f"{what}: counted {last}, truth {dict(truth)}") from None


@pytest.mark.timeout(600)
@pytest.mark.parametrize("by", ["none", "request_id"])
def test_unkeyed_input_is_exact_through_kill_sigterm_and_scale_up(tmp_path: Path, by: str) -> None:
    events, labels = traffic(3 * WAVE, seed=5)
    with TansuBroker() as broker:
        topics = ("u-events", "u-labels")
        broker.create_topics(list(topics), partitions=PARTITIONS)
        cfg = daemon_config(broker, topics, f"unkeyed-{by}", {"interval_seconds": 0.5})
        cfg["source"]["kafka"] |= {"repartition": True, "session_timeout_ms": 3000}
        replicas = [DaemonProcess(tmp_path, cfg).start() for i in range(2)]
        try:
            produce(broker.bootstrap, topics[0], _keyed(events[:WAVE], by))
            produce(broker.bootstrap, topics[1], _keyed(labels[:WAVE], by))
            _wait_exact(replicas, _truth(events[:WAVE]), "2 replicas")
            owners = Counter(key for key, _ in _keys(replicas))
            assert set(owners.values()) == {1}, "each key lives on one replica"
            canaries = Counter(m for d in replicas for m in json.loads(get(d.url + "/v1/canary")[1])["models"])
            assert canaries == {"fraud-detector": 1, "recsys-ranker": 1}, "one canary verdict series per model"

            replicas[0].stop(signal.SIGKILL)
            produce(broker.bootstrap, topics[0], _keyed(events[WAVE : 2 * WAVE], by))
            produce(broker.bootstrap, topics[1], _keyed(labels[WAVE : 2 * WAVE], by))
            _wait_exact(replicas[1:], _truth(events[: 2 * WAVE]), "after kill -9 of one replica")

            replicas[0] = DaemonProcess(tmp_path, cfg).start()  # a replica added back
            produce(broker.bootstrap, topics[0], _keyed(events[2 * WAVE :], by))
            produce(broker.bootstrap, topics[1], _keyed(labels[2 * WAVE :], by))
            _wait_exact(replicas, _truth(events), "after a replica is added")

            assert replicas[1].stop() == 0  # SIGTERM: a clean scale-down
            _wait_exact(replicas[:1], _truth(events), "after SIGTERM of one replica")
            keys = dict(_keys(replicas[:1]))
            shifted = {key: k["drift"]["detections"].get("feature:f0", 0) for key, k in keys.items()}
            print("f0 detections per key:", shifted)
            # One real shift (fraud-detector's f0, both variants): one detection per key, none elsewhere.
            assert shifted == {key: int(key[0] == "fraud-detector") for key in keys}
        finally:
            for d in replicas:
                d.kill()
