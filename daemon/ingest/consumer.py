"""The Kafka consumer in a process of its own.

kafka-python parses fetched records in pure Python (~15 µs a record on this project's 2-core
machines), on the thread that polls. In the daemon's process that parsing and the pipeline
take turns on one core; here the child process polls and parses, and the daemon's process only
unpickles chunks and runs the pipeline, so the two overlap on two cores.

The child runs the ordinary `KafkaSource` and makes every consumer call itself (kafka-python's
consumer is single-threaded): polls, commits, seeks, pauses. Three pipes connect them:

- data (child to daemon, in order): `("chunks", chunks, info)`, `("revoke", partitions, lost)`,
  `("assign", partitions)`, `("info", info)`, `("error", message)`; a reader thread in the daemon
  takes them off the pipe as they come, so the child never waits to send;
- commands (daemon to child): `("ack",)` once the daemon takes a chunks message (at most
  `IN_FLIGHT` are unacknowledged: the child polls no further ahead), `("commit", offsets)`,
  `("seek", tp, offset)`, `("pause", tps)`, `("resume", tps)`, `("done",)` (a rebalance callback
  is over), `("close",)`;
- replies (child to daemon): `("committed", ok)`.

A rebalance runs inside the child's poll, as kafka-python does it: the child sends `revoke` (or
`assign`) after every chunk polled before it, and serves commands until the daemon says `done`;
the daemon handles it when it reaches that message, having processed everything before it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any

import structlog
from kafka.errors import KafkaConnectionError, KafkaError

from daemon.config import KafkaConfig
from daemon.ingest.kafka import KafkaSource
from daemon.ingest.sources import Chunk, TopicPartition
from daemon.runtime.lifecycle import die_with_parent
from daemon.runtime.logs import SampledLog, configure

log = structlog.get_logger(__name__)

# Chunks messages the child may have sent that the daemon has not taken yet: one being processed,
# one waiting. More would only hold memory; fewer would leave the child idle.
IN_FLIGHT = 2
# The child's poll timeout while it may poll: short, so that it answers commands quickly.
CHILD_POLL_S = 0.05
# How often the child reports lag and broker contact when no records come.
INFO_EVERY_S = 1.0
START_TIMEOUT_S = 60.0


class ConsumerProcess:
    """A `Source` whose consumer runs in a child process (see the module docstring)."""

    def __init__(
        self,
        config: KafkaConfig,
        errors: dict[str, int],
        log_settings: tuple[str, str],
        invalid_sample_seconds: float,
        extra_topics: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.errors = errors
        self.before_revoke: Callable[[list[TopicPartition], bool], None] | None = None
        self.after_assign: Callable[[list[TopicPartition]], None] | None = None
        self._errors_base = dict(errors)
        self._lag: dict[TopicPartition, int] = {}
        ctx = multiprocessing.get_context("spawn")
        data_in, data_out = ctx.Pipe(duplex=False)
        cmd_in, self._cmd = ctx.Pipe(duplex=False)
        reply_in, reply_out = ctx.Pipe(duplex=False)
        self._reply = reply_in
        self._proc = ctx.Process(
            target=_child,
            args=(
                config.model_dump_json(),
                extra_topics,
                data_out,
                cmd_in,
                reply_out,
                log_settings,
                invalid_sample_seconds,
                os.getpid(),
            ),
            name="inferwatch-consumer",
            daemon=True,
        )
        self._proc.start()
        data_out.close()
        cmd_in.close()
        reply_out.close()
        self._messages: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(data_in,), name="consumer-reader", daemon=True)
        self._reader.start()
        first = self._next(START_TIMEOUT_S)
        if first is None or first[0] != "ready":
            self.close()
            detail = first[1] if first is not None and first[0] == "error" else "it did not start"
            raise KafkaConnectionError(f"the consumer process: {detail}")

    def _read(self, conn: Connection) -> None:
        try:
            while True:
                self._messages.put(conn.recv())
        except (EOFError, OSError):
            self._messages.put(("gone",))

    def _next(self, timeout_s: float) -> tuple[Any, ...] | None:
        try:
            return self._messages.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def _send(self, *command: Any) -> None:
        with contextlib.suppress(OSError, ValueError):  # the child is gone: poll() says so
            self._cmd.send(command)

    def poll(self, timeout_s: float) -> list[Chunk]:
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._next(max(deadline - time.monotonic(), 0.0))
            if message is None:
                return []
            kind = message[0]
            if kind == "chunks":
                self._send("ack")
                self._info(message[2])
                chunks: list[Chunk] = message[1]
                return chunks
            if kind == "info":
                self._info(message[1])
            elif kind == "revoke":
                if self.before_revoke is not None:
                    self.before_revoke(message[1], message[2])
                self._send("done")
            elif kind == "assign":
                if self.after_assign is not None:
                    self.after_assign(message[1])
                self._send("done")
            elif kind == "gone":
                self._messages.put(message)  # every later poll says it too
                self.errors["poll"] = self.errors.get("poll", 0) + 1
                raise KafkaConnectionError("the consumer process has exited")
            if time.monotonic() >= deadline:
                return []

    def _info(self, info: Mapping[str, Any]) -> None:
        self._lag = dict(info["lag"])
        for op, n in info["errors"].items():
            self.errors[op] = self._errors_base.get(op, 0) + n

    def commit(self, offsets: Mapping[TopicPartition, int]) -> bool:
        """Commit in the child; waits for its answer (the child answers between short polls)."""
        if not offsets:
            return True
        self._send("commit", dict(offsets))
        timeout_s = self.config.commit_timeout_ms / 1000.0 + 5.0
        if not self._reply.poll(timeout_s):
            self.errors["commit"] = self.errors.get("commit", 0) + 1
            return False
        try:
            _, ok = self._reply.recv()
        except (EOFError, OSError):
            return False
        return bool(ok)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._send("seek", tp, offset)

    def pause(self, tps: list[TopicPartition]) -> None:
        if tps:
            self._send("pause", tps)

    def resume(self, tps: list[TopicPartition]) -> None:
        if tps:
            self._send("resume", tps)

    def lag(self) -> dict[TopicPartition, int]:
        return dict(self._lag)

    def close(self) -> None:
        self._send("close")
        self._proc.join(timeout=self.config.commit_timeout_ms / 1000.0 + 10.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5.0)
        self._cmd.close()
        self._reply.close()


def _child(
    config_json: str,
    extra_topics: tuple[str, ...],
    data: Connection,
    commands: Connection,
    replies: Connection,
    log_settings: tuple[str, str],
    invalid_sample_seconds: float,
    parent: int,
) -> None:
    die_with_parent(parent)
    configure(*log_settings)
    config = KafkaConfig.model_validate_json(config_json)
    errors: dict[str, int] = {}
    try:
        source = KafkaSource(config, errors, SampledLog(invalid_sample_seconds), extra_topics)
    except KafkaError as exc:
        data.send(("error", repr(exc)))
        return
    child = _Child(source, errors, data, commands, replies)
    data.send(("ready",))
    try:
        child.run()
    finally:
        source.close()


class _Child:
    def __init__(
        self, source: KafkaSource, errors: dict[str, int], data: Connection, commands: Connection, replies: Connection
    ) -> None:
        self.source = source
        self.errors = errors
        self.data = data
        self.commands = commands
        self.replies = replies
        self.in_flight = 0
        self.closing = False
        source.before_revoke = lambda parts, lost: self._rebalance("revoke", parts, lost)
        source.after_assign = lambda parts: self._rebalance("assign", parts)

    def info(self) -> dict[str, Any]:
        return {"lag": self.source.lag(), "errors": dict(self.errors)}

    def run(self) -> None:
        last_info = 0.0
        while not self.closing:
            # Commands first; when the daemon holds IN_FLIGHT chunks, wait for one (its ack).
            wait = 0.0 if self.in_flight < IN_FLIGHT else CHILD_POLL_S
            while not self.closing and self.commands.poll(wait):
                self.serve(self.commands.recv())
                wait = 0.0
            if self.closing or self.in_flight >= IN_FLIGHT:
                continue
            chunks = self.source.poll(CHILD_POLL_S)
            now = time.monotonic()
            if chunks:
                self.data.send(("chunks", chunks, self.info()))
                self.in_flight += 1
                last_info = now
            elif now - last_info >= INFO_EVERY_S:
                self.data.send(("info", self.info()))
                last_info = now

    def serve(self, command: tuple[Any, ...]) -> bool:
        """Carry out one command; True for `done` (a rebalance callback may return)."""
        kind = command[0]
        if kind == "ack":
            self.in_flight -= 1
        elif kind == "commit":
            self.replies.send(("committed", self.source.commit(command[1])))
        elif kind == "seek":
            self.source.seek(command[1], command[2])
        elif kind == "pause":
            self.source.pause(command[1])
        elif kind == "resume":
            self.source.resume(command[1])
        elif kind == "close":
            self.closing = True
        return bool(kind == "done")

    def _rebalance(self, kind: str, *args: Any) -> None:
        """Inside the child's poll: the daemon handles it, then says done."""
        self.data.send((kind, *args))
        while not self.closing:
            if self.serve(self.commands.recv()):
                return
