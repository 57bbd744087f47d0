"""Contract: enqueue and fetch, order, counts, blocking, sizes, purge, namespaces."""

from __future__ import annotations

import asyncio
import time

from pq.brokers import Envelope, MessageBroker, QueueSize

from .helpers import CONSUMER, LEASE, envelopes, ids


async def fetch(broker: MessageBroker, queues: list[str], count: int = 10, timeout: float = 0.0):
    return await broker.fetch(queues, count, timeout, LEASE * 10, CONSUMER)


async def test_fifo_within_a_queue(broker: MessageBroker) -> None:
    await broker.enqueue(envelopes("q", 5))
    for env in envelopes("q", 5, prefix="n"):
        await broker.enqueue([env])
    got = await fetch(broker, ["q"], count=10)
    assert ids(got) == [f"m{i}" for i in range(5)] + [f"n{i}" for i in range(5)]
    first = got[0]
    assert (first.queue, first.body, first.deliveries) == ("q", b"m0", 1)
    assert first.token is not None
    assert [d.body for d in got] == [d.id.encode() for d in got]


async def test_fetch_returns_up_to_count(broker: MessageBroker) -> None:
    await broker.enqueue(envelopes("q", 5))
    assert ids(await fetch(broker, ["q"], count=3)) == ["m0", "m1", "m2"]
    assert ids(await fetch(broker, ["q"], count=10)) == ["m3", "m4"]
    assert await fetch(broker, ["q"], count=10) == []


async def test_first_queue_first(broker: MessageBroker) -> None:
    await broker.enqueue(envelopes("low", 3, prefix="l"))
    await broker.enqueue(envelopes("high", 2, prefix="h"))
    assert ids(await fetch(broker, ["high", "low"], count=1)) == ["h0"]
    assert ids(await fetch(broker, ["high", "low"], count=3)) == ["h1", "l0", "l1"]
    assert ids(await fetch(broker, ["low", "high"], count=3)) == ["l2"]


async def test_fetch_takes_only_the_named_queues(broker: MessageBroker) -> None:
    await broker.enqueue(envelopes("a", 2, prefix="a") + envelopes("b", 2, prefix="b"))
    assert ids(await fetch(broker, ["b"])) == ["b0", "b1"]
    assert ids(await fetch(broker, ["c"])) == []
    assert (await broker.sizes(["a"]))["a"].ready == 2


async def test_batch_of_many(broker: MessageBroker) -> None:
    await broker.enqueue(envelopes("q", 500))
    assert (await broker.sizes(["q"]))["q"].ready == 500
    got = []
    for _ in range(5):
        batch = await fetch(broker, ["q"], count=100)
        assert len(batch) == 100
        got.extend(batch)
    assert ids(got) == [f"m{i}" for i in range(500)]
    await broker.ack(got)
    assert (await broker.sizes(["q"]))["q"] == QueueSize()


async def test_bodies_are_bytes_untouched(broker: MessageBroker) -> None:
    bodies = [bytes(range(256)) * 4, b"", b"\x00\xff" * 3, "é€😀".encode(), bytes(1 << 20)]
    await broker.enqueue([Envelope(f"b{i}", "q", body) for i, body in enumerate(bodies)])
    got = await fetch(broker, ["q"])
    assert [d.body for d in got] == bodies
    assert all(isinstance(d.body, bytes) for d in got)


async def test_enqueue_nothing(broker: MessageBroker) -> None:
    await broker.enqueue([])
    assert (await broker.sizes(["q"]))["q"] == QueueSize()


async def test_fetch_without_timeout_returns_at_once(broker: MessageBroker) -> None:
    start = time.monotonic()
    assert await fetch(broker, ["q"], timeout=0) == []
    assert time.monotonic() - start < 0.25


async def test_fetch_blocks_up_to_timeout(broker: MessageBroker) -> None:
    start = time.monotonic()
    assert await fetch(broker, ["q"], timeout=0.3) == []
    assert 0.25 <= time.monotonic() - start < 1.5


async def _woken_by(fetcher: MessageBroker, producer: MessageBroker) -> None:
    task = asyncio.create_task(fetch(fetcher, ["idle", "q"], count=5, timeout=10))
    await asyncio.sleep(0.2)
    assert not task.done()
    sent = time.monotonic()
    await producer.enqueue(envelopes("q", 2))
    got = await asyncio.wait_for(task, 5)
    assert time.monotonic() - sent < 0.5, (
        "a blocked fetch must wake promptly when a message arrives"
    )
    assert ids(got)[0] == "m0"


