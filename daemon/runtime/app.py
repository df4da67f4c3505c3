"""The one place that wires config → source → pipeline → sinks → HTTP, and the main loop."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

import structlog
from kafka.errors import KafkaError

from daemon import __version__
from daemon.config import Config, ConfigError
from daemon.export.alertpush import AlertPusher, firing
from daemon.export.exposition import (
    BATCH_BUCKETS,
    NOTIFICATION_OUTCOMES,
    CheckpointStats,
    LoopStats,
    MetricsExposition,
    RetrainingStats,
)
from daemon.ingest.batch import Key, build, derive_llm
from daemon.ingest.consumer import ConsumerProcess
from daemon.ingest.decode import DecodeFailure, EventDecoder
from daemon.ingest.events import InferenceEvent
from daemon.ingest.invalid import InvalidRecords
from daemon.ingest.kafka import KafkaDeadLetter, KafkaSource
from daemon.ingest.liveness import BrokerProbe
from daemon.ingest.sources import PartitionedSource, TopicPartition
from daemon.monitors.drift import Calibrator, reference_values
from daemon.monitors.traffic import Histograms
from daemon.pipeline import AlertSink, CanarySink, Pipeline
from daemon.retraining.outbox import Outbox, OutboxError
from daemon.retraining.receiver import PayloadError, authorized, parse_alertmanager
from daemon.retraining.sender import Sender
from daemon.retraining.triggers import Triggers
from daemon.runtime.http import HttpServer
from daemon.runtime.lifecycle import Shutdown, Watchdog, arm_deadline
from daemon.runtime.logs import SampledLog
from daemon.shadow.service import ShadowService
from daemon.state.checkpoint import CheckpointError, KafkaCheckpoints, LocalCheckpoints
from daemon.state.handover import Handover

log = structlog.get_logger(__name__)

# How often the broker probe asks for an answer (inferwatch_source_up).
PROBE_INTERVAL_S = 1.0
# Backoff between attempts to reach the broker at start-up.
CONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


def build_pipeline(
    config: Config,
    sampled: SampledLog | None = None,
    *,
    join_labels: bool = False,
    calibration_workers: int = 0,
    alert_sink: AlertSink | None = None,
    canary_sink: CanarySink | None = None,
) -> Pipeline:
    """The pipeline alone (replay, benchmarks) or the daemon's.

    `sampled` rate-limits invalid-record lines. Predictions wait for labels in a join when a
    labels topic is configured or `join_labels` is set (replay --labels). Calibration runs inline
    unless `calibration_workers` threads are asked for (the daemon: off the ingest loop).
    """
    return Pipeline(
        config,
        InvalidRecords(sampled or SampledLog(config.logging.invalid_sample_seconds)),
        calibrator=Calibrator(calibration_workers),
        join_labels=join_labels,
        alert_sink=alert_sink,
        canary_sink=canary_sink,
        references=load_references(config),
    )


def load_references(config: Config) -> dict[Key, dict[str, list[Any]]]:
    """drift.reference_file's events, as reference values per key and stream ({} without one)."""
    path = config.drift.reference_file
    if path is None:
        return {}
    decoder = EventDecoder(config.limits.max_event_bytes, InferenceEvent)
    events: list[InferenceEvent] = []
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                event = decoder.decode(line)
                if isinstance(event, DecodeFailure):
                    raise ConfigError(f"drift.reference_file: {path} line {n} is not a valid event: {event.detail}")
                events.append(event)
    except OSError as exc:
        raise ConfigError(f"drift.reference_file: cannot read {path}: {exc.strerror}") from None
    if not events:
        return {}
    batch = build(events, [0] * len(events), list(range(len(events))), [None] * len(events))
    derive_llm(batch)  # as the decoder does: time per output token from latency, TTFT and tokens
    return reference_values(batch, config.drift, config.limits.max_features)


