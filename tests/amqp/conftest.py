"""Fixtures for the RabbitMQ-specific tests: brokers on the shared server, each test in its own namespace.

Tests skip when RabbitMQ is unreachable, except under ``CI=true`` where that
is a failure.  Every broker made here is dropped after the test, so the
queues and exchanges it declared are deleted.
"""
from __future__ import annotations

import os
import socket
import uuid
from typing import AsyncIterator
from urllib.parse import urlsplit

import pytest

from pq.brokers.amqp import AmqpBroker

AMQP_URL = os.environ.get("PQ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: RabbitMQ must be up)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    parts = urlsplit(AMQP_URL)
    address = (parts.hostname or "127.0.0.1", parts.port or 5672)
    try:
        socket.create_connection(address, timeout=1.0).close()
    except OSError as exc:
        unavailable(f"RabbitMQ is not reachable at {address[0]}:{address[1]} ({exc}); set PQ_TEST_AMQP_URL")
    return AMQP_URL


@pytest.fixture
def namespace() -> str:
    return f"pqtest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def make(amqp_url: str, namespace: str) -> AsyncIterator:
    """``await make(**options)``: a connected broker in the test's namespace, dropped and closed after."""
    made: list[AmqpBroker] = []

    async def factory(ns: str | None = None, **options: object) -> AmqpBroker:
        options.setdefault("connection_name", f"{ns or namespace}-{len(made)}")
        broker = AmqpBroker(amqp_url, namespace=ns or namespace, **options)
        made.append(broker)
        await broker.connect()
        return broker

    yield factory
    for broker in reversed(made):
        try:
            await broker.drop()
        finally:
            await broker.close()


@pytest.fixture
async def broker(make) -> AmqpBroker:
    return await make()