async def test_blocked_fetch_wakes_on_enqueue(broker: MessageBroker) -> None:
    await _woken_by(broker, broker)


async def test_blocked_fetch_wakes_on_enqueue_by_another_connection(
    broker: MessageBroker, other: MessageBroker
) -> None:
    await _woken_by(broker, other)


async def test_each_message_goes_to_one_waiter(broker: MessageBroker, other: MessageBroker) -> None:
    waiters = [
        asyncio.create_task(fetch(b, ["q"], count=1, timeout=5))
        for b in (broker, other, broker, other)
    ]
    await asyncio.sleep(0.1)
    await other.enqueue(envelopes("q", 4))
    results = await asyncio.wait_for(asyncio.gather(*waiters), 6)
    assert sorted(i for got in results for i in ids(got)) == ["m0", "m1", "m2", "m3"]


async def test_concurrent_consumers_get_each_message_once(
    broker: MessageBroker, other: MessageBroker
) -> None:
    await broker.enqueue(envelopes("q", 60))

    async def consume(source: MessageBroker) -> list[str]:
        seen = []
        while batch := await fetch(source, ["q"], count=7, timeout=0.2):
            seen.extend(ids(batch))
            await source.ack(batch)
        return seen

    results = await asyncio.gather(*(consume(b) for b in (broker, other, broker, other)))
    everything = [i for seen in results for i in seen]
    assert sorted(everything) == sorted(f"m{i}" for i in range(60))


async def test_sizes(broker: MessageBroker) -> None:
    later = time.time() + 30
    await broker.enqueue(envelopes("q", 4) + envelopes("q", 2, prefix="d", eta=later))
    taken = await fetch(broker, ["q"], count=2)
    await broker.dead_letter(taken[1], "bad")
    sizes = await broker.sizes(["q", "unknown"])
    assert set(sizes) == {"q", "unknown"}
    assert sizes["q"] == QueueSize(ready=2, delayed=2, inflight=1, dead=1)
    assert sizes["unknown"] == QueueSize()
    assert sizes["q"].as_dict() == {"ready": 2, "delayed": 2, "inflight": 1, "dead": 1}


async def test_purge_removes_ready_and_delayed_only(broker: MessageBroker) -> None:
    await broker.enqueue(envelopes("q", 4) + envelopes("q", 2, prefix="d", eta=time.time() + 30))
    await broker.enqueue(envelopes("keep", 1))
    taken = await fetch(broker, ["q"], count=1)
    assert await broker.purge("q") == 5
    assert (await broker.sizes(["q"]))["q"] == QueueSize(inflight=1)
    assert (await broker.sizes(["keep"]))["keep"].ready == 1
    await broker.ack(taken)
    assert (await broker.sizes(["q"]))["q"] == QueueSize()
    assert await broker.purge("q") == 0


async def test_namespaces_are_isolated(broker: MessageBroker, connect) -> None:
    elsewhere = await connect(namespace=broker.namespace + "-other")
    await broker.enqueue(envelopes("q", 2))
    assert await fetch(elsewhere, ["q"], timeout=0.1) == []
    assert (await elsewhere.sizes(["q"]))["q"] == QueueSize()
    assert await elsewhere.purge("q") == 0
    assert ids(await fetch(broker, ["q"])) == ["m0", "m1"]


async def test_close_then_connect(broker: MessageBroker) -> None:
    await broker.connect()
    await broker.enqueue(envelopes("q", 1))
    await broker.close()
    await broker.close()
    await broker.connect()
    got = await fetch(broker, ["q"], timeout=2)
    assert ids(got) == ["m0"]
    await broker.ack(got)
    assert (await broker.sizes(["q"]))["q"] == QueueSize()


async def test_drop_empties_the_namespace(broker: MessageBroker) -> None:
    await broker.enqueue(envelopes("q", 3) + envelopes("q", 1, prefix="d", eta=time.time() + 30))
    taken = await fetch(broker, ["q"], count=2)
    await broker.dead_letter(taken[0], "bad")
    await broker.drop()
    assert (await broker.sizes(["q"]))["q"] == QueueSize()
    assert await broker.dead_letters() == []
