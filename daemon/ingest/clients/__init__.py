"""One Kafka consumer in a group, as `KafkaSource` needs it, with one implementation per client
library (`source.kafka.client`):

- `kafka_python`: kafka-python 2.2, pure Python, the default: nothing to compile or ship;
- `confluent`: confluent-kafka (librdkafka), optional (`pip install 'inferwatch[confluent]'`):
  records are fetched and parsed in C, heartbeats run on librdkafka's own thread, and it offers
  static membership (`group_instance_id`) and cooperative rebalancing.

Everything above this protocol (event-time alignment, the repartition stage, the consumer process,
checkpoints) is the same for both. A client raises kafka-python's `KafkaError` for every failure,
whichever library it wraps, so that callers handle one error type.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol

from daemon.config import KafkaConfig
from daemon.ingest.sources import Chunk, TopicPartition

# Called by a client inside its poll when the group moves partitions: assigned once they are ours
# (seek and pause may be called on them from the callback); revoked before they go, their offsets
# still ours to commit, or lost (True: the group already gave them away, after a session timeout
# the client noticed; nothing of theirs may be committed).
Assigned = Callable[[list[TopicPartition]], None]
Revoked = Callable[[list[TopicPartition], bool], None]


class ConsumerClient(Protocol):
    def poll(self, timeout_s: float) -> list[Chunk]:
        """Records fetched since the last poll, one chunk per partition; runs rebalance callbacks."""
        ...

    def assignment(self) -> set[TopicPartition]: ...

    def pause(self, tps: Collection[TopicPartition]) -> None: ...

    def resume(self, tps: Collection[TopicPartition]) -> None: ...

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit next-offsets of assigned partitions, synchronously; raises KafkaError."""
        ...

    def unread(self) -> dict[TopicPartition, int]:
        """Records between the position and the high watermark, per assigned partition that has both."""
        ...

    def close(self) -> None:
        """Leave without committing and without rebalance callbacks."""
        ...


def open_client(
    config: KafkaConfig,
    topics: Sequence[str],
    on_assigned: Assigned,
    on_revoked: Revoked,
    *,
    cooperative: bool,
) -> ConsumerClient:
    """A subscribed consumer of `config.client`'s library.

    `cooperative`: the confluent client may rebalance cooperatively (cooperative-sticky); else,
    and always with kafka-python, rebalances are eager with the range assignor, which gives
    partition i of every topic (of equal partition counts) to the same member.
    """
    if config.client == "confluent":
        from daemon.ingest.clients.confluent import ConfluentClient

        return ConfluentClient(config, topics, on_assigned, on_revoked, cooperative=cooperative)
    from daemon.ingest.clients.kafka_python import KafkaPythonClient

    return KafkaPythonClient(config, topics, on_assigned, on_revoked)
