"""memory only: objects with the same URL share state, across threads and loops too."""

from __future__ import annotations

import asyncio
import time
import uuid

from pq.brokers import Envelope
from pq.brokers.memory import MemoryStore


async def test_same_url_shares_and_names_isolate() -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    producer = MemoryStore("memory://shared", namespace=namespace)
    consumer = MemoryStore("memory://shared", namespace=namespace)
    stranger = MemoryStore("memory://elsewhere", namespace=namespace)
    await producer.enqueue([Envelope("a", "q", b"1")])
    await producer.set_task("t", b"r")
    assert await stranger.fetch(["q"], 1, 0, 5, "c") == []
    assert await stranger.get_tasks(["t"]) == [None]
    got = await consumer.fetch(["q"], 1, 0, 5, "c")
    assert [d.id for d in got] == ["a"]
    await consumer.ack(got)
    assert await consumer.get_tasks(["t"]) == [b"r"]
    for store in (producer, consumer, stranger):
        await store.drop()
        await store.close()


async def test_a_fetch_on_another_thread_is_woken() -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    store = MemoryStore("memory://", namespace=namespace)

    def fetch_in_thread() -> tuple[list, float]:
        async def run() -> tuple[list, float]:
            got = await MemoryStore("memory://", namespace=namespace).fetch(["q"], 1, 10, 5, "c")
            return got, time.monotonic()

        return asyncio.run(run())

    fetching = asyncio.create_task(asyncio.to_thread(fetch_in_thread))
    await asyncio.sleep(0.2)
    sent = time.monotonic()
    await store.enqueue([Envelope("a", "q", b"1")])
    got, woke = await asyncio.wait_for(fetching, 5)
    assert [d.id for d in got] == ["a"]
    assert woke - sent < 0.5
    await store.drop()
