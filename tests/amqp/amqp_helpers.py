"""Helpers of the RabbitMQ tests: rabbitmqctl, raw publishing, draining a queue with a bound."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
from typing import Any, Callable

import aio_pika
import pytest

from pq.brokers import Delivery
from pq.brokers.amqp import AmqpBroker


def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl on this machine (skip the test when it is not installed)."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed")
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def close_connections(name: str) -> int:
    """Close (as an operator would) the server side of every connection of broker ``name``.

    That is the broker's own and its consumers' (named ``name/consumer``).
    """
    closed = 0
    for line in rabbitmqctl("list_connections", "pid", "client_properties").splitlines():
        pid, _, properties = line.partition("\t")
        if f'"{name}"' in properties or f'"{name}/' in properties:
            rabbitmqctl("close_connection", pid, "pq test")
            closed += 1
    return closed


async def eventually(predicate: Callable[[], Any], timeout: float = 2.0) -> None:
    """Wait until ``predicate()`` holds, at most ``timeout`` seconds (the assertion that follows says what failed)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate() and loop.time() < end:
        await asyncio.sleep(0.01)


async def drain(
    broker: AmqpBroker, queue: str, expected: int, consumer: str = "drain", timeout: float = 10.0,
) -> list[Delivery]:
    """Fetch and ack until ``expected`` different ids came; all deliveries (duplicates too); fail after ``timeout``."""
    got: list[Delivery] = []

    async def run() -> None:
        while len({d.id for d in got}) < expected:
            batch = await broker.fetch([queue], 50, 1.0, 30.0, consumer)
            got.extend(batch)
            await broker.ack(batch)

    try:
        await asyncio.wait_for(run(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"got {len({d.id for d in got})} of {expected} messages in {timeout}s") from None
    return got


async def publish_raw(url: str, routing_key: str, message: aio_pika.Message) -> None:
    """Publish as another program would, outside pq's conventions."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.default_exchange.publish(message, routing_key=routing_key)
    finally:
        await connection.close()
