"""Broker liveness through kafka-python's public admin API, for inferwatch_source_up.

A thread asks a broker for the cluster's metadata (a round trip through kafka-python's public
`KafkaClient`) every `interval_s`; `last_contact` is when an answer last came. A broker that is
down, unreachable or hung (accepting connections but not answering) stops the answers, whatever
the consumer is doing.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog
from kafka import KafkaClient

log = structlog.get_logger(__name__)


class BrokerProbe:
    def __init__(self, bootstrap_servers: tuple[str, ...], client_id: str, interval_s: float, timeout_s: float) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        # Unix time of the latest answer; None before the first.
        self.last_contact: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-probe", daemon=True)

    def start(self) -> BrokerProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 1.0)

    def _run(self) -> None:
        client: Any = None
        while not self._stop.is_set():
            try:
                if client is None:
                    client = KafkaClient(
                        bootstrap_servers=list(self.bootstrap_servers),
                        client_id=f"{self.client_id}-probe",
                        request_timeout_ms=int(self.timeout_s * 1000),
                        # A broker back from an outage is seen within an interval (kafka-python
                        # backs off up to 30 s between attempts by default).
                        reconnect_backoff_max_ms=int(self.interval_s * 1000),
                    )
                answer = client.cluster.request_update()
                client.poll(timeout_ms=int(self.timeout_s * 1000), future=answer)
                if answer.succeeded():
                    self.last_contact = time.time()
            except Exception as exc:  # any failure is "no answer": start over with a new client
                log.debug("broker_probe_failed", error=repr(exc))
                _close(client)
                client = None
            self._stop.wait(self.interval_s)
        _close(client)


def _close(client: Any) -> None:
    if client is not None:
        try:
            client.close()
        except Exception as exc:
            log.debug("broker_probe_close_failed", error=repr(exc))
