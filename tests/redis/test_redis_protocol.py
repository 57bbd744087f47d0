"""docs/protocol.md holds: a producer using plain Redis commands, no pq code, queues a task."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import redis.asyncio as aioredis

from pq.serializers import JsonCodec, MessageCodec
from pq.tasks import QUEUED, Task


def task_json(task_id: str, queue: str, eta: float | None = None) -> bytes:
    """The task as a producer in another language would write it (docs/protocol.md)."""
    return json.dumps({
        "id": task_id, "name": "addition", "queue": queue, "kwargs": {"a": 4, "b": 6},
        "status": 6, "time_queued": time.time(), "eta": eta, "timeout": 30,
        "meta": {"from": "plain redis"}, "retries": 0, "attempts": 0,
    }).encode()


async def produce(
    url: str, ns: str, queue: str, task_id: str, body: bytes, eta_ms: float | None = None
) -> None:
    """MULTI: body, then ready list (or delayed zset), wake list, queue registry."""
    client = aioredis.Redis.from_url(url)
    try:
        async with client.pipeline(transaction=True) as tx:
            tx.hsetnx(f"{{{ns}}}:body:{queue}", task_id, body)
            if eta_ms is None:
                tx.rpush(f"{{{ns}}}:ready:{queue}", task_id)
            else:
                tx.zadd(f"{{{ns}}}:delayed:{queue}", {task_id: eta_ms})
            tx.rpush(f"{{{ns}}}:wake:{queue}", "1")
            tx.sadd(f"{{{ns}}}:queues", queue)
            await tx.execute()
    finally:
        await client.aclose()


async def test_task_queued_with_plain_redis_commands_is_fetched_and_decoded(store, redis_url):
    task_id = "i" + uuid.uuid4().hex
    fetch = asyncio.create_task(store.fetch(["default"], 10, timeout=10, lease=30, consumer="c"))
    await asyncio.sleep(0.05)
    await produce(redis_url, store.namespace, "default", task_id, task_json(task_id, "default"))
    [delivery] = await asyncio.wait_for(fetch, 5)
    task = Task.from_dict(MessageCodec(JsonCodec()).decode(delivery.body))
    assert (task.id, task.name, task.queue, task.kwargs, task.status) == (
        task_id, "addition", "default", {"a": 4, "b": 6}, QUEUED,
    )
    assert task.meta == {"from": "plain redis"}
    assert delivery.deliveries == 1
    await store.ack([delivery])
    assert (await store.sizes(["default"]))["default"].as_dict() == {
        "ready": 0, "delayed": 0, "inflight": 0, "dead": 0,
    }


async def test_delayed_task_queued_with_plain_redis_commands(store, redis_url):
    task_id = "i" + uuid.uuid4().hex
    eta = time.time() + 0.3
    body = task_json(task_id, "default", eta)
    await produce(redis_url, store.namespace, "default", task_id, body, eta * 1000)
    assert (await store.sizes(["default"]))["default"].delayed == 1
    [delivery] = await store.fetch(["default"], count=1, timeout=5, lease=30, consumer="c")
    assert time.time() >= eta - 0.01
    assert Task.from_dict(MessageCodec(JsonCodec()).decode(delivery.body)).eta == eta
    await store.ack([delivery])
    assert (await store.sizes(["default"]))["default"].as_dict() == {
        "ready": 0, "delayed": 0, "inflight": 0, "dead": 0,
    }
