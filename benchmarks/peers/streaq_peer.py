"""streaq: ``streaq run streaq_peer:worker --workers 2``."""
from __future__ import annotations

from streaq import Worker

from _common import COUNTER, QUEUE, REDIS_URL, async_redis

worker = Worker(redis_url=REDIS_URL, queue_name=QUEUE, concurrency=16)


@worker.task
async def incr() -> None:
    await async_redis().incr(COUNTER)


@worker.task
async def noop() -> None:
    pass


@worker.task
async def mark(key: str) -> None:
    await async_redis().rpush(key, 1)


JOBS = {"incr": incr, "noop": noop}


def worker_commands(bin_dir: str) -> list[list[str]]:
    return [[f"{bin_dir}/streaq", "run", "streaq_peer:worker", "--workers", "2"]]


async def setup() -> None:
    await worker.__aenter__()


async def teardown() -> None:
    await worker.__aexit__(None, None, None)


async def enqueue(job: str) -> None:
    await JOBS[job].enqueue()


async def enqueue_batch(job: str, n: int) -> None:
    await worker.enqueue_many([JOBS[job].enqueue() for _ in range(n)])


async def enqueue_mark(key: str) -> None:
    await mark.enqueue(key)
