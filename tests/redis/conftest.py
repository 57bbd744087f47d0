"""Fixtures for the Redis-specific tests: the shared server, or one started by a test.

Tests skip when Redis (or redis-server, for the tests that start their own)
is missing, except under ``CI=true`` where a missing server is a failure.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import redis

from pq.brokers.redis import RedisStore
from redis_helpers import RedisServer, drop_namespace, unavailable

REDIS_URL = os.environ.get("PQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis is not reachable at {REDIS_URL} ({exc}); set PQ_TEST_REDIS_URL")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
async def make_store(redis_url: str) -> AsyncIterator:
    """Stores on the shared server, each in a fresh namespace (or a given one), cleaned after."""
    stores: list[RedisStore] = []

    async def make(namespace: str | None = None, url: str = redis_url, **options) -> RedisStore:
        store = RedisStore(url, namespace=namespace or f"pqtest-{uuid.uuid4().hex[:10]}", **options)
        await store.connect()
        stores.append(store)
        return store

    yield make
    for store in stores:
        if store.url == redis_url:
            await drop_namespace(store)
        await store.close()


@pytest.fixture
async def store(make_store) -> RedisStore:
    return await make_store()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
