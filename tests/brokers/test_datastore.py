"""Contract of data stores: task records, revocations, leased slots, locks, counters."""

from __future__ import annotations

import asyncio
import time

from pq.brokers import DataStore

from .helpers import wait_until

TTL = 0.3


async def test_task_records(store: DataStore, other_store: DataStore) -> None:
    await store.set_task("t1", b"one")
    await store.set_task("t2", b"\x00two")
    assert await store.get_tasks(["t2", "nope", "t1"]) == [b"\x00two", None, b"one"]
    assert await store.get_tasks([]) == []
    await store.set_task("t1", b"uno")
    assert await other_store.get_tasks(["t1"]) == [b"uno"]
    await other_store.delete_task("t1")
    await store.delete_task("never-stored")
    assert await store.get_tasks(["t1", "t2"]) == [None, b"\x00two"]


async def test_add_task_only_when_absent(store: DataStore, other_store: DataStore) -> None:
    assert await store.add_task("t", b"first") is None
    assert await other_store.add_task("t", b"second") == b"first"
    assert await store.get_tasks(["t"]) == [b"first"]


async def test_task_record_ttl(store: DataStore) -> None:
    written = time.monotonic()
    await store.set_task("short", b"x", ttl=TTL)
    await store.set_task("kept", b"y", ttl=TTL)
    await store.set_task("kept", b"y")
    await store.add_task("added", b"z", ttl=TTL)
    assert await store.get_tasks(["short", "kept", "added"]) == [b"x", b"y", b"z"]
    waited = await wait_until(lambda: _gone(store, "short"), since=written)
    assert waited >= TTL - 0.1
    await wait_until(lambda: _gone(store, "added"))
    assert await store.get_tasks(["short", "kept", "added"]) == [None, b"y", None]
    assert await store.add_task("short", b"new") is None, (
        "an expired record does not block add_task"
    )
    assert await store.get_tasks(["short"]) == [b"new"]


async def _gone(store: DataStore, task_id: str) -> bool:
    return (await store.get_tasks([task_id])) == [None]


async def test_revocations(store: DataStore, other_store: DataStore) -> None:
    assert await store.revoked(["a", "b"]) == set()
    await store.revoke("a", ttl=60)
    written = time.monotonic()
    await store.revoke("b", ttl=TTL)
    assert await other_store.revoked(["a", "b", "c"]) == {"a", "b"}
    assert await store.revoked([]) == set()

    async def b_expired() -> bool:
        return await store.revoked(["a", "b"]) == {"a"}

    assert await wait_until(b_expired, since=written) >= TTL - 0.1


async def test_slots_respect_the_limit(store: DataStore, other_store: DataStore) -> None:
    assert await store.acquire_slot("job", 2, "h1", 5)
    assert await other_store.acquire_slot("job", 2, "h2", 5)
    assert not await store.acquire_slot("job", 2, "h3", 5)
    assert await store.slot_count("job") == 2
    assert await store.acquire_slot("job", 2, "h1", 5), "the holder of a slot takes it again"
    assert await other_store.slot_count("job") == 2
    await store.release_slot("job", "h1")
    await store.release_slot("job", "not-a-holder")
    assert await store.slot_count("job") == 1
    assert await store.acquire_slot("job", 2, "h3", 5)
    assert not await store.acquire_slot("job", 2, "h1", 5)
    assert await store.acquire_slot("other-job", 1, "h1", 5), "counters are per name"
    assert await store.slot_count("never") == 0


async def test_expired_slot_is_freed(store: DataStore) -> None:
    written = time.monotonic()
    assert await store.acquire_slot("job", 1, "dead-holder", TTL)
    assert not await store.acquire_slot("job", 1, "h2", 5)

    async def freed() -> bool:
        return await store.slot_count("job") == 0

    assert await wait_until(freed, since=written) >= TTL - 0.1
    assert await store.acquire_slot("job", 1, "h2", 5)
    assert not await store.acquire_slot("job", 1, "dead-holder", TTL)


