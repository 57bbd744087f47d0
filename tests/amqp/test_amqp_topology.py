"""AMQP features: options, fanout, routes and bindings, delay queues, dead letters, events."""
from __future__ import annotations

import asyncio
import time

import pytest

from pq.brokers import Envelope, QueueSize, create
from pq.brokers.amqp import AmqpBroker
from pq.brokers.amqp_topology import AmqpOptions, bucket_ms
from pq.exceptions import BrokerError, ImproperlyConfigured

from amqp_helpers import drain


def test_delays_round_down_to_two_significant_digits() -> None:
    assert [bucket_ms(d) for d in (0.0001, 0.042, 0.1, 0.299, 1.234, 9.99, 60, 86400.5)] == [
        1, 42, 100, 290, 1200, 9900, 60000, 86_000_000,
    ]


def test_options_from_the_url_and_keywords() -> None:
    url = ("amqp://u:p@host/vh?heartbeat=30&queue_type=quorum&broadcast=bus,control&prefetch=slow:2"
           "&exchanges=mail:topic&routes=emails:mail:mail.high&bindings=audit:mail:mail.%23")
    rest, opts = AmqpOptions.from_url(url, {"delay_hold": 0.1})
    assert rest == "amqp://u:p@host/vh?heartbeat=30"
    assert (opts.queue_type, opts.broadcast, opts.prefetch, opts.delay_hold) == ("quorum", ("bus", "control"), {"slow": 2}, 0.1)
    assert opts.exchanges == {"mail": "topic"}
    assert opts.routes == {"emails": ("mail", "mail.high")}
    assert opts.bindings == [("audit", "mail", "mail.#")]
    for bad in ({"queue_type": "lazy"}, {"prefetch": "q:many"}, {"exchanges": "x:circle"}, {"nonsense": 1}):
        with pytest.raises(ImproperlyConfigured):
            AmqpOptions.from_url("amqp://h/", bad)
    with pytest.raises(ImproperlyConfigured, match="reserved"):
        create("amqps://h/").topology.queue("dead")


async def test_unreachable_server_is_a_broker_error() -> None:
    broker = AmqpBroker("amqp://guest:secret@127.0.0.1:1/", reconnect_interval=0.1)
    with pytest.raises(BrokerError, match=r"cannot connect to RabbitMQ at amqp://guest:\*\*\*@"):
        await broker.connect()


async def test_broadcast_gives_every_consumer_a_copy(make) -> None:
    one, two = await make(broadcast="bus"), await make(broadcast="bus")
    for broker in (one, two):
        assert await broker.fetch(["bus"], 1, 0, 30.0, "c") == []
    await one.enqueue([Envelope("b0", "bus", b"all"), Envelope("b1", "bus", b"hands")])
    for broker in (one, two):
        got = await broker.fetch(["bus"], 10, 5.0, 30.0, "c")
        if len(got) < 2:
            got += await broker.fetch(["bus"], 10, 5.0, 30.0, "c")
        assert [(d.id, d.body) for d in got] == [("b0", b"all"), ("b1", b"hands")]
        await broker.ack(got)


async def test_routes_and_bindings_through_a_topic_exchange(make) -> None:
    broker = await make(exchanges="mail:topic", routes="emails:mail:mail.high", bindings="audit:mail:mail.#")
    assert await broker.fetch(["audit"], 1, 0, 30.0, "auditor") == []
    await broker.enqueue([Envelope("e0", "emails", b"hi")])
    assert [d.id for d in await broker.fetch(["emails"], 5, 2.0, 30.0, "sender")] == ["e0"]
    assert [d.id for d in await broker.fetch(["audit"], 5, 2.0, 30.0, "auditor")] == ["e0"]


