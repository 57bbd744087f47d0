"""Redis-specific data store behaviour: the wire format of events, keys that expire on their own."""
from __future__ import annotations

import asyncio

import pytest

from pq.brokers.redis_events import batch_frame, frame
from redis_helpers import namespace_keys, wait_for


async def test_events_are_framed_on_one_redis_channel_per_pq_channel(store):
    raw = store.redis.pubsub()
    await raw.subscribe(store.prefix + "events:task")
    assert (await raw.get_message(timeout=5))["type"] == "subscribe"
    await store.publish("task", "done", b"\x00payload\nwith newline")
    message = await raw.get_message(ignore_subscribe_messages=True, timeout=5)
    await raw.aclose()
    assert message["channel"] == b"{%s}:events:task" % store.namespace.encode()
    assert message["data"] == b"task\ndone\n\x00payload\nwith newline"


async def test_event_names_cannot_hold_a_newline(store):
    with pytest.raises(ValueError, match="newline"):
        await store.publish("task", "do\nne", b"")


async def test_task_events_of_one_call_are_one_batch_frame_delivered_in_order(store, caplog):
    raw = store.redis.pubsub()
    await raw.subscribe(store.prefix + "events:task")
    assert (await raw.get_message(timeout=5))["type"] == "subscribe"
    tasks, everything = [], []
    await store.subscribe(lambda *event: tasks.append(event), ["task"])
    await store.subscribe(lambda *event: everything.append(event))
    payloads = [b"", b"two\nlines", b"\x00" * 300]
    items = [(f"t{i}", payload, None, event) for i, (event, payload) in enumerate(zip(["queued", "started", "done"], payloads))]
    await store.task_events(items)
    await store.task_events([("t3", b"alone", 60.0, "done")])
    first = await raw.get_message(ignore_subscribe_messages=True, timeout=5)
    second = await raw.get_message(ignore_subscribe_messages=True, timeout=5)
    await raw.aclose()
    assert first["data"] == b"task\n*\nqueued\n0\nstarted\n9\ntwo\nlinesdone\n300\n" + b"\x00" * 300
    assert second["data"] == b"task\ndone\nalone"
    expected = [("task", "queued", b""), ("task", "started", b"two\nlines"), ("task", "done", b"\x00" * 300),
                ("task", "done", b"alone")]
    await wait_for(lambda: tasks == expected and everything == expected, timeout=5)
    assert await store.get_tasks(["t0", "t1", "t2", "t3"]) == [*payloads, b"alone"]


async def test_malformed_batch_frames_are_ignored(store, caplog):
    got = []
    await store.subscribe(lambda *event: got.append(event), ["task"])
    for bad in (b"task\n*\ndone\n10\nshort", b"task\n*\ndone\nx\n", b"task\n*\ndone"):
        await store.redis.publish(store.prefix + "events:task", bad)
    await store.publish("task", "done", b"ok")
    await wait_for(lambda: got == [("task", "done", b"ok")], timeout=5)
    assert caplog.text.count("malformed") == 3


def test_star_is_not_an_event_name():
    with pytest.raises(ValueError, match="batch"):
        frame("task", "*", b"")
    with pytest.raises(ValueError):
        batch_frame("task", [("done", b""), ("*", b"")])


async def test_handlers_awaited_in_order_and_a_failing_one_does_not_stop_the_others(store):
    got: list[tuple[str, str, bytes]] = []
    done = asyncio.Event()

    def broken(channel: str, event: str, payload: bytes) -> None:
        raise RuntimeError("handler bug")

    async def handler(channel: str, event: str, payload: bytes) -> None:
        await asyncio.sleep(0)
        got.append((channel, event, payload))
        if len(got) == 3:
            done.set()

    await store.subscribe(broken)
    subscription = await store.subscribe(handler)
    await store.redis.publish(store.prefix + "events:task", b"not an event")
    for i in range(3):
        await store.publish("task", f"e{i}", b"%d" % i)
    await asyncio.wait_for(done.wait(), 5)
    assert got == [("task", "e0", b"0"), ("task", "e1", b"1"), ("task", "e2", b"2")]
    await subscription.close()
    await subscription.close()


async def test_last_subscription_closed_unsubscribes(store):
    subscription = await store.subscribe(lambda *args: None, ["task"])
    assert await store.redis.pubsub_numsub(store.channel + "task") == [((store.channel + "task").encode(), 1)]
    await subscription.close()
    await wait_for(lambda: _subscribers(store, 0))


async def _subscribers(store, count: int) -> bool:
    return await store.redis.pubsub_numsub(store.channel + "task") == [((store.channel + "task").encode(), count)]


async def test_slot_counter_key_expires_with_its_last_lease(store):
    assert await store.acquire_slot("limited", 2, "a", lease=0.1)
    assert await store.acquire_slot("limited", 2, "b", lease=0.3)
    assert await store.redis.pttl(store.prefix + "slots:limited") > 100
    await wait_for(lambda: _no_keys(store), timeout=5)


async def _no_keys(store) -> bool:
    return await namespace_keys(store) == []


async def test_records_locks_and_counters_use_plain_keys(store):
    await store.set_task("t1", b"record", ttl=60)
    await store.acquire_lock("scheduler", "me", ttl=60)
    await store.incr("tasks.done", 2)
    assert await store.redis.get(store.prefix + "task:t1") == b"record"
    assert 0 < await store.redis.pttl(store.prefix + "task:t1") <= 60000
    assert await store.redis.get(store.prefix + "lock:scheduler") == b"me"
    assert await store.redis.hget(store.prefix + "counters", "tasks.done") == b"2"


async def test_a_task_written_twice_in_one_call_gets_its_last_record_and_both_events(store):
    seen = []
    await store.subscribe(lambda *event: seen.append(event), ["task"])
    await store.task_events([("t1", b"started", None, "started"), ("t2", b"queued", None, "queued"),
                             ("t1", b"done", 60.0, "done")])
    await wait_for(lambda: len(seen) == 3, timeout=5)
    assert [event for _, event, _ in seen] == ["started", "queued", "done"]
    assert await store.get_tasks(["t1", "t2"]) == [b"done", b"queued"]
    assert 0 < await store.redis.pttl(store.prefix + "task:t1") <= 60000
    assert await store.redis.pttl(store.prefix + "task:t2") == -1
