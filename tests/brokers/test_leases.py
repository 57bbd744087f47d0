"""Contract: leases (ack, expiry, renew), requeue, delays and dead letters."""

from __future__ import annotations

import asyncio
import time

from pq.brokers import MessageBroker, QueueSize

from .helpers import CONSUMER, LEASE, envelopes, ids


async def take(
    broker: MessageBroker,
    count: int = 10,
    timeout: float = 0.0,
    lease: float = LEASE,
    queue: str = "q",
):
    return await broker.fetch([queue], count, timeout, lease, CONSUMER)


async def test_ack_removes_for_good(broker: MessageBroker) -> None:
    await broker.enqueue(envelopes("q", 2))
    got = await take(broker)
    await broker.ack(got[:1])
    assert (await broker.sizes(["q"]))["q"] == QueueSize(inflight=1)
    await broker.ack(got[1:])
    assert (await broker.sizes(["q"]))["q"] == QueueSize()
    assert await take(broker, timeout=LEASE + 0.4) == [], "an acked message must not come back"


async def test_expired_lease_returns_the_message(
    broker: MessageBroker, other: MessageBroker
) -> None:
    await broker.enqueue(envelopes("q", 1))
    first = await take(broker)
    leased = time.monotonic()
    assert [d.deliveries for d in first] == [1]
    assert await take(other) == [], "a leased message is not handed out twice"
    again = await take(other, timeout=5)
    waited = time.monotonic() - leased
    assert ids(again) == ["m0"] and again[0].body == b"m0"
    assert again[0].deliveries == 2
    assert LEASE - 0.05 <= waited < LEASE + 1.0, "a blocked fetch wakes when the lease runs out"
    await other.ack(again)
    assert (await broker.sizes(["q"]))["q"] == QueueSize()


async def test_renew_keeps_the_lease(broker: MessageBroker) -> None:
    await broker.enqueue(envelopes("q", 1))
    got = await take(broker)
    await asyncio.sleep(LEASE / 2)
    await broker.renew(got, 2.0)
    assert await take(broker, timeout=LEASE + 0.3) == []
    assert (await broker.sizes(["q"]))["q"] == QueueSize(inflight=1)
    await broker.ack(got)
    assert (await broker.sizes(["q"]))["q"] == QueueSize()


async def test_recover_then_redeliver(broker: MessageBroker) -> None:
    await broker.enqueue(envelopes("q", 1))
    await take(broker)
    await asyncio.sleep(LEASE + 0.1)
    assert await broker.recover() in (0, 1)
    assert (await broker.sizes(["q"]))["q"] == QueueSize(ready=1)
    again = await take(broker, timeout=2)
    assert [d.deliveries for d in again] == [2]
    await broker.ack(again)


async def test_late_ack_and_renew_of_a_lost_lease_are_harmless(
    broker: MessageBroker, other: MessageBroker
) -> None:
    await broker.enqueue(envelopes("q", 1))
    stale = await take(broker)
    fresh = await take(other, timeout=5, lease=5.0)
    assert ids(fresh) == ["m0"]
    await broker.renew(stale, 0.1)
    await broker.ack(stale)
    await asyncio.sleep(0.2)
    assert (await broker.sizes(["q"]))["q"] == QueueSize(inflight=1), "the new lease is untouched"
    await other.ack(fresh)
    assert (await broker.sizes(["q"]))["q"] == QueueSize()


async def test_late_requeue_or_dead_letter_of_a_lost_lease_are_ignored(
    broker: MessageBroker, other: MessageBroker
) -> None:
    await broker.enqueue(envelopes("q", 1))
    stale = await take(broker)
    fresh = await take(other, timeout=5, lease=5.0)
    await broker.requeue(stale[0], body=b"stale")
    await broker.dead_letter(stale[0], "stale")
    assert (await broker.sizes(["q"]))["q"] == QueueSize(inflight=1)
    assert await broker.dead_letters() == []
    await other.ack(fresh)


async def test_requeue_with_body_and_delay(broker: MessageBroker) -> None:
    await broker.enqueue(envelopes("q", 1))
    got = await take(broker)
    await broker.requeue(got[0], body=b"second try", delay=LEASE)
    requeued = time.monotonic()
    assert (await broker.sizes(["q"]))["q"] == QueueSize(delayed=1)
    assert await take(broker) == []
    again = await take(broker, timeout=5)
    assert LEASE - 0.05 <= time.monotonic() - requeued < LEASE + 1.0
    assert (again[0].id, again[0].body) == ("m0", b"second try")
    assert again[0].deliveries == 1, "a requeue is not a lost consumer: the count starts again"
    await broker.ack(again)


