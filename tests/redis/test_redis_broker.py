"""Redis-specific broker behaviour: leases, blocking, delayed messages, key hygiene."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from redis.crc import key_slot

from pq.brokers import create
from pq.brokers.base import Delivery, Envelope
from pq.brokers.redis import RedisStore
from pq.exceptions import BrokerError, ImproperlyConfigured
from redis_helpers import free_port, namespace_keys, wait_for


def envelopes(
    n: int, queue: str = "q", prefix: str = "m", eta: float | None = None
) -> list[Envelope]:
    return [Envelope(f"{prefix}{i}", queue, f"body {i}".encode(), eta) for i in range(n)]


async def test_scheme_registry_gives_redis_store(redis_url):
    store = create(redis_url, namespace="pqtest-registry")
    assert isinstance(store, RedisStore)
    assert store.prefix == "{pqtest-registry}:"
    await store.close()


def test_namespace_must_be_a_valid_hash_tag():
    with pytest.raises(ImproperlyConfigured, match="hash tag"):
        RedisStore("redis://127.0.0.1:6379/15", namespace="a}b")


async def test_fifo_first_queue_first_and_batch_fetch(store):
    await store.enqueue(envelopes(5, "low", "l") + envelopes(3, "high", "h"))
    got = await store.fetch(["high", "low"], count=5, timeout=1, lease=30, consumer="c")
    assert [d.id for d in got] == ["h0", "h1", "h2", "l0", "l1"]
    assert all(d.deliveries == 1 for d in got)
    await store.ack(got)
    sizes = await store.sizes(["high", "low"])
    assert sizes["high"].as_dict() == {"ready": 0, "delayed": 0, "inflight": 0, "dead": 0}
    assert sizes["low"].ready == 3


async def test_enqueue_skips_an_id_already_queued(store):
    await store.enqueue(envelopes(3))
    await store.enqueue(envelopes(3))
    assert (await store.sizes(["q"]))["q"].ready == 3


async def test_dead_letter_and_live_message_with_one_id_coexist(store):
    """As the task api retries a dead letter: queue its id afresh, then purge the dead letter."""
    await store.enqueue(envelopes(1))
    [first] = await store.fetch(["q"], 1, 1, 30, "c")
    await store.dead_letter(first, "failed")
    await store.enqueue([Envelope("m0", "q", b"fresh")])
    assert await store.purge_dead_letters(["m0"]) == 1
    [again] = await store.fetch(["q"], 1, 1, 30, "c")
    assert (again.id, again.body, again.deliveries) == ("m0", b"fresh", 1)
    await store.dead_letter(again, "failed again")
    await store.enqueue([Envelope("m0", "q", b"fresh again")])
    assert await store.retry_dead_letters() == 1
    [last] = await store.fetch(["q"], 10, 1, 30, "c")
    assert last.body == b"fresh again"
    await store.ack([last])
    assert await namespace_keys(store) == []


async def test_blocked_fetch_takes_a_new_message_at_once(store):
    fetch = asyncio.create_task(store.fetch(["q"], count=10, timeout=10, lease=30, consumer="c"))
    await asyncio.sleep(0.05)
    assert not fetch.done()
    start = time.monotonic()
    await store.enqueue(envelopes(1))
    got = await asyncio.wait_for(fetch, 5)
    assert [d.id for d in got] == ["m0"]
    assert time.monotonic() - start < 0.5


async def test_close_ends_a_blocked_fetch(make_store, caplog):
    store = await make_store()
    fetch = asyncio.create_task(store.fetch(["q"], count=1, timeout=10, lease=30, consumer="c"))
    await asyncio.sleep(0.05)
    await store.close()
    assert await asyncio.wait_for(fetch, 2) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    await store.connect()


async def test_fetch_returns_empty_after_its_timeout(store):
    start = time.monotonic()
    assert await store.fetch(["q"], count=1, timeout=0.15, lease=30, consumer="c") == []
    assert 0.14 < time.monotonic() - start < 1.0


async def test_a_burst_wakes_every_blocked_consumer(store):
    fetches = [asyncio.create_task(store.fetch(["q"], 10, 10, 30, f"c{i}")) for i in range(4)]
    await asyncio.sleep(0.05)
    await store.enqueue(envelopes(40))
    results = await asyncio.wait_for(asyncio.gather(*fetches), 5)
    assert sorted(len(r) for r in results) == [10, 10, 10, 10]
    assert len({d.id for r in results for d in r}) == 40


async def test_delayed_message_waits_then_wakes_a_blocked_consumer(store):
    eta = time.time() + 0.3
    await store.enqueue(envelopes(1, eta=eta))
    assert (await store.sizes(["q"]))["q"].delayed == 1
    got = await store.fetch(["q"], count=1, timeout=5, lease=30, consumer="c")
    assert [d.id for d in got] == ["m0"]
    assert time.time() >= eta - 0.01
    assert time.time() < eta + 0.5


async def test_earlier_delayed_message_wakes_consumers_waiting_for_a_later_one(store):
    await store.enqueue([Envelope("later", "q", b"", time.time() + 30)])
    fetch = asyncio.create_task(store.fetch(["q"], count=1, timeout=10, lease=30, consumer="c"))
    await asyncio.sleep(0.05)
    await store.enqueue([Envelope("sooner", "q", b"", time.time() + 0.2)])
    got = await asyncio.wait_for(fetch, 5)
    assert [d.id for d in got] == ["sooner"]


async def test_delayed_messages_are_moved_once_whatever_the_consumers(store):
    await store.enqueue(envelopes(200, eta=time.time() + 0.2))
    seen: list[Delivery] = []

    async def consumer(name: str) -> None:
        while len(seen) < 200:
            got = await store.fetch(["q"], 7, 0.2, 30, name)
            seen.extend(got)
            await store.ack(got)

    await asyncio.wait_for(asyncio.gather(*(consumer(f"c{i}") for i in range(8))), 20)
    assert len(seen) == 200
    assert len({d.id for d in seen}) == 200
    assert all(d.deliveries == 1 for d in seen)


async def test_expired_lease_returns_with_one_more_delivery(store):
    await store.enqueue(envelopes(2))
    first = await store.fetch(["q"], 2, 1, lease=0.2, consumer="dies")
    assert [d.deliveries for d in first] == [1, 1]
    again = await store.fetch(["q"], 2, 5, lease=30, consumer="lives")
    assert sorted(d.id for d in again) == ["m0", "m1"]
    assert [d.deliveries for d in again] == [2, 2]
    # the first consumer lost its leases: its requeue and dead_letter change nothing
    await store.requeue(first[0], body=b"stale")
    await store.dead_letter(first[1], "stale")
    sizes = (await store.sizes(["q"]))["q"]
    assert (sizes.ready, sizes.inflight, sizes.dead) == (0, 2, 0)
    await store.ack(again)
    assert await namespace_keys(store) == []


async def test_renewed_lease_is_never_handed_to_a_second_consumer(store):
    await store.enqueue(envelopes(1))
    held = await store.fetch(["q"], 1, 1, lease=0.3, consumer="a")
    stop = asyncio.Event()

    async def keep_renewing() -> None:
        while not stop.is_set():
            await store.renew(held, lease=0.3)
            await asyncio.sleep(0.1)

    renewer = asyncio.create_task(keep_renewing())
    other = await store.fetch(["q"], 1, timeout=1.5, lease=30, consumer="b")
    stop.set()
    await renewer
    assert other == []
    await store.ack(held)
    assert await store.fetch(["q"], 1, timeout=0.4, lease=30, consumer="b") == []


async def test_sigkilled_consumer_messages_come_back(store, redis_url):
    await store.enqueue(envelopes(3))
    code = (
        "import asyncio, sys\n"
        "from pq.brokers.redis import RedisStore\n"
        "async def main():\n"
        f"    store = RedisStore({redis_url!r}, namespace={store.namespace!r})\n"
        "    got = await store.fetch(['q'], 3, 5, 0.5, 'doomed')\n"
        "    print(len(got), flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "3"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    got = await store.fetch(["q"], 3, timeout=5, lease=30, consumer="heir")
    assert sorted(d.id for d in got) == ["m0", "m1", "m2"]
    assert all(d.deliveries == 2 for d in got)


async def test_recover_returns_expired_leases_of_every_queue(store):
    await store.enqueue(envelopes(2, "a", "a") + envelopes(1, "b", "b"))
    await store.fetch(["a", "b"], 3, 1, lease=0.05, consumer="c")
    await asyncio.sleep(0.1)
    assert await store.recover() == 3
    sizes = await store.sizes(["a", "b"])
    assert (sizes["a"].ready, sizes["a"].inflight, sizes["b"].ready) == (2, 0, 1)


async def test_requeue_with_delay_and_new_body_resets_deliveries(store):
    await store.enqueue(envelopes(1))
    [first] = await store.fetch(["q"], 1, 1, 30, "c")
    await store.requeue(first, body=b"retry 1", delay=0.2)
    assert (await store.sizes(["q"]))["q"].delayed == 1
    [second] = await store.fetch(["q"], 1, 5, 30, "c")
    assert (second.id, second.body, second.deliveries) == ("m0", b"retry 1", 1)
    assert second.token != first.token


async def test_dead_letters_oldest_first_retry_and_purge(store):
    await store.enqueue(envelopes(2, "a", "a") + envelopes(1, "b", "b"))
    got = await store.fetch(["a", "b"], 3, 1, 30, "c")
    for delivery in got:
        await store.dead_letter(delivery, f"bad {delivery.id}", body=delivery.body + b"!")
    dead = await store.dead_letters()
    assert [(d.id, d.queue, d.reason, d.body) for d in dead] == [
        ("a0", "a", "bad a0", b"body 0!"),
        ("a1", "a", "bad a1", b"body 1!"),
        ("b0", "b", "bad b0", b"body 0!"),
    ]
    assert abs(dead[0].time - time.time()) < 5
    assert [d.id for d in await store.dead_letters("b")] == ["b0"]
    assert [d.id for d in await store.dead_letters(limit=1)] == ["a0"]
    assert await store.retry_dead_letters(["a1", "nope"]) == 1
    [retried] = await store.fetch(["a"], 1, 1, 30, "c")
    assert (retried.id, retried.deliveries) == ("a1", 1)
    await store.ack([retried])
    assert await store.purge_dead_letters() == 2
    assert await store.dead_letters() == []
    assert await namespace_keys(store) == []


async def test_purge_deletes_ready_and_delayed_messages(store):
    await store.enqueue(envelopes(1500) + envelopes(5, prefix="d", eta=time.time() + 60))
    assert await store.purge("q") == 1505
    assert await namespace_keys(store) == []


async def test_acked_messages_and_expired_records_leave_no_key(store):
    await store.enqueue(envelopes(10) + envelopes(2, prefix="late", eta=time.time() + 0.1))
    taken: list[Delivery] = []
    while len(taken) < 12:
        got = await store.fetch(["q"], 5, 2, 30, "c")
        taken += got
        await store.ack(got)
    await store.set_task("m0", b"record", ttl=0.1)
    assert await store.add_task("m1", b"record", ttl=0.1) is None
    await store.revoke("m2", ttl=0.1)
    assert await store.acquire_slot("limit", 2, "c", lease=0.1)
    await store.acquire_lock("lock", "c", ttl=0.1)
    await wait_for(lambda: no_keys(store), timeout=5)


async def test_fetch_removes_revoked_messages_instead_of_leasing_them(store):
    assert store.skips_revoked
    await store.enqueue(envelopes(3) + envelopes(1, queue="other", prefix="x"))
    await store.revoke("m1", ttl=60)
    await store.revoke("x0", ttl=60)
    taken = await store.fetch(["q", "other"], 10, 0, 30, "c")
    assert [d.id for d in taken] == ["m0", "m2"]
    await store.ack(taken)
    assert await store.fetch(["q", "other"], 10, 0, 30, "c") == []
    revocations = [(store.prefix + f"revoked:{i}").encode() for i in ("m1", "x0")]
    assert await namespace_keys(store) == revocations


async def no_keys(store: RedisStore) -> bool:
    return await namespace_keys(store) == []


async def test_namespaces_sharing_a_server_never_see_each_other(make_store):
    a, b = await make_store(), await make_store()
    await a.enqueue(envelopes(3))
    assert await b.fetch(["q"], 10, 0.1, 30, "c") == []
    assert (await b.sizes(["q"]))["q"].ready == 0
    assert len(await a.fetch(["q"], 10, 0.1, 30, "c")) == 3


async def test_every_key_of_a_namespace_is_in_one_cluster_slot(store):
    await store.enqueue(envelopes(3) + envelopes(2, "other", eta=time.time() + 60))
    [delivery] = await store.fetch(["q"], 1, 1, 30, "c")
    await store.dead_letter(delivery, "why")
    await store.set_task("t", b"x")
    await store.revoke("t", 60)
    await store.acquire_slot("s", 1, "c", 60)
    await store.acquire_lock("l", "c", 60)
    await store.incr("n")
    keys = await namespace_keys(store)
    assert len(keys) >= 10
    assert {key_slot(key) for key in keys} == {key_slot(store.prefix.encode())}


async def test_unreachable_server(monkeypatch):
    url = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisStore(url, namespace="pqtest-down", retries=0, socket_connect_timeout=0.2)
    try:
        with pytest.raises(BrokerError, match="unreachable"):
            await store.connect()
        start = time.monotonic()
        assert await store.fetch(["q"], 1, timeout=0.3, lease=30, consumer="c") == []
        assert time.monotonic() - start < 2
    finally:
        await store.close()
