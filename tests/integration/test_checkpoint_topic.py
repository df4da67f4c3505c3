"""The compacted-topic checkpoint store on the real broker: shards in chunks, newest complete one
wins, an interrupted write is ignored, replaced checkpoints get tombstones, other groups' are not read."""

from __future__ import annotations

import random
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from daemon.dev.broker import TansuBroker
from daemon.state import codec
from daemon.state.checkpoint import FORMAT, KafkaCheckpoints


def _shard(partition: int, offset: int, payload: int) -> dict[str, Any]:
    # Random digits barely compress: several 1 KiB records per shard.
    rng = random.Random(partition * 1000 + offset)
    return {
        "partition": partition,
        "offsets": [["events", offset], ["labels", offset // 2]],
        "data": "".join(rng.choice("0123456789") for _ in range(payload)),
    }


def _snapshot(offset: int, partitions: tuple[int, ...] = (0, 1)) -> dict[str, Any]:
    return {"process": {}, "partitions": {str(p): _shard(p, offset, 5000) for p in partitions}}


def _store(broker: TansuBroker, topic: str, group: str = "g") -> KafkaCheckpoints:
    return KafkaCheckpoints((broker.bootstrap,), topic, group, max_record_bytes=1024, timeout_s=10)


def _records(broker: TansuBroker, topic: str) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=[broker.bootstrap], enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    out: list[Any] = []
    while consumer.highwater(tp) is None or consumer.position(tp) < (consumer.highwater(tp) or 0):
        for batch in consumer.poll(timeout_ms=500).values():
            out.extend(batch)
    consumer.close()
    return out


def test_newest_complete_shard_per_partition_comes_back(broker: TansuBroker, unique: str) -> None:
    topic = f"ckpt-store-{unique}"
    store = _store(broker, topic)
    assert store.load([0, 1]) == {}  # a new topic: nothing to restore
    store.save(_snapshot(100)).result(10)
    store.save(_snapshot(200)).result(10)
    store.close()
    reader = _store(broker, topic)
    assert reader.load([1, 5]) == {1: _shard(1, 200, 5000)}
    records = _records(broker, topic)
    assert sum(r.value is not None for r in records) >= 2 * 2 * 3  # several chunks per shard
    # The first checkpoint's chunks were tombstoned once the second was complete.
    # Keys are <partition>/<writer>-<sequence>/<chunk>: the first save wrote sequences 1 and 2.
    first = {r.key for r in records if r.value is not None and r.key.split(b"/")[1].endswith((b"-1", b"-2"))}
    assert first and first <= {r.key for r in records if r.value is None}
    reader.close()


def test_an_interrupted_write_is_ignored_and_the_furthest_offsets_win(broker: TansuBroker, unique: str) -> None:
    topic = f"ckpt-torn-{unique}"
    store = _store(broker, topic)
    store.save(_snapshot(300, (0,))).result(10)
    # A writer killed mid-checkpoint: 1 chunk of 3 of a shard that got further.
    producer = KafkaProducer(bootstrap_servers=[broker.bootstrap])
    headers = [
        ("format", FORMAT.encode()),
        ("version", str(codec.VERSION).encode()),
        ("group", b"g"),
        ("chunks", b"3"),
        ("position", b"999999"),
    ]
    producer.send(topic, key=b"0/dead-1/0", value=b"x" * 100, headers=headers, partition=0)
    # A zombie (a replica that lost the partition) that wrote an older state after the new owner.
    zombie = _store(broker, topic)
    zombie.save(_snapshot(250, (0,))).result(10)
    # And another group's checkpoint of the same partition in the same topic.
    _store(broker, topic, group="other").save(_snapshot(900, (0,))).result(10)
    producer.flush()
    producer.close()
    assert _store(broker, topic).load([0]) == {0: _shard(0, 300, 5000)}