async def test_requeue_without_delay_goes_to_the_back(broker: MessageBroker) -> None:
    await broker.enqueue(envelopes("q", 2))
    first = await take(broker, count=1)
    await broker.requeue(first[0])
    got = await take(broker)
    assert ids(got) == ["m1", "m0"]
    assert got[1].body == b"m0" and got[1].deliveries == 1


async def test_delayed_message_waits_for_its_eta(broker: MessageBroker) -> None:
    eta = time.time() + 0.4
    await broker.enqueue(
        envelopes("q", 1, prefix="late", eta=eta) + envelopes("q", 1, prefix="now")
    )
    assert (await broker.sizes(["q"]))["q"] == QueueSize(ready=1, delayed=1)
    assert ids(await take(broker, lease=5)) == ["now0"]
    got = await take(broker, timeout=5)
    assert ids(got) == ["late0"]
    assert time.time() >= eta - 0.05
    assert time.time() < eta + 1.0, "a blocked fetch wakes when a delayed message comes due"


async def test_eta_in_the_past_is_ready(broker: MessageBroker) -> None:
    await broker.enqueue(envelopes("q", 1, eta=time.time() - 60))
    assert ids(await take(broker)) == ["m0"]


async def test_dead_letter_keeps_reason_and_body(broker: MessageBroker) -> None:
    await broker.enqueue(envelopes("q", 2))
    got = await take(broker)
    before = time.time()
    await broker.dead_letter(got[0], "boom: ValueError")
    await broker.dead_letter(got[1], "bad signature", body=b"replaced")
    assert (await broker.sizes(["q"]))["q"] == QueueSize(dead=2)
    letters = await broker.dead_letters()
    assert [(d.id, d.queue, d.body, d.reason) for d in letters] == [
        ("m0", "q", b"m0", "boom: ValueError"),
        ("m1", "q", b"replaced", "bad signature"),
    ]
    assert all(before - 1 <= d.time <= time.time() + 1 for d in letters)
    assert await broker.dead_letters(queue="q") == letters
    assert await broker.dead_letters(queue="other") == []
    assert await take(broker, timeout=LEASE + 0.3) == [], "a dead letter is never fetched"


async def test_dead_letters_oldest_first_with_limit(broker: MessageBroker) -> None:
    await broker.enqueue(envelopes("q", 3) + envelopes("r", 1, prefix="r"))
    for queue in ("q", "r"):
        for delivery in await take(broker, queue=queue):
            await broker.dead_letter(delivery, "x")
    assert ids(await broker.dead_letters()) == ["m0", "m1", "m2", "r0"]
    assert ids(await broker.dead_letters(limit=2)) == ["m0", "m1"]
    assert ids(await broker.dead_letters(queue="r")) == ["r0"]


async def test_retry_dead_letters(broker: MessageBroker) -> None:
    await broker.enqueue(envelopes("q", 3))
    for delivery in await take(broker):
        await broker.dead_letter(delivery, "x")
    assert await broker.retry_dead_letters(["m1", "unknown"]) == 1
    again = await take(broker)
    assert [(d.id, d.body, d.deliveries) for d in again] == [("m1", b"m1", 1)]
    assert ids(await broker.dead_letters()) == ["m0", "m2"]
    assert await broker.retry_dead_letters() == 2
    assert await broker.retry_dead_letters() == 0
    assert sorted(ids(await take(broker))) == ["m0", "m2"]
    assert (await broker.sizes(["q"]))["q"] == QueueSize(inflight=3)


async def test_purge_dead_letters(broker: MessageBroker) -> None:
    await broker.enqueue(envelopes("q", 3))
    for delivery in await take(broker):
        await broker.dead_letter(delivery, "x")
    assert await broker.purge_dead_letters(["m0", "unknown"]) == 1
    assert ids(await broker.dead_letters()) == ["m1", "m2"]
    assert await broker.purge_dead_letters() == 2
    assert await broker.dead_letters() == []
    assert (await broker.sizes(["q"]))["q"] == QueueSize()
