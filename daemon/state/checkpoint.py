"""Checkpoint stores: the pipeline's state, one shard per partition, with the offsets it reflects.

A shard (`Pipeline.snapshot()["partitions"][p]`) is partition p's state and its next offset on
every topic, so the replica that is assigned p restores it alone (state follows partitions, as in
Kafka Streams). The daemon writes shards before it commits the same offsets, so a restore never
misses an event the broker thinks was processed, and resumes at the shard's offsets, so it
counts none twice. Shards are encoded by `daemon.state.codec` (binary, versioned), on a writer
thread of the store: the loop hands over a copy and goes on. Two stores:

- `KafkaCheckpoints` (the default): a compacted topic. Each encoded shard is cut into records of
  at most `max_record_bytes` keyed `<partition>/<checkpoint id>/<chunk>`; once a shard is
  complete on the broker, the previous one's records get tombstones, which compaction turns into
  space. A reader takes, per partition, the complete checkpoint with the furthest offsets: a
  crash mid-write leaves an incomplete one, which is ignored, and the previous one.
- `LocalCheckpoints`: a directory, one file per partition plus the process-wide counters, each
  replaced atomically. For single replicas (or replicas sharing one volume).

The process-wide counters (records, invalid records, overflow, label-join outcomes) belong to no
partition: only the directory store keeps them; with the topic they restart from zero, like any
exporter's counters.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import structlog
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError
from kafka.structs import TopicPartition as KafkaTP

from daemon.runtime.files import write_atomically
from daemon.state import codec

log = structlog.get_logger(__name__)

FORMAT = "inferwatch-checkpoint"
# Files of earlier formats, which this one does not read: the first (one file per process) and
# the second (JSON per partition).
OLD_FILES = ("checkpoint.json", "process.json")
SUFFIX = ".ckpt"


class CheckpointError(Exception):
    """A checkpoint that cannot be written or read: the message says where and why."""


class Write(Protocol):
    """A checkpoint on its way to the store; the loop polls it, so a hung broker cannot hang it."""

    def done(self) -> bool: ...

    def result(self, timeout_s: float = 0.0) -> None:
        """Wait up to `timeout_s` for the write; raise CheckpointError if it failed or is not done."""
        ...


class Writing:
    """A write running on the store's writer thread (encoding first, then the store's own I/O)."""

    def __init__(self, future: Future[None]) -> None:
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout_s: float = 0.0) -> None:
        try:
            self._future.result(timeout=timeout_s)
        except TimeoutError:
            raise CheckpointError(f"checkpoint not written within {timeout_s:g} s") from None
        except CheckpointError:
            raise
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"checkpoint not written: {exc!r}") from None


class _Writer:
    """One thread that encodes and writes checkpoints in the order they were saved."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)

    def submit(self, job: Callable[[], None]) -> Writing:
        return Writing(self._pool.submit(job))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class CheckpointStore(Protocol):
    where: str

    def save(self, snapshot: Mapping[str, Any]) -> Write:
        """Every shard of a `Pipeline.snapshot()`, then the process-wide part (if kept), encoded and
        written on the store's writer thread (the snapshot is a copy: the loop goes on)."""
        ...

    def load(self, partitions: Collection[int]) -> dict[int, dict[str, Any]]:
        """The newest complete shard of each of `partitions` that has one."""
        ...

    def load_process(self) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


def shard_position(shard: Mapping[str, Any]) -> int:
    """How far a shard got: the sum of its next offsets (offsets only grow)."""
    return sum(int(o) for _, o in shard["offsets"])


