"""Settings every peer module reads from the environment the suite gives it."""
from __future__ import annotations

import os
from typing import Any

BROKER = os.environ.get("BENCH_BROKER", "redis")          # redis | amqp | sqlite
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
SQLITE_PATH = os.environ.get("BENCH_SQLITE", "/tmp/bench-peer.sqlite3")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")
COUNTER = os.environ.get("BENCH_COUNTER", "bench:counter")

_sync: Any = None
_async: Any = None


def sync_redis() -> Any:
    """One redis-py client per process (thread-safe pool) for sync job bodies."""
    global _sync
    if _sync is None:
        import redis

        _sync = redis.Redis.from_url(REDIS_URL)
    return _sync


def async_redis() -> Any:
    """One redis.asyncio client per process for async job bodies."""
    global _async
    if _async is None:
        import redis.asyncio

        _async = redis.asyncio.Redis.from_url(REDIS_URL)
    return _async
