"""AMQP leases: redelivery when a consumer dies or loses its connection, delivery counts, acks."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import aio_pika

from pq.brokers import Envelope, QueueSize

from amqp_helpers import close_connections, drain, publish_raw

ROOT = Path(__file__).resolve().parents[2]

HOLDER = textwrap.dedent("""
    import asyncio, sys
    from pq.brokers.amqp import AmqpBroker

    async def main(url, namespace):
        broker = AmqpBroker(url, namespace=namespace)
        got = await broker.fetch(["q"], 1, 10.0, 30.0, "victim")
        print("taken", got[0].id, got[0].deliveries, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


async def test_consumer_killed_mid_task_is_redelivered(broker, amqp_url: str) -> None:
    await broker.enqueue([Envelope("m0", "q", b"body")])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, amqp_url, broker.namespace],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 15)
        assert line.split() == ["taken", "m0", "1"]
        assert await broker.fetch(["q"], 1, 0.3, 30.0, "survivor") == [], "held by the living holder"
        os.kill(holder.pid, signal.SIGKILL)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    again = await broker.fetch(["q"], 1, 5.0, 30.0, "survivor")
    assert [(d.id, d.body, d.deliveries) for d in again] == [("m0", b"body", 2)]
    await broker.ack(again)
    assert (await broker.sizes(["q"]))["q"] == QueueSize()


async def test_close_connection_mid_run_loses_nothing(make) -> None:
    producer = await make(connection_name=f"pqtest-producer-{os.getpid()}")
    consumer = await make(connection_name=f"pqtest-consumer-{os.getpid()}")
    total = 200

    async def produce() -> None:
        for i in range(0, total, 5):
            await producer.enqueue([Envelope(f"m{j}", "q", b"x") for j in range(i, i + 5)])
            await asyncio.sleep(0.01)

    async def chaos() -> None:
        await asyncio.sleep(0.2)
        assert await asyncio.to_thread(close_connections, f"pqtest-consumer-{os.getpid()}") == 2, "its own and its consumer's"
        await asyncio.sleep(0.2)
        assert await asyncio.to_thread(close_connections, f"pqtest-producer-{os.getpid()}") == 1

    results = await asyncio.gather(drain(consumer, "q", total, timeout=30), produce(), chaos())
    sent = {f"m{i}" for i in range(total)}
    assert {d.id for d in results[0]} == sent
    late = await consumer.fetch(["q"], 50, 0.3, 30.0, "drain")
    assert {d.id for d in late} <= sent, "at least once: a publish cut off may come twice, nothing else"
    await consumer.ack(late)
    assert (await consumer.sizes(["q"]))["q"] == QueueSize()


async def test_ack_on_a_closed_channel_is_a_no_op(broker) -> None:
    await broker.enqueue([Envelope("m0", "q", b"x")])
    got = await broker.fetch(["q"], 1, 0, 30.0, "c")
    await broker.consumers["c"].underlay.close()
    await broker.ack(got)
    await broker.requeue(got[0], b"ignored")
    await broker.dead_letter(got[0], "ignored")
    again = await broker.fetch(["q"], 1, 5.0, 30.0, "c")
    assert [(d.id, d.body, d.deliveries) for d in again] == [("m0", b"x", 2)]
    await broker.ack(again)
    await broker.ack(again)
    assert await broker.dead_letters() == []


async def test_reject_requeue_counts_a_delivery_and_reject_dead_letters(broker) -> None:
    await broker.enqueue([Envelope("m0", "q", b"x"), Envelope("m1", "q", b"y")])
    first = await broker.fetch(["q"], 2, 0, 30.0, "c")
    await broker.reject(first[0], requeue=True)
    await broker.reject(first[1], requeue=False)
    again = await broker.fetch(["q"], 2, 2.0, 30.0, "c")
    assert [(d.id, d.deliveries) for d in again] == [("m0", 2)]
    letters = await broker.dead_letters()
    assert [(d.id, d.queue, d.body, d.reason) for d in letters] == [("m1", "q", b"y", "rejected by a consumer")]
    await broker.ack(again)


async def test_quorum_queues_count_with_x_delivery_count(make) -> None:
    broker = await make(queue_type="quorum")
    await broker.enqueue([Envelope("m0", "q", b"x")])
    for expected in (1, 2, 3):
        got = await broker.fetch(["q"], 1, 5.0, 30.0, "c")
        assert [(d.id, d.deliveries) for d in got] == [("m0", expected)]
        await broker.reject(got[0], requeue=True)


async def test_per_queue_prefetch_caps_what_a_consumer_holds(make) -> None:
    broker = await make(prefetch="slow:2")
    await broker.enqueue([Envelope(f"s{i}", "slow", b"") for i in range(5)] + [Envelope("f0", "fast", b"")])
    got = await broker.fetch(["slow", "fast"], 10, 0, 30.0, "c")
    assert [d.id for d in got] == ["s0", "s1", "f0"]
    assert await broker.fetch(["slow"], 10, 0.2, 30.0, "c") == []
    await broker.ack(got[:1])
    assert [d.id for d in await broker.fetch(["slow"], 10, 0, 30.0, "c")] == ["s2"]


async def test_messages_from_other_publishers_do_not_crash(broker, amqp_url: str) -> None:
    await broker.enqueue([Envelope("m0", "q", b"first")])
    for headers in ({"x-pq-eta": "soon", "x-pq-deliveries": [1]}, None):
        await publish_raw(amqp_url, f"{broker.namespace}.q", aio_pika.Message(b"raw", headers=headers))
    got = await broker.fetch(["q"], 10, 0, 30.0, "c")
    assert [(d.id, d.body, d.deliveries) for d in got][0] == ("m0", b"first", 1)
    assert [(d.body, d.deliveries) for d in got[1:]] == [(b"raw", 1), (b"raw", 1)]
    await broker.ack(got)


async def test_publishing_redeclares_what_was_deleted_behind_its_back(broker, make) -> None:
    await broker.enqueue([Envelope("m0", "q", b"x")])
    await broker.publish("tasks", "queued", b"")
    operator = await make()
    channel = await operator.raw_channel()
    await channel.queue_delete(f"{broker.namespace}.q")
    await channel.exchange_delete(f"{broker.namespace}.events")
    await channel.close()
    await broker.enqueue([Envelope("m1", "q", b"y")])
    await broker.publish("tasks", "queued", b"")
    assert [d.id for d in await broker.fetch(["q"], 10, 0, 30.0, "c")] == ["m1"]


REFUSED = textwrap.dedent("""
    import asyncio, gc, sys, threading
    from pq.brokers.amqp import AmqpBroker
    from pq.exceptions import BrokerError

    async def main(url):
        broker = AmqpBroker(url, namespace="refused")
        try:
            await broker.connect()
        except BrokerError as exc:
            print(exc)

    loop = asyncio.new_event_loop()  # left open, as an api's background loop is
    loop.run_until_complete(main(sys.argv[1]))
    collector = threading.Thread(target=gc.collect)  # a collection where no loop is
    collector.start()
    collector.join()
""")


def test_a_refused_connect_leaves_no_connection_to_close_later(amqp_url: str) -> None:
    """aio-pika closes an abandoned connection from ``__del__``; with its loop no longer
    running that warned 'coroutine ... was never awaited' at some later collection."""
    bad = amqp_url.replace("guest:guest@", "guest:wrong@")
    done = subprocess.run([sys.executable, "-W", "always", "-c", REFUSED, bad], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert "ACCESS_REFUSED" in done.stdout, done.stdout + done.stderr
    assert "never awaited" not in done.stderr, done.stderr
