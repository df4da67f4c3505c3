from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from daemon.dev.broker import TansuBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[TansuBroker]:
    with TansuBroker() as b:
        yield b


@pytest.fixture(params=["kafka-python", "confluent"])
def kafka_client(request: pytest.FixtureRequest) -> str:
    """source.kafka.client: the Kafka-facing tests run against both client libraries."""
    return str(request.param)


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.nodeid.split("/"):
            item.add_marker(pytest.mark.integration)
