"""A RabbitMQ restart loses nothing: durable queues, persistent messages, clients that reconnect.

It restarts a RabbitMQ node of its own (``PrivateRabbit``: its own name,
ports and data), never the shared server.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import AsyncIterator, Iterator

import pytest
from chaos_brokers import PrivateRabbit, skip_or_fail

from pq.brokers import Envelope, QueueSize
from pq.brokers.amqp import AmqpBroker

from amqp_helpers import drain, rabbitmqctl


@pytest.fixture
def rabbit() -> Iterator[PrivateRabbit]:
    reason = PrivateRabbit.unavailable()
    if reason:
        skip_or_fail(reason)
    node = PrivateRabbit()
    try:
        node.start()
        yield node
    finally:
        node.close()


@pytest.fixture
async def brokers(rabbit: PrivateRabbit) -> AsyncIterator[tuple[AmqpBroker, AmqpBroker]]:
    namespace = f"pqtest-{uuid.uuid4().hex[:10]}"
    pair = (AmqpBroker(rabbit.url, namespace=namespace, connection_name=f"{namespace}-producer"),
            AmqpBroker(rabbit.url, namespace=namespace, connection_name=f"{namespace}-consumer"))
    for broker in pair:
        await broker.connect()
    yield pair
    for broker in pair:
        await broker.close()


@pytest.mark.timeout(240)
async def test_restart_loses_nothing(rabbit: PrivateRabbit, brokers: tuple[AmqpBroker, AmqpBroker]) -> None:
    producer, consumer = brokers
    await producer.enqueue([Envelope(f"m{i}", "q", b"x") for i in range(100)])
    await producer.enqueue([Envelope(f"d{i}", "q", b"x", eta=time.time() + 3) for i in range(10)])
    held = await consumer.fetch(["q"], 5, 0, 30.0, "c")
    assert len(held) == 5
    await asyncio.to_thread(rabbitmqctl, "-n", rabbit.node, "stop_app")
    try:
        await consumer.ack(held)
    finally:
        await asyncio.to_thread(rabbitmqctl, "-n", rabbit.node, "start_app")
    await producer.enqueue([Envelope("after", "q", b"x")])
    got = await drain(consumer, "q", 111, timeout=60)
    assert {d.id for d in got} == {f"m{i}" for i in range(100)} | {f"d{i}" for i in range(10)} | {"after"}
    assert sorted(d.deliveries for d in got if d.id in {h.id for h in held}) == [2] * 5
    assert (await consumer.sizes(["q"]))["q"] == QueueSize()
