"""A private server crashed and restarted under load: nothing lost, the outage logged once."""
from __future__ import annotations

import asyncio
import logging
from collections import Counter

from pq.brokers.base import Envelope, QueueSize
from pq.brokers.redis import RedisStore
from pq.exceptions import BrokerError
from redis_helpers import RedisServer, wait_for

TOTAL = 1000


async def until_done(operation) -> None:
    """Retry an idempotent operation through an outage (redis-py's own retries may run out)."""
    while True:
        try:
            return await operation()
        except BrokerError:
            await asyncio.sleep(0.05)


async def test_restart_in_the_middle_of_1000_messages_loses_none(redis_server: RedisServer, caplog):
    caplog.set_level(logging.WARNING, logger="pq.brokers.redis")
    store = RedisStore(redis_server.url, namespace="restart")
    await store.connect()
    acked: Counter[str] = Counter()
    delivered: Counter[str] = Counter()
    produced = 0
    crash_now = asyncio.Event()

    async def producer() -> None:
        nonlocal produced
        for start in range(0, TOTAL, 10):
            batch = [Envelope(f"m{i}", "q", b"%d" % i) for i in range(start, start + 10)]
            await until_done(lambda: store.enqueue(batch))
            produced += len(batch)
            await asyncio.sleep(0.003)

    async def consumer(name: str) -> None:
        while len(acked) < TOTAL:
            got = await store.fetch(["q"], 25, 0.2, lease=1.0, consumer=name)
            delivered.update(d.id for d in got)
            await until_done(lambda: store.ack(got))
            acked.update(d.id for d in got)
            if len(acked) >= TOTAL // 4:
                crash_now.set()

    async def crash() -> None:
        await crash_now.wait()
        assert produced < TOTAL, "the restart must land while messages are still being queued"
        redis_server.kill()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(redis_server.start)

    try:
        consumers = [consumer(f"c{i}") for i in range(3)]
        await asyncio.wait_for(asyncio.gather(producer(), crash(), *consumers), 60)

        async def drained() -> bool:
            return (await store.sizes(["q"]))["q"] == QueueSize()

        await wait_for(drained, timeout=10)
        assert set(acked) == {f"m{i}" for i in range(TOTAL)}
        assert await store.redis.keys(store.prefix + "*") == []
    finally:
        await store.close()
    lost = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    back = [r.getMessage() for r in caplog.records if "is back" in r.getMessage()]
    assert len(lost) == 1 and len(back) == 1, (lost, back)
    logging.getLogger(__name__).info(
        "redeliveries after the restart: %d", sum(delivered.values()) - TOTAL,
    )


async def test_subscription_survives_a_restart(redis_server: RedisServer):
    store = RedisStore(redis_server.url, namespace="events")
    await store.connect()
    got: list[tuple[str, str, bytes]] = []
    try:
        await store.subscribe(lambda channel, event, payload: got.append((channel, event, payload)))
        redis_server.kill()
        await asyncio.to_thread(redis_server.start)

        async def delivered() -> bool:
            await until_done(lambda: store.publish("task", "after", b"restart"))
            return bool(got)

        await wait_for(delivered, timeout=15, interval=0.05)
        assert got[0] == ("task", "after", b"restart")
    finally:
        await store.close()


async def test_unix_socket_url(redis_server: RedisServer):
    store = RedisStore(redis_server.unix_url, namespace="unix")
    await store.connect()
    try:
        await store.enqueue([Envelope("a", "q", b"over a unix socket")])
        [delivery] = await store.fetch(["q"], 1, 1, 30, "c")
        assert delivery.body == b"over a unix socket"
        await store.ack([delivery])
        assert await store.redis.keys("*") == []
    finally:
        await store.close()
