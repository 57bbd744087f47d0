"""A worker on a Redis store: what the consumer relies on the Redis scripts for."""
from __future__ import annotations

import uuid
from typing import Any, AsyncIterator

import pytest

from pq.api import PulsarQueue, Worker


def make_api(data_store: str, **settings: Any) -> Any:
    app = PulsarQueue(
        data_store=data_store, namespace=f"pqtest-{uuid.uuid4().hex[:10]}",
        task_paths=["sampletasks.*"], lease_timeout=5, task_pool_timeout=0.2, **settings,
    )
    return app.api()


@pytest.fixture
async def api(redis_url: str) -> AsyncIterator[Any]:
    api = make_api(redis_url)
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


async def test_a_separate_redis_data_store_is_still_asked_for_revocations(redis_url: str) -> None:
    api = make_api(redis_url, message_broker=redis_url.replace("127.0.0.1", "localhost"))
    await api.start()
    worker = Worker(api, "redis-worker")
    try:
        assert api.broker is not api.store
        revoked = await api.tasks.queue("addition", a=1, b=2, callback=False)
        assert await api.tasks.revoke(revoked.id)
        # As if the revocation were only in the data store, which FETCH does not see.
        await api.store.redis.delete(api.store.prefix + f"revoked:{revoked.id}")
        asked: list[str] = []

        async def revocations(task_ids: Any) -> set[str]:
            asked.extend(task_ids)
            return {revoked.id} & set(task_ids)

        api.store.revoked = revocations
        await worker.start()
        check = await api.tasks.queue("addition", a=1, b=1)
        assert check.result == 2
        assert revoked.id in asked and worker.processed == 1
        assert (await api.tasks.sizes())["default"].ready == 0
    finally:
        await worker.stop(2)
        await api.store.drop()
        await api.close()


async def test_a_short_task_s_started_and_done_share_one_write(api: Any) -> None:
    raw = api.store.redis.pubsub()
    await raw.subscribe(api.store.channel + "task")
    assert (await raw.get_message(timeout=5))["type"] == "subscribe"
    worker = Worker(api, "redis-worker")
    await worker.start()
    try:
        task = await api.tasks.queue("addition", a=2, b=3)
        assert task.result == 5
        frames = []
        while (message := await raw.get_message(ignore_subscribe_messages=True, timeout=1)) is not None:
            frames.append(message["data"])
        queued, outcome = frames  # one PUBLISH for queued, one for started and done together
        assert queued.startswith(b"task\nqueued\n")
        assert outcome.startswith(b"task\n*\nstarted\n") and b"done\n" in outcome
    finally:
        await raw.aclose()
        await worker.stop(1)