async def test_delayed_message_goes_through_a_delay_queue(broker) -> None:
    eta = time.time() + 0.45
    await broker.enqueue([Envelope("late", "q", b"x", eta=eta)])
    assert broker.buckets["q"] == {f"{broker.namespace}.delay.440.q"}
    assert (await broker.sizes(["q"]))["q"] == QueueSize(delayed=1)
    got = await broker.fetch(["q"], 1, 5.0, 30.0, "c")
    assert [d.id for d in got] == ["late"] and eta - 0.01 <= time.time() < eta + 0.5


async def test_early_arrival_is_sent_round_again(make) -> None:
    broker = await make(delay_hold=0.01)
    eta = time.time() + 1.29
    await broker.enqueue([Envelope("late", "q", b"x", eta=eta)])
    got = await broker.fetch(["q"], 1, 5.0, 30.0, "c")
    assert [d.id for d in got] == ["late"] and eta - 0.01 <= time.time() < eta + 0.5
    assert len(broker.buckets["q"]) == 2, "out of the 1200 ms queue ~90 ms early, then through an 8x ms one"


async def test_requeue_with_delay_and_dead_letters_with_reason(broker) -> None:
    await broker.enqueue([Envelope("m0", "q", b"x"), Envelope("m1", "q", b"y")])
    got = await broker.fetch(["q"], 2, 0, 30.0, "c")
    await broker.requeue(got[0], b"retry", delay=0.3)
    await broker.dead_letter(got[1], "ValueError: boom", body=b"y2")
    assert (await broker.sizes(["q"]))["q"] == QueueSize(delayed=1, dead=1)
    [letter] = await broker.dead_letters("q")
    assert (letter.id, letter.body, letter.reason) == ("m1", b"y2", "ValueError: boom")
    assert abs(letter.time - time.time()) < 5
    again = await broker.fetch(["q"], 2, 5.0, 30.0, "c")
    assert [(d.id, d.body, d.deliveries) for d in again] == [("m0", b"retry", 1)]
    assert await broker.retry_dead_letters() == 1
    assert [(d.id, d.body) for d in await broker.fetch(["q"], 2, 2.0, 30.0, "c")] == [("m1", b"y2")]


async def test_events_reach_subscribers_of_two_brokers(make) -> None:
    here, there = await make(), await make()
    got_here: list = []
    got_there: list = []
    done = asyncio.Event()

    async def slow_handler(channel: str, event: str, payload: bytes) -> None:
        await asyncio.sleep(0.001)
        got_there.append((channel, event, payload))
        if len(got_there) == 20:
            done.set()

    subs = [await here.subscribe(lambda *e: got_here.append(e)), await there.subscribe(slow_handler)]
    for i in range(20):
        await (here if i % 2 else there).publish("task.x", "done", str(i).encode())
    await asyncio.wait_for(done.wait(), 5)
    expected = [("task.x", "done", str(i).encode()) for i in range(20)]
    assert got_there == expected
    await asyncio.sleep(0.05)
    assert got_here == expected
    await subs[0].close()
    await there.publish("task", "after", b"")
    await asyncio.sleep(0.2)
    assert len(got_here) == 20 and got_there[-1] == ("task", "after", b"")


async def test_a_batch_of_events_arrives_whole_and_in_order(make) -> None:
    here, there = await make(), await make()
    got: list = []
    sub = await there.subscribe(lambda *e: got.append(e), ["task"])
    await here.publish_events("task", [(event, f"{i}".encode()) for i, event in
                                       enumerate(["queued", "started", "done"] * 100)])
    for _ in range(100):
        if len(got) == 300:
            break
        await asyncio.sleep(0.05)
    assert got == [("task", event, f"{i}".encode()) for i, event in enumerate(["queued", "started", "done"] * 100)]
    await sub.close()


async def test_batch_enqueue_is_confirmed_in_order(broker) -> None:
    await broker.enqueue([Envelope(f"m{i}", "q", b"") for i in range(300)])
    assert [d.id for d in await drain(broker, "q", 300)] == [f"m{i}" for i in range(300)]