class LocalCheckpoints:
    def __init__(self, directory: str | Path, group_id: str) -> None:
        self.directory = Path(directory)
        self.group_id = group_id
        self.where = f"directory {self.directory}"
        self._writer = _Writer("checkpoint-file")

    def _file(self, partition: int | None) -> Path:
        return self.directory / (f"process{SUFFIX}" if partition is None else f"partition-{partition}{SUFFIX}")

    def save(self, snapshot: Mapping[str, Any]) -> Write:
        return self._writer.submit(lambda: self._save(snapshot))

    def _save(self, snapshot: Mapping[str, Any]) -> None:
        for p, shard in snapshot["partitions"].items():
            self._write(self._file(int(p)), shard)
        self._write(self._file(None), snapshot["process"])

    def _write(self, path: Path, state: Mapping[str, Any]) -> None:
        body = {"format": FORMAT, "group_id": self.group_id, "written_at": time.time(), "state": state}
        write_atomically(path, codec.encode(body))

    def load(self, partitions: Collection[int]) -> dict[int, dict[str, Any]]:
        shards = {p: self._read(self._file(p)) for p in partitions}
        return {p: s for p, s in shards.items() if s is not None}

    def load_process(self) -> dict[str, Any] | None:
        for name in OLD_FILES:
            if (self.directory / name).exists():
                raise CheckpointError(
                    f"{self.directory / name} is a checkpoint of an older inferwatch, which this version does not "
                    "read; move it away to start afresh"
                )
        return self._read(self._file(None))

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            body = codec.decode(path.read_bytes())
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(f"checkpoint {path} cannot be read ({exc}); move it away to start afresh") from None
        except codec.CodecError as exc:
            raise CheckpointError(f"checkpoint {path} cannot be used: {exc}") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not an inferwatch checkpoint; move it away to start afresh")
        if body.get("group_id") != self.group_id:
            raise CheckpointError(
                f"checkpoint {path} belongs to consumer group {body.get('group_id')!r}, not {self.group_id!r}: its "
                "offsets mean nothing to this group; point checkpoint.directory elsewhere or move it away"
            )
        state: dict[str, Any] = body["state"]
        return state

    def close(self) -> None:
        self._writer.close()


