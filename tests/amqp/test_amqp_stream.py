"""Streams on a backlog (prefetch = the consumer's slots) and acks batched into ``multiple`` frames."""
from __future__ import annotations

import asyncio
import os
from typing import Any

from pq.brokers import Envelope, QueueSize
from pq.brokers.amqp_acks import Acks

from amqp_helpers import close_connections, eventually


class Recorder:
    """A channel that records the acks and rejects sent on it."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.sent.append(("ack", tag, multiple))

    async def basic_reject(self, tag: int, requeue: bool = True, wait: bool = True) -> None:
        self.sent.append(("reject", tag, requeue))


async def test_acks_go_as_one_multiple_frame_up_to_the_first_gap() -> None:
    channel = Recorder()
    acks = Acks(channel)
    await acks.ack([3, 1, 2])
    await acks.ack([5, 6])
    await acks.reject(7, requeue=True)
    await acks.ack([4, 8])
    await acks.ack([9])
    assert channel.sent == [
        ("ack", 3, True),
        ("ack", 5, False), ("ack", 6, False),
        ("reject", 7, True),
        ("ack", 8, True),
        ("ack", 9, False),
    ]
    assert (acks.floor, acks.above) == (9, set())


def unacked(broker: Any, consumer: str, queue: str) -> int:
    buffered, leased = broker.consumers[consumer].counts(queue)
    return buffered + leased


async def test_a_backlog_is_streamed_within_the_free_slots(broker) -> None:
    await broker.enqueue([Envelope(f"m{i}", "q", b"x") for i in range(40)])
    got = await broker.fetch(["q"], 5, 0, 30.0, "c")
    assert [d.id for d in got] == [f"m{i}" for i in range(5)]
    consumer = broker.consumers["c"]
    assert consumer.stream is not None and consumer.stream[0] == "q"
    seen = [d.id for d in got]
    held = list(got)
    while len(seen) < 40:
        await asyncio.sleep(0.01)
        assert unacked(broker, "c", "q") <= 5, "RabbitMQ never hands more than the free slots"
        done, held = held[:2], held[2:]
        await broker.ack(done)
        batch = await broker.fetch(["q"], 5 - len(held), 1.0, 30.0, "c")
        seen += [d.id for d in batch]
        held += batch
    assert seen == [f"m{i}" for i in range(40)]
    await broker.ack(held)
    assert await broker.fetch(["q"], 5, 0, 30.0, "c") == []
    assert consumer.stream is None, "a dry queue ends its stream"
    assert (await broker.sizes(["q"]))["q"] == QueueSize()


async def test_earlier_queues_still_come_first_while_a_later_one_streams(broker, monkeypatch) -> None:
    """Watched, not asked: no basic.get per fetch; what arrives there is taken first and ends the stream."""
    await broker.enqueue([Envelope(f"l{i}", "low", b"x") for i in range(20)])
    got = await broker.fetch(["high", "low"], 4, 0, 30.0, "c")
    consumer = broker.consumers["c"]
    assert consumer.stream is not None and list(consumer.watches) == ["high"]
    asked: list[str] = []
    get = consumer.underlay.basic_get

    async def recording(queue: str) -> Any:
        asked.append(queue)
        return await get(queue)

    monkeypatch.setattr(consumer.underlay, "basic_get", recording)
    for _ in range(3):
        await broker.ack(got[:1])
        got = got[1:] + await broker.fetch(["high", "low"], 1, 1.0, 30.0, "c")
    assert [d.id for d in got] == ["l3", "l4", "l5", "l6"] and asked == []
    await broker.enqueue([Envelope("h0", "high", b"x")])
    await eventually(lambda: consumer.buffers.get("high"))
    await broker.ack(got[:2])
    again = await broker.fetch(["high", "low"], 2, 1.0, 30.0, "c")
    assert [d.id for d in again] == ["h0", "l7"]
    assert consumer.stream is None and consumer.watches == {}
    await broker.ack(got[2:] + again)


async def test_a_caller_wanting_more_than_the_stream_gives_falls_back_to_pulling(broker) -> None:
    await broker.enqueue([Envelope(f"m{i}", "q", b"x") for i in range(30)])
    first = await broker.fetch(["q"], 10, 0, 30.0, "c")
    second = await broker.fetch(["q"], 10, 0, 30.0, "c")
    assert [d.id for d in first + second] == [f"m{i}" for i in range(20)]
    await broker.ack(first + second)


async def test_stream_survives_a_closed_connection_and_loses_nothing(make) -> None:
    name = f"pqtest-stream-{os.getpid()}"
    producer, consumer = await make(), await make(connection_name=name)
    total = 300
    await producer.enqueue([Envelope(f"m{i}", "q", b"x") for i in range(total)])
    seen: set[str] = set()
    closed = False
    while len(seen) < total:
        batch = await consumer.fetch(["q"], 5, 1.0, 30.0, "c")
        if len(seen) > 100 and not closed:
            assert await asyncio.to_thread(close_connections, name) == 2, "the broker's and its consumer's"
            closed = True
        await consumer.ack(batch)
        seen |= {d.id for d in batch}
    assert closed
    late = await consumer.fetch(["q"], 50, 0.3, 30.0, "c")
    assert {d.id for d in late} <= seen
    await consumer.ack(late)
    assert (await consumer.sizes(["q"]))["q"] == QueueSize()


async def test_acks_past_a_gap_leave_the_unacked_to_be_redelivered(broker) -> None:
    await broker.enqueue([Envelope(f"m{i}", "q", b"x") for i in range(6)])
    got = await broker.fetch(["q"], 6, 0, 30.0, "c")
    assert [d.id for d in got] == [f"m{i}" for i in range(6)]
    await broker.ack([got[1], got[3], got[4]])
    await broker.ack([got[0]])
    await broker.consumers["c"].close()
    del broker.consumers["c"]
    again = await broker.fetch(["q"], 6, 1.0, 30.0, "c2")
    assert sorted((d.id, d.deliveries) for d in again) == [("m2", 2), ("m5", 2)]
    await broker.ack(again)
    assert (await broker.sizes(["q"]))["q"] == QueueSize()


async def test_a_fetch_wanting_fewer_than_the_stream_gives_ends_it(broker) -> None:
    await broker.enqueue([Envelope(f"m{i}", "q", b"x") for i in range(20)])
    got = await broker.fetch(["q"], 5, 0, 30.0, "c")
    consumer = broker.consumers["c"]
    assert consumer.stream is not None
    await broker.ack(got)
    last = await broker.fetch(["q"], 2, 1.0, 30.0, "c")
    assert consumer.stream is None, "asked for 2 of 5 free slots: the stream must not push more"
    await asyncio.sleep(0.1)
    assert unacked(broker, "c", "q") <= 5
    await broker.ack(last + await broker.fetch(["q"], 5, 0, 30.0, "c"))
