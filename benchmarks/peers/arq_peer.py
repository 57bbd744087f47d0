"""arq: ``arq arq_peer.WorkerSettings`` (one process each; the suite starts two)."""
from __future__ import annotations

from typing import Any

from arq.connections import RedisSettings, create_pool

from _common import COUNTER, QUEUE, REDIS_URL, async_redis

POOL: Any = None


async def incr(ctx: dict) -> None:
    await async_redis().incr(COUNTER)


async def noop(ctx: dict) -> None:
    pass


async def mark(ctx: dict, key: str) -> None:
    await async_redis().rpush(key, 1)


class WorkerSettings:
    functions = [incr, noop, mark]
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    queue_name = QUEUE
    # arq's defaults (max_jobs=10, results kept 1 h), but a 10 ms poll instead of
    # 500 ms: with the default an idle worker looks at its queue twice a second.
    poll_delay = 0.01


def worker_commands(bin_dir: str) -> list[list[str]]:
    return [[f"{bin_dir}/arq", "arq_peer.WorkerSettings"] for _ in range(2)]


async def setup() -> None:
    global POOL
    POOL = await create_pool(RedisSettings.from_dsn(REDIS_URL), default_queue_name=QUEUE)


async def teardown() -> None:
    await POOL.aclose()


async def enqueue(job: str) -> None:
    await POOL.enqueue_job(job)


async def enqueue_mark(key: str) -> None:
    await POOL.enqueue_job("mark", key)
