"""A RabbitMQ restart loses nothing: durable queues, persistent messages, clients that reconnect.

It stops the shared server's application for a few seconds, which would
break anyone else's tests, so it runs only with ``PQ_TEST_AMQP_RESTART=1``.
"""
from __future__ import annotations

import asyncio
import os
import time

import pytest

from pq.brokers import Envelope, QueueSize

from amqp_helpers import drain, rabbitmqctl

pytestmark = pytest.mark.skipif(
    os.environ.get("PQ_TEST_AMQP_RESTART") != "1",
    reason="restarts the shared RabbitMQ; set PQ_TEST_AMQP_RESTART=1 to run it",
)


async def test_restart_loses_nothing(make) -> None:
    producer, consumer = await make(), await make()
    await producer.enqueue([Envelope(f"m{i}", "q", b"x") for i in range(100)])
    await producer.enqueue([Envelope(f"d{i}", "q", b"x", eta=time.time() + 3) for i in range(10)])
    held = await consumer.fetch(["q"], 5, 0, 30.0, "c")
    assert len(held) == 5
    await asyncio.to_thread(rabbitmqctl, "stop_app")
    try:
        await consumer.ack(held)
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
    await producer.enqueue([Envelope("after", "q", b"x")])
    got = await drain(consumer, "q", 111, timeout=30)
    assert {d.id for d in got} == {f"m{i}" for i in range(100)} | {f"d{i}" for i in range(10)} | {"after"}
    assert sorted(d.deliveries for d in got if d.id in {h.id for h in held}) == [2] * 5
    assert (await consumer.sizes(["q"]))["q"] == QueueSize()
