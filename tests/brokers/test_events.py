"""Contract of data stores: events reach every subscriber of every connection, in order."""

from __future__ import annotations

import asyncio

from pq.brokers import DataStore

from .helpers import Recorder


async def test_subscriber_gets_events(store: DataStore) -> None:
    got = Recorder()
    sub = await store.subscribe(got)
    await store.publish("tasks", "done", b"\x00payload\xff")
    assert await got.wait(1) == [("tasks", "done", b"\x00payload\xff")]
    await sub.close()


async def test_every_subscriber_of_every_connection(
    store: DataStore, other_store: DataStore
) -> None:
    here, here_too, there = Recorder(), Recorder(), Recorder()
    subs = [
        await store.subscribe(here),
        await store.subscribe(here_too),
        await other_store.subscribe(there),
    ]
    await other_store.publish("tasks", "queued", b"1")
    await store.publish("workers", "ready", b"2")
    expected = [("tasks", "queued", b"1"), ("workers", "ready", b"2")]
    for recorder in (here, here_too, there):
        assert sorted(await recorder.wait(2)) == expected
    for sub in subs:
        await sub.close()


async def test_events_keep_their_order(store: DataStore, other_store: DataStore) -> None:
    got = Recorder()
    await other_store.subscribe(got)
    for i in range(50):
        await store.publish("tasks", "n", str(i).encode())
    assert [payload for _, _, payload in await got.wait(50)] == [str(i).encode() for i in range(50)]


async def test_async_and_failing_handlers(store: DataStore) -> None:
    got = Recorder()

    async def slow(channel: str, event: str, payload: bytes) -> None:
        await asyncio.sleep(0.01)
        got(channel, event, payload)

    def broken(channel: str, event: str, payload: bytes) -> None:
        raise RuntimeError("handler bug")

    failing = Recorder()

    def fails_once(channel: str, event: str, payload: bytes) -> None:
        failing(channel, event, payload)
        if len(failing.events) == 1:
            raise RuntimeError("first call fails")

    await store.subscribe(slow)
    await store.subscribe(broken)
    await store.subscribe(fails_once)
    await store.publish("c", "a", b"1")
    await store.publish("c", "b", b"2")
    assert [e for _, e, _ in await got.wait(2)] == ["a", "b"]
    assert [e for _, e, _ in await failing.wait(2)] == ["a", "b"], (
        "a failing handler stays subscribed"
    )


async def test_only_events_published_after_subscribing(
    store: DataStore, other_store: DataStore
) -> None:
    await store.publish("c", "before", b"")
    await other_store.publish("c", "before", b"")
    got = Recorder()
    await store.subscribe(got)
    await other_store.publish("c", "after", b"")
    assert await got.wait(1) == [("c", "after", b"")]
    await store.publish("c", "sync", b"")
    assert [e for _, e, _ in await got.wait(2)] == ["after", "sync"]


async def test_closed_subscription_gets_nothing(store: DataStore, other_store: DataStore) -> None:
    closed, open_ = Recorder(), Recorder()
    sub = await store.subscribe(closed)
    await store.subscribe(open_)
    await other_store.publish("c", "one", b"")
    await closed.wait(1)
    await sub.close()
    await sub.close()
    await other_store.publish("c", "two", b"")
    await open_.wait(2)
    assert closed.events == [("c", "one", b"")]


async def test_events_are_namespaced(store: DataStore, connect) -> None:
    elsewhere = await connect(namespace=store.namespace + "-other")
    mine, theirs = Recorder(), Recorder()
    await store.subscribe(mine)
    await elsewhere.subscribe(theirs)
    await elsewhere.publish("c", "theirs", b"")
    await store.publish("c", "mine", b"")
    assert await mine.wait(1) == [("c", "mine", b"")]
    assert await theirs.wait(1) == [("c", "theirs", b"")]
    await elsewhere.publish("c", "sync", b"")
    await theirs.wait(2)
    assert mine.events == [("c", "mine", b"")]


async def test_close_ends_subscriptions_and_connect_again(
    store: DataStore, other_store: DataStore
) -> None:
    before = Recorder()
    await store.subscribe(before)
    await store.close()
    await store.connect()
    after = Recorder()
    await store.subscribe(after)
    await other_store.publish("c", "e", b"")
    await after.wait(1)
    assert before.events == []


async def test_task_events_record_and_publish_in_order(store: DataStore, other_store: DataStore) -> None:
    got = Recorder()
    sub = await other_store.subscribe(got)
    await store.task_events([("t1", b"q1", None, "queued"), ("t2", b"q2", 60.0, "queued"), ("t1", b"s1", None, "started")])
    assert await got.wait(3) == [("task", "queued", b"q1"), ("task", "queued", b"q2"), ("task", "started", b"s1")]
    assert await other_store.get_tasks(["t1", "t2"]) == [b"s1", b"q2"]
    await sub.close()


async def test_task_events_keep_the_last_write_of_a_task_with_and_without_ttl(store: DataStore) -> None:
    await store.task_events([("a", b"a1", None, "started"), ("b", b"b1", None, "queued"),
                             ("a", b"a2", 60.0, "done"), ("c", b"c1", None, "queued")])
    assert await store.get_tasks(["a", "b", "c"]) == [b"a2", b"b1", b"c1"]
    await store.task_events([("a", b"a3", 60.0, "done"), ("b", b"b2", None, "started"),
                             ("a", b"a4", None, "queued"), ("c", b"c2", None, "started")])
    assert await store.get_tasks(["a", "b", "c"]) == [b"a4", b"b2", b"c2"]


async def test_subscribers_of_some_channels_get_only_those(store: DataStore, other_store: DataStore) -> None:
    tasks_only, everything = Recorder(), Recorder()
    subs = [await other_store.subscribe(tasks_only, ["task"]), await other_store.subscribe(everything)]
    await store.publish("control", "revoke", b"1")
    await store.publish("task", "done", b"2")
    await store.publish("monitor", "stats", b"3")
    assert await everything.wait(3) == [("control", "revoke", b"1"), ("task", "done", b"2"), ("monitor", "stats", b"3")]
    assert tasks_only.events == [("task", "done", b"2")]
    for sub in subs:
        await sub.close()


async def test_task_events_then_envelopes_when_the_store_is_the_broker(store: DataStore) -> None:
    from pq.brokers import Envelope, MessageBroker

    if not isinstance(store, MessageBroker):
        return
    got = Recorder()
    sub = await store.subscribe(got, ["task"])
    await store.task_events([("m1", b"body1", None, "queued")], [Envelope("m1", "q", b"body1")])
    assert await store.get_tasks(["m1"]) == [b"body1"]
    taken = await store.fetch(["q"], 5, 1.0, 5.0, "c")
    assert [(d.id, d.body) for d in taken] == [("m1", b"body1")]
    assert await got.wait(1) == [("task", "queued", b"body1")]
    await store.ack(taken)
    await sub.close()
