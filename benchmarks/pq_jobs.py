"""pq's benchmark jobs: the same bodies as every peer's (see peers/)."""
from __future__ import annotations

import os
from typing import Any

from pq import api

_client: Any = None


def redis() -> Any:
    """One redis.asyncio client per consumer process, made on first use."""
    global _client
    if _client is None:
        import redis.asyncio

        _client = redis.asyncio.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _client


@api.job()
def noop(self) -> None:
    """Nothing: what a task costs the queue itself."""


@api.job()
async def incr(self) -> None:
    """One Redis INCR on the run's counter: the completion signal of a drain."""
    await redis().incr(os.environ["BENCH_COUNTER"])


@api.job()
async def mark(self, key: str = "") -> None:
    """RPUSH to ``key``: the driver's BLPOP sees the task has run (latency)."""
    await redis().rpush(key, 1)