async def test_renewed_slot_is_kept(store: DataStore) -> None:
    assert await store.acquire_slot("job", 1, "h1", TTL)
    assert await store.acquire_slot("job2", 1, "h1", TTL)
    await asyncio.sleep(TTL / 2)
    await store.renew_slots([("job", "h1"), ("job2", "h1"), ("job", "not-a-holder")], 5)
    await asyncio.sleep(TTL)
    assert await store.slot_count("job") == 1
    assert await store.slot_count("job2") == 1
    assert not await store.acquire_slot("job", 1, "h2", 5)
    await store.renew_slots([], 5)


async def test_locks_are_exclusive(store: DataStore, other_store: DataStore) -> None:
    assert await store.lock_holder("scheduler") is None
    assert await store.acquire_lock("scheduler", "a", 5)
    assert not await other_store.acquire_lock("scheduler", "b", 5)
    assert await other_store.lock_holder("scheduler") == "a"
    assert await store.acquire_lock("other-lock", "b", 5), "locks are per name"
    assert not await other_store.release_lock("scheduler", "b"), "only the holder releases"
    assert await store.lock_holder("scheduler") == "a"
    assert await store.release_lock("scheduler", "a")
    assert not await store.release_lock("scheduler", "a")
    assert await store.lock_holder("scheduler") is None
    assert await other_store.acquire_lock("scheduler", "b", 5)


async def test_lock_expires(store: DataStore) -> None:
    written = time.monotonic()
    assert await store.acquire_lock("l", "a", TTL)

    async def free() -> bool:
        return await store.lock_holder("l") is None

    assert await wait_until(free, since=written) >= TTL - 0.1
    assert not await store.release_lock("l", "a"), "an expired lock is no longer held"
    assert await store.acquire_lock("l", "b", 5)
    assert await store.lock_holder("l") == "b"


async def test_holder_reacquiring_a_lock_renews_it(store: DataStore) -> None:
    assert await store.acquire_lock("l", "a", TTL)
    await asyncio.sleep(TTL / 2)
    assert await store.acquire_lock("l", "a", 5)
    await asyncio.sleep(TTL)
    assert await store.lock_holder("l") == "a"
    assert not await store.acquire_lock("l", "b", 5)


async def test_counters(store: DataStore, other_store: DataStore) -> None:
    assert await store.incr("done") == 1
    assert await other_store.incr("done") == 2
    assert await store.incr("done", 10) == 12
    assert await store.incr("failed", -3) == -3
    assert await store.get_counters(["done", "failed", "unknown"]) == {
        "done": 12,
        "failed": -3,
        "unknown": 0,
    }
    assert await store.get_counters([]) == {}
    await other_store.delete_counters(["done", "never-counted"])
    await store.delete_counters([])
    assert await store.get_counters(["done", "failed"]) == {"done": 0, "failed": -3}
    assert await store.incr("done") == 1


async def test_counters_concurrent(store: DataStore, other_store: DataStore) -> None:
    await asyncio.gather(*(s.incr("n") for _ in range(50) for s in (store, other_store)))
    assert await store.get_counters(["n"]) == {"n": 100}


async def test_data_is_namespaced(store: DataStore, connect) -> None:
    elsewhere = await connect(namespace=store.namespace + "-other")
    await store.set_task("t", b"x")
    await store.revoke("t", 60)
    await store.acquire_lock("l", "a", 60)
    await store.acquire_slot("s", 1, "a", 60)
    await store.incr("c")
    assert await elsewhere.get_tasks(["t"]) == [None]
    assert await elsewhere.revoked(["t"]) == set()
    assert await elsewhere.lock_holder("l") is None
    assert await elsewhere.slot_count("s") == 0
    assert await elsewhere.get_counters(["c"]) == {"c": 0}


async def test_drop_forgets_everything(store: DataStore) -> None:
    await store.set_task("t", b"x")
    await store.revoke("t", 60)
    await store.acquire_lock("l", "a", 60)
    await store.acquire_slot("s", 1, "a", 60)
    await store.incr("c")
    await store.drop()
    assert await store.get_tasks(["t"]) == [None]
    assert await store.revoked(["t"]) == set()
    assert await store.lock_holder("l") is None
    assert await store.slot_count("s") == 0
    assert await store.get_counters(["c"]) == {"c": 0}