class KafkaCheckpoints:
    """Shards in a compacted topic of one partition (created if missing).

    One partition keeps the layout independent of the source's partition count; a replica reads
    it at each assignment, which compaction keeps to about one checkpoint per source partition.
    """

    def __init__(
        self,
        bootstrap_servers: tuple[str, ...],
        topic: str,
        group_id: str,
        *,
        max_record_bytes: int,
        timeout_s: float,
    ) -> None:
        self.bootstrap = list(bootstrap_servers)
        self.topic = topic
        self.group_id = group_id
        self.max_record_bytes = max_record_bytes
        self.timeout_s = timeout_s
        self.where = f"topic {topic}"
        self._writer_id = uuid.uuid4().hex[:12]
        self._seq = 0
        self._writer = _Writer("checkpoint-topic")
        # Per partition, the record keys of checkpoints that a newer complete one replaces.
        self._stale: dict[int, set[bytes]] = {}
        self._create_topic()
        self._producer = KafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=0,
            max_request_size=max(max_record_bytes + 4096, 1_048_576),
            request_timeout_ms=int(timeout_s * 1000),
            # A checkpoint that finds no metadata or buffer space fails at once, and the next one
            # tries again (the writer thread must not queue checkpoints behind a hung broker).
            max_block_ms=1000,
        )
        self._producer.partitions_for(topic)  # metadata now, while the broker answers

    def _create_topic(self) -> None:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=int(self.timeout_s * 1000))
        try:
            # Replicated like a production topic where the cluster allows it (3), else on every broker.
            replicas = min(3, len(admin.describe_cluster()["brokers"]))
            admin.create_topics([NewTopic(self.topic, 1, replicas, topic_configs={"cleanup.policy": "compact"})])
            log.info("checkpoint_topic_created", topic=self.topic, replicas=replicas)
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()

    def save(self, snapshot: Mapping[str, Any]) -> Write:
        shards = dict(snapshot["partitions"])
        return self._writer.submit(lambda: self._save(shards))

    def _save(self, shards: dict[Any, Any]) -> None:
        """On the writer thread: encode and send every shard, wait for the broker to have them all,
        then tombstone the checkpoints they replace."""
        deadline = time.monotonic() + self.timeout_s
        sent = [self._send_shard(int(p), shard) for p, shard in shards.items()]
        for partition, keys, futures in sent:
            try:
                for f in futures:
                    f.get(timeout=max(deadline - time.monotonic(), 0.0))
            except KafkaError as exc:
                raise self._failed(partition, exc) from None
            self._complete(partition, keys)

    def _send_shard(self, partition: int, shard: Mapping[str, Any]) -> tuple[int, list[bytes], list[Any]]:
        data = codec.encode(shard)
        self._seq += 1
        cid = f"{self._writer_id}-{self._seq}"
        size = self.max_record_bytes
        chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        headers = [
            ("format", FORMAT.encode()),
            ("version", str(codec.VERSION).encode()),
            ("group", self.group_id.encode()),
            ("chunks", str(len(chunks)).encode()),
            ("position", str(shard_position(shard)).encode()),
        ]
        keys = [f"{partition}/{cid}/{i}".encode() for i in range(len(chunks))]
        try:
            futures = [
                self._producer.send(self.topic, key=key, value=chunk, headers=headers, partition=0)
                for key, chunk in zip(keys, chunks, strict=True)
            ]
        except KafkaError as exc:
            raise self._failed(partition, exc) from None
        return partition, keys, futures

    def _failed(self, partition: int, exc: BaseException) -> CheckpointError:
        if isinstance(exc, UnknownTopicOrPartitionError):
            with contextlib.suppress(KafkaError):
                self._create_topic()  # deleted, or a broker that lost its data: the next write has it again
        return CheckpointError(f"checkpoint topic {self.topic}: partition {partition}'s shard not written: {exc!r}")

    def _complete(self, partition: int, keys: list[bytes]) -> None:
        """A shard complete on the broker: the previous checkpoints of its partition can go."""
        for key in self._stale.pop(partition, set()):
            self._producer.send(self.topic, key=key, value=None, partition=0)
        self._stale[partition] = set(keys)

    def load(self, partitions: Collection[int]) -> dict[int, dict[str, Any]]:
        wanted = set(partitions)
        if not wanted:
            return {}
        # partition -> checkpoint id -> chunk index -> bytes; and each id's chunk count and position.
        chunks: dict[int, dict[str, dict[int, bytes]]] = {}
        meta: dict[tuple[int, str], tuple[int, int, int]] = {}
        versions: dict[tuple[int, str], str] = {}
        for record in self._read_all():
            try:
                p_text, cid, i_text = record.key.decode().split("/")
                p, i = int(p_text), int(i_text)
            except (AttributeError, ValueError):
                continue  # not ours
            if p not in wanted:
                continue
            by_id = chunks.setdefault(p, {})
            if record.value is None:  # a tombstone
                by_id.get(cid, {}).pop(i, None)
                continue
            h = {k: v.decode() for k, v in record.headers}
            if h.get("format") != FORMAT or h.get("group") != self.group_id:
                continue
            by_id.setdefault(cid, {})[i] = record.value
            meta[(p, cid)] = (int(h["chunks"]), int(h["position"]), record.offset)
            versions[(p, cid)] = h.get("version", "2, JSON")
        shards: dict[int, dict[str, Any]] = {}
        for p, by_id in chunks.items():
            live = {f"{p}/{cid}/{i}".encode() for cid, parts in by_id.items() for i in parts}
            self._stale[p] = live  # replaced by this replica's next checkpoint of p
            complete = [cid for cid, parts in by_id.items() if parts and len(parts) == meta[(p, cid)][0]]
            if not complete:
                continue
            cid = max(complete, key=lambda c: meta[(p, c)][1:])
            if versions[(p, cid)] != str(codec.VERSION):
                raise CheckpointError(
                    f"checkpoint topic {self.topic}: partition {p}'s checkpoint was written by another inferwatch "
                    f"(format {versions[(p, cid)]}); this one reads format {codec.VERSION}: run the version that "
                    "wrote it, or delete the topic to start afresh"
                )
            parts = by_id[cid]
            try:
                shards[p] = codec.decode(b"".join(parts[i] for i in range(len(parts))))
            except (codec.CodecError, KeyError) as exc:
                raise CheckpointError(
                    f"checkpoint topic {self.topic}: partition {p}'s checkpoint {cid} cannot be decoded ({exc!r}); "
                    "delete the topic to start afresh"
                ) from None
        return shards

    def _read_all(self) -> list[Any]:
        """Every record of the topic, from its start to the high watermark that fetches report."""
        tp = KafkaTP(self.topic, 0)
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            request_timeout_ms=int(self.timeout_s * 1000) + 1000,
            receive_message_max_bytes=100 * 1024 * 1024,
        )
        records: list[Any] = []
        deadline = time.monotonic() + self.timeout_s
        try:
            if consumer.partitions_for_topic(self.topic) is None:
                self._create_topic()  # deleted, or a broker that lost its data: nothing to restore
                return records
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            while True:
                for batch in consumer.poll(timeout_ms=200).values():
                    records.extend(batch)
                high = consumer.highwater(tp)
                if high is not None and consumer.position(tp) >= high:
                    return records
                if time.monotonic() > deadline:
                    raise CheckpointError(
                        f"checkpoint topic {self.topic} not read within {self.timeout_s:g} s "
                        f"(checkpoint.timeout_seconds); {len(records)} records so far"
                    )
        except KafkaError as exc:
            raise CheckpointError(f"checkpoint topic {self.topic} cannot be read: {exc!r}") from None
        finally:
            consumer.close()

    def load_process(self) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        """At shutdown, after the final checkpoint: a producer that cannot close cleanly (its I/O
        thread gone, the broker away) only loses tombstones, so it is logged, not raised."""
        self._writer.close()
        try:
            self._producer.close(self.timeout_s)
        except (KafkaError, OSError) as exc:
            log.warning("checkpoint_producer_close_failed", topic=self.topic, error=repr(exc))
