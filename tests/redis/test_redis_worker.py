"""A worker on a Redis store: what the consumer relies on the Redis scripts for."""
from __future__ import annotations

import uuid
from typing import Any, AsyncIterator

import pytest

from pq.api import PulsarQueue, Worker


@pytest.fixture
async def api(redis_url: str) -> AsyncIterator[Any]:
    app = PulsarQueue(
        data_store=redis_url, namespace=f"pqtest-{uuid.uuid4().hex[:10]}",
        task_paths=["sampletasks.*"], lease_timeout=5, task_pool_timeout=0.2,
    )
    api = app.api()
    await api.start()
    yield api
    await api.store.drop()
    await api.close()


async def test_revoked_queued_task_never_runs_without_a_revoked_round_trip(api: Any, monkeypatch) -> None:
    revoked = await api.tasks.queue("addition", a=1, b=2, callback=False)
    assert await api.tasks.revoke(revoked.id)

    async def refuse(task_ids: Any) -> set[str]:
        raise AssertionError("FETCH already dropped revoked messages")

    monkeypatch.setattr(api.store, "revoked", refuse)
    worker = Worker(api, "redis-worker")
    await worker.start()
    try:
        check = await api.tasks.queue("addition", a=1, b=1)
        assert check.result == 2
        assert worker.processed == 1
        assert (await api.tasks.get_task(revoked.id)).status_string == "REVOKED"
        assert (await api.tasks.sizes())["default"].ready == 0
    finally:
        await worker.stop(2)
