"""saq: ``saq saq_peer.settings --workers 2``."""
from __future__ import annotations

from saq import Queue

from _common import COUNTER, QUEUE, REDIS_URL, async_redis

queue = Queue.from_url(REDIS_URL, name=QUEUE)


async def incr(ctx: dict) -> None:
    await async_redis().incr(COUNTER)


async def noop(ctx: dict) -> None:
    pass


async def mark(ctx: dict, *, target: str) -> None:
    await async_redis().rpush(target, 1)


settings = {"queue": queue, "functions": [incr, noop, mark], "concurrency": 10}


def worker_commands(bin_dir: str) -> list[list[str]]:
    return [[f"{bin_dir}/saq", "saq_peer.settings", "--workers", "2", "--quiet"]]


async def setup() -> None:
    await queue.connect()


async def teardown() -> None:
    await queue.disconnect()


async def enqueue(job: str) -> None:
    await queue.enqueue(job)


async def enqueue_mark(key: str) -> None:
    await queue.enqueue("mark", target=key)
