"""Helpers for tests that start real processes: the daemon as a subprocess, scraping, producing."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from daemon.dev.broker import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= set(lbl))


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class DaemonProcess:
    """`python -m daemon run` in a subprocess, with its own config file and HTTP port."""

    def __init__(self, tmp: Path, config: dict[str, Any], port: int | None = None) -> None:
        self.port = port or free_port()
        http = {**config.get("http", {}), "host": "127.0.0.1", "port": self.port}
        config = {**config, "http": http}
        self.config_path = tmp / f"inferwatch-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp / f"inferwatch-{self.port}.log"
        self.url = f"{'https' if http.get('tls') else 'http'}://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFERWATCH__")}
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        wait_for(lambda: self._alive_and(lambda: get(self.url + "/readyz")[0] == 200), 30, "daemon /readyz")
        return self

    def _alive_and(self, check: Callable[[], bool]) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.logs()[-3000:]}")
        try:
            return check()
        except OSError:
            return False

    def scrape(self) -> Samples:
        return parse(get(self.url + "/metrics")[1].decode())

    def metrics_text(self) -> str:
        return get(self.url + "/metrics")[1].decode()

    def status(self) -> dict[str, Any]:
        return dict(json.loads(get(self.url + "/v1/status")[1]))

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None:
            # The whole session: the daemon and any child it started (a shadow runner).
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()


@contextmanager
def running_daemon(tmp: Path, config: dict[str, Any]) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp, config)
    try:
        yield d.start()
    finally:
        d.kill()


def produce(
    bootstrap: str,
    topic: str,
    items: Iterable[tuple[bytes | None, bytes]],
    headers: Iterable[list[tuple[str, bytes]]] | None = None,
    timestamps_ms: Iterable[int] | None = None,
) -> dict[int, int]:
    """Send (with each record's `headers` and time, if given) and wait for every ack; return the
    log end offset per partition that we wrote."""
    producer = KafkaProducer(bootstrap_servers=[bootstrap], linger_ms=10, acks="all")
    hs = headers if headers is not None else itertools.repeat(None)
    ts = timestamps_ms if timestamps_ms is not None else itertools.repeat(None)
    futures = [
        producer.send(topic, key=k, value=v, headers=h, timestamp_ms=t)
        for (k, v), h, t in zip(items, hs, ts, strict=False)
    ]
    producer.flush()
    ends: dict[int, int] = {}
    for f in futures:
        md = f.get(timeout=30)
        ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
    producer.close()
    return ends


def consume(bootstrap: str, topic: str, n: int, timeout_s: float = 30.0) -> list[Any]:
    """The first `n` records of `topic` (fewer if they do not come within `timeout_s`)."""
    c = KafkaConsumer(
        topic,
        bootstrap_servers=[bootstrap],
        group_id=f"reader-{time.time()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    got: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(got) < n and time.monotonic() < deadline:
            for records in c.poll(timeout_ms=500).values():
                got.extend(records)
    finally:
        c.close()
    return got
