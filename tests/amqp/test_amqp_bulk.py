"""Publishing a batch as one write: confirms, returns, and the numbering rolled back on cancel."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pamqp.commands import Basic

from pq.brokers import Envelope
from pq.brokers.amqp_bulk import BULK, publish_many
from pq.brokers.amqp_topology import Outgoing

pytestmark = pytest.mark.skipif(not BULK, reason="publish_many needs aiormq 7")


class Stuck:
    """An aiormq channel whose write queue is full: the write never goes."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.is_closed = False
        self.number = 1
        self.delivery_tag = 7
        self.confirmations: dict[int, Any] = {}
        self.message_id_delivery_tag: dict[str, int] = {}
        self.write_queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        self.write_queue.put_nowait(None)

    def create_future(self) -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    def _split_body(self, body: bytes) -> list[Any]:
        return []


async def test_a_cancelled_batch_gives_its_numbers_back() -> None:
    channel = Stuck()
    outs = [Outgoing("", "q", b"", Basic.Properties(message_id=f"m{i}")) for i in range(3)]
    task = asyncio.create_task(publish_many(channel, outs))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (channel.delivery_tag, channel.confirmations, channel.message_id_delivery_tag) == (7, {}, {})


async def test_a_batch_is_confirmed_in_order(broker) -> None:
    await broker.enqueue([Envelope(f"m{i}", "q", f"{i}".encode()) for i in range(300)])
    got = await broker.fetch(["q"], 300, 0, 30.0, "c")
    assert [(d.id, d.body) for d in got] == [(f"m{i}", f"{i}".encode()) for i in range(300)]
    await broker.ack(got)


async def test_a_batch_to_a_deleted_queue_is_returned_and_published_again(broker, make) -> None:
    await broker.enqueue([Envelope("m0", "q", b"x")])
    await broker.ack(await broker.fetch(["q"], 1, 0, 30.0, "c"))
    operator = await make()
    channel = await operator.raw_channel()
    await channel.queue_delete(f"{broker.namespace}.q")
    await channel.close()
    await broker.enqueue([Envelope(f"n{i}", "q", b"y") for i in range(5)] + [Envelope("p0", "p", b"z")])
    got = await broker.fetch(["q", "p"], 10, 1.0, 30.0, "c2")
    assert sorted(d.id for d in got) == ["n0", "n1", "n2", "n3", "n4", "p0"]
    await broker.ack(got)