class Daemon:
    """Consume, process, flush, commit; serve HTTP throughout; drain within the deadline on exit.

    The Kafka clients are built in `run()`, retried with backoff while the broker is away, and
    /healthz and /readyz keep answering meanwhile.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = time.time()
        self.source_errors: dict[str, int] = {}
        self.dead_letter_counts: dict[str, int] = {"sent": 0, "failed": 0, "dropped": 0}
        self.sampled = SampledLog(config.logging.invalid_sample_seconds)
        # Created with the source, under the same retry: the broker may be away at start-up.
        self.dead_letter: KafkaDeadLetter | None = None
        self.pipeline = build_pipeline(config, self.sampled, calibration_workers=1)
        self.shadow = ShadowService(config.shadow, log_level=config.logging.level) if config.shadow.enabled else None
        self.pusher = AlertPusher(config.alertmanager_push) if config.alertmanager_push.urls else None
        self.notifications = dict.fromkeys(NOTIFICATION_OUTCOMES, 0)
        self._notifications_lock = threading.Lock()  # the HTTP server answers on several threads
        self.outbox, self.sender, self.triggers = self._retraining(config)
        self.batch_duration = Histograms.single(BATCH_BUCKETS)
        self.exposition = MetricsExposition(self.pipeline, config.metrics, self._loop_stats)
        self.watchdog = Watchdog(config.lifecycle.watchdog_timeout_seconds)
        self.shutdown = Shutdown()
        self.http = HttpServer(
            config.http,
            self.exposition.render,
            self.watchdog,
            self.status,
            self.canary_report,
            self.shadow_report,
            self.receive_alertmanager if config.receiver.token is not None else None,
            config.receiver.max_body_bytes,
            self.drift_reference if config.http.admin_token is not None else None,
        )
        self._source: PartitionedSource | None = None
        self.probe: BrokerProbe | None = None
        self._lag: Mapping[TopicPartition, int] = {}
        # Processed, not yet committed: kept across failed commits (broker away) and retried.
        self._pending: dict[TopicPartition, int] = {}
        # Where state follows partitions (checkpoint.store is not off): built with the store.
        self.handover: Handover | None = None
        # A checkpoint that cannot be restored (bad content, not an outage): the loop stops, exit 1.
        self._restore_failed: str | None = None
        self._next_checkpoint = 0.0
        self.checkpoint_stats = CheckpointStats()
        c = config.checkpoint
        if c.store == "directory":
            assert c.directory is not None
            store = LocalCheckpoints(c.directory, config.source.kafka.group_id)
            try:
                process = store.load_process()
                if process is not None:
                    self.pipeline.restore_process(process)
            except (CheckpointError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"checkpoint.directory: {exc}") from None
            self.handover = Handover(self.pipeline, store, self.checkpoint_stats, c.timeout_seconds)

    def _open_checkpoints(self) -> None:
        """The topic store, built in `_connect`'s retry (the broker may be away at start-up)."""
        c, kafka = self.config.checkpoint, self.config.source.kafka
        if c.store == "kafka" and self.handover is None:
            store = KafkaCheckpoints(
                kafka.bootstrap_servers,
                c.topic or f"{kafka.group_id}-inferwatch-checkpoints",
                kafka.group_id,
                max_record_bytes=c.max_record_bytes,
                timeout_s=c.timeout_seconds,
            )
            self.handover = Handover(self.pipeline, store, self.checkpoint_stats, c.timeout_seconds)

    def after_assign(self, partitions: list[TopicPartition]) -> None:
        """Restore the state of newly assigned partitions, then seek them to its offsets."""
        if self.handover is not None and self._source is not None:
            self._restore(self._source, partitions)

    def _restore(self, source: PartitionedSource, partitions: list[TopicPartition]) -> None:
        assert self.handover is not None
        try:
            resume = self.handover.assigned(partitions)
        except CheckpointError as exc:
            self._restore_failed = str(exc)
            log.error("checkpoint_unusable", error=str(exc))
            self.shutdown.request()
            return
        for tp, offset in resume.items():
            if tp in partitions:
                source.seek(tp, offset)
        paused = self.handover.paused
        source.pause([tp for tp in partitions if tp in paused])
        source.resume([tp for tp in partitions if tp not in paused])

    def _loop_stats(self) -> LoopStats:
        # An outage: no broker answer to the probe (every PROBE_INTERVAL_S) for a whole session
        # timeout, the silence after which the coordinator evicts a member.
        contact = self.probe.last_contact if self.probe is not None else None
        outage_s = self.config.source.kafka.session_timeout_ms / 1000.0
        return LoopStats(
            source_up=contact is not None and time.time() - contact <= outage_s,
            source_last_contact=contact,
            lag=dict(self._lag),
            source_errors=dict(self.source_errors),
            dead_letter=dict(self.dead_letter_counts),
            batch_duration=self.batch_duration,
            shadow=self.shadow.report() if self.shadow is not None else None,
            pushes=dict(self.pusher.sent) if self.pusher is not None else {},
            retraining=self._retraining_stats(),
            checkpoint=self.checkpoint_stats if self.handover is not None else None,
        )

    @staticmethod
    def _retraining(config: Config) -> tuple[Outbox | None, Sender | None, Triggers | None]:
        r = config.retraining
        if not r.enabled:
            return None, None, None
        try:
            outbox = Outbox(r.outbox_file)
        except (OSError, sqlite3.Error, OutboxError) as exc:
            raise ConfigError(f"retraining.outbox_file: cannot open {r.outbox_file}: {exc}") from None
        sender = Sender(
            outbox,
            r.endpoints,
            initial_backoff=r.initial_backoff_seconds,
            max_backoff=r.max_backoff_seconds,
            give_up_after=r.give_up_after_seconds,
        )
        triggers = Triggers(r.policies, outbox, [e.name for e in r.endpoints], on_fired=sender.wake)
        return outbox, sender, triggers

    def _count(self, outcome: str) -> None:
        with self._notifications_lock:
            self.notifications[outcome] += 1

    def _retraining_stats(self) -> RetrainingStats:
        if self.outbox is None or self.sender is None or self.triggers is None:
            return RetrainingStats(dict(self.notifications))
        names = [e.name for e in self.config.retraining.endpoints]
        return RetrainingStats(
            notifications=dict(self.notifications),
            triggers=dict(self.triggers.counts),
            pending_alerts=self.triggers.pending,
            delivered=dict(self.sender.delivered),
            failed=dict(self.sender.failed),
            attempts=dict(self.sender.attempts),
            endpoints=self.outbox.stats(names),
        )

    def receive_alertmanager(self, authorization: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
        """POST /v1/alertmanager: an Alertmanager webhook (version 4) -> retraining triggers."""
        token = self.config.receiver.token
        if token is None or not authorized(authorization, token):
            self._count("unauthorized")
            return 401, {"error": "a valid bearer token (receiver.token) is required"}
        try:
            alerts = parse_alertmanager(body)
        except PayloadError as exc:
            self._count("malformed")
            return 400, {"error": str(exc)}
        self._count("accepted")
        if self.triggers is not None:
            self.triggers.on_alerts(alerts)
        return 200, {"alerts": len(alerts), "retraining": self.triggers is not None}

    def drift_reference(self, authorization: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
        """POST /v1/drift/reference: {"action": "reset" | "pin" | "unpin", "model": ..., and optional
        "version", "variant", "stream"} -> the streams it applied to."""
        token = self.config.http.admin_token
        if token is None or not authorized(authorization, token):
            return 401, {"error": "a valid bearer token (http.admin_token) is required"}
        try:
            request = json.loads(body)
        except ValueError as exc:
            return 400, {"error": f"the body is not JSON: {exc}"}
        fields = ("action", "model", "version", "variant", "stream")
        if not isinstance(request, dict) or set(request) - set(fields):
            return 400, {"error": f"the body must be a JSON object with the fields {list(fields)}"}
        if request.get("action") not in ("reset", "pin", "unpin"):
            return 400, {"error": "action must be reset, pin or unpin"}
        for name in fields[1:]:
            if not isinstance(request.get(name, ""), str) or (name == "model" and not request.get(name)):
                return 400, {"error": f"{name} must be a string" + (" (required)" if name == "model" else "")}
        done = self.pipeline.drift_reference(
            request["action"], request["model"], request.get("version"), request.get("variant"), request.get("stream")
        )
        if not done:
            return 404, {"error": "no drift stream here matches", "request": request}
        log.info("drift_reference", action=request["action"], model=request["model"], streams=len(done))
        return 200, {"action": request["action"], "streams": done}

    def status(self) -> dict[str, Any]:
        p = self.pipeline
        keys = p.summary()
        invalid = p.totals().invalid
        with p.lock:
            overflow = dict(p.overflow.counts)
        return {
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started, 3),
            "events": sum(k["events"] for k in keys),
            "invalid": {r: n for r, n in invalid.items() if n},
            "overflow": overflow,
            "lag": {f"{t}/{p}": n for (t, p), n in sorted(self._lag.items())},
            "keys": keys,
        }

    def canary_report(self, model: str | None) -> dict[str, Any] | None:
        """/v1/canary (model None) or /v1/canary/{model}; None for a model without a canary."""
        return self.pipeline.canary_report(model)

    def shadow_report(self) -> dict[str, Any]:
        """/v1/shadow: schedule, run counts and the latest run ({"enabled": false} when off)."""
        if self.shadow is None:
            return {"enabled": False}
        return {"enabled": True, **self.shadow.report()}

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        if self.shadow is not None:
            # Bad model files or mappings fail at start-up, like any other bad config.
            errors = self.shadow.validate()
            if errors:
                raise ConfigError("shadow models do not fit their config:\n  " + "\n  ".join(errors))
        if threading.current_thread() is threading.main_thread():
            self.shutdown.install()
        done = threading.Event()
        arm_deadline(self.shutdown, self.config.lifecycle.shutdown_timeout_seconds, done)
        with ExitStack() as stack:
            stack.callback(done.set)
            self.http.start()
            stack.callback(self.http.stop)
            stack.callback(self.pipeline.calibrator.close)
            if self.shadow is not None:
                stack.callback(self.shadow.close)
            if self.pusher is not None:
                self.pusher.start()
                stack.callback(self.pusher.stop)
            if self.sender is not None and self.outbox is not None:
                self.sender.start()
                stack.callback(self.outbox.close)  # after the sender stops (callbacks run last-in first-out)
                stack.callback(self.sender.stop, 5.0)
            log.info(
                "started",
                version=__version__,
                http_port=self.http.port,
                metrics_port=self.http.metrics_port,
                topics=self.config.source.kafka.topics,
            )
            self.watchdog.ready = True
            kafka = self.config.source.kafka
            self.probe = BrokerProbe(
                kafka.bootstrap_servers, kafka.client_id, PROBE_INTERVAL_S, kafka.session_timeout_ms / 2000.0
            ).start()
            stack.callback(self.probe.stop)
            source = self._connect()
            if source is None:
                return 0
            stack.callback(source.close)
            if self.dead_letter is not None:
                stack.callback(self.dead_letter.close)
            if self.handover is not None:
                stack.callback(self.handover.store.close)
            self._loop(source)
            self.watchdog.ready = False
            if self._restore_failed is not None:
                log.error("stopped", reason=self._restore_failed)
                return 1  # nothing committed: the next start (or replica) restores the partition
            committed = self._flush_and_commit(source)
            log.info("stopped", committed=committed, pending=len(self._pending))
        return 0

    def _connect(self) -> PartitionedSource | None:
        attempt = 0
        while not self.shutdown.requested:
            self.watchdog.beat()
            try:
                if self.config.dead_letter.topic and self.dead_letter is None:
                    self.dead_letter = KafkaDeadLetter(
                        self.config.source.kafka.bootstrap_servers,
                        self.config.dead_letter.topic,
                        self.dead_letter_counts,
                        self.config.dead_letter.max_buffered_bytes,
                    )
                    self.pipeline.invalid.dead_letter = self.dead_letter
                self._open_checkpoints()
                labels_topic = self.config.labels.topic
                extra = (labels_topic,) if labels_topic else ()
                kafka = self.config.source.kafka
                source: PartitionedSource
                if kafka.consumer_process:
                    logging = self.config.logging
                    settings = (logging.level, logging.format)
                    source = ConsumerProcess(kafka, self.source_errors, settings, logging.invalid_sample_seconds, extra)
                else:
                    source = KafkaSource(kafka, self.source_errors, self.sampled, extra)
                source.before_revoke = self.before_revoke
                source.after_assign = self.after_assign
            except KafkaError as exc:
                self.source_errors["connect"] = self.source_errors.get("connect", 0) + 1
                delay = CONNECT_BACKOFF_S[min(attempt, len(CONNECT_BACKOFF_S) - 1)]
                log.warning("source_unavailable", error=repr(exc), retry_in_seconds=delay)
                attempt += 1
                self.shutdown.wait(delay)
                continue
            self._source = source
            return source
        return None

    def _loop(self, source: PartitionedSource) -> None:
        timeout_s = self.config.source.kafka.poll_timeout_ms / 1000.0
        process = self.pipeline.process
        # Half the poll interval: past it, the group could evict us before the next poll.
        slow_batch_s = self.config.source.kafka.max_poll_interval_ms / 2000.0
        commit_interval_s = self.config.source.kafka.commit_interval_ms / 1000.0
        next_commit = 0.0
        self._next_checkpoint = time.monotonic() + self.config.checkpoint.interval_seconds
        while not self.shutdown.requested:
            self.watchdog.beat()
            records = source.poll(timeout_s)
            if records:
                t0 = time.perf_counter()
                done = process(records)
                self._pending.update(done)
                if self.handover is not None:
                    self.handover.position.update(done)
                elapsed = time.perf_counter() - t0
                self.batch_duration.observe_one(elapsed)
                if elapsed > slow_batch_s:
                    log.warning("slow_batch", seconds=round(elapsed, 3), records=len(records))
            if self.triggers is not None:
                self.triggers.tick()  # sustained alerts fire within a poll of their deadline
            if time.monotonic() >= next_commit:
                self.pipeline.tick()
                if self.shadow is not None:
                    self.shadow.poll(self.pipeline.reservoir_sizes(), self.pipeline.shadow_samples)
                if self.pusher is not None:
                    shadow = self.shadow.report() if self.shadow is not None else None
                    push = self.config.alertmanager_push
                    self.pusher.update(firing(self.pipeline, shadow, push.conditions, self.config.drift.hold_seconds))
                if self.handover is not None:
                    self._checkpoint_step(source)
                elif self._pending:
                    self._flush_and_commit(source)
                next_commit = time.monotonic() + commit_interval_s
            self._lag = source.lag()

    def _checkpoint_step(self, source: PartitionedSource) -> None:
        """With checkpoints, offsets are committed only once a checkpoint holding them is stored,
        every checkpoint.interval_seconds; the write goes on while the loop does."""
        h = self.handover
        assert h is not None
        safe = h.finished()
        if safe is not None:
            self._commit(source, safe)
        if h.retry_due():
            self._restore(source, list(h.paused))
        if not h.writing and self._pending and time.monotonic() >= self._next_checkpoint:
            if self._flush_dead_letters():
                h.checkpoint(self._pending)
                safe = h.finished()  # the directory store is done already
                if safe is not None:
                    self._commit(source, safe)
            self._next_checkpoint = time.monotonic() + self.config.checkpoint.interval_seconds

    def _flush_dead_letters(self) -> bool:
        """Sinks before offsets: never commit a record whose dead-letter copy is in flight.

        A copy the broker refused is counted (outcome="failed") and not retried: a missing
        dead-letter topic must not stop ingestion.
        """
        timeout_s = self.config.lifecycle.shutdown_timeout_seconds / 2
        return self.dead_letter is None or self.dead_letter.flush(timeout_s)

    def _commit(self, source: PartitionedSource, offsets: Mapping[TopicPartition, int]) -> bool:
        if not source.commit(offsets):
            return False
        for tp, offset in list(offsets.items()):  # `offsets` may be `_pending` itself
            if self._pending.get(tp) == offset:
                del self._pending[tp]
        return True

    def _flush_and_commit(self, source: PartitionedSource) -> bool:
        """Everything processed made safe and committed now (shutdown, revoke, no checkpoints)."""
        if not self._pending:
            return True
        if not self._flush_dead_letters():
            return False
        offsets: Mapping[TopicPartition, int] | None = self._pending
        if self.handover is not None:
            offsets = self.handover.checkpoint_now(self._pending)  # never commit what is not stored
        return offsets is not None and self._commit(source, offsets)

    def before_revoke(self, partitions: list[TopicPartition], lost: bool) -> None:
        # Lost partitions may be someone else's already: neither their offsets nor a checkpoint
        # of them may be written (the new owner resumed from what is stored).
        if self._source is not None and self._restore_failed is None and not lost:
            self._flush_and_commit(self._source)
        # What could not be committed now belongs to the partition's next owner.
        for tp in partitions:
            self._pending.pop(tp, None)
        if self.handover is not None:
            self.handover.revoked(partitions)
