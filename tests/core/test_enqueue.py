"""The producer's enqueue path: coalesced writes, compact messages, done futures used on demand."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pq import api as pq_api
from pq.runner import check_runnable
from pq.tasks import DeferredTaskFuture, Task


async def test_calls_of_one_loop_turn_share_one_write(api: Any, monkeypatch: Any) -> None:
    calls: list[int] = []
    write = api.store.task_events

    async def counting(items: Any, envelopes: Any = ()) -> None:
        calls.append(len(envelopes))
        await write(items, envelopes)

    monkeypatch.setattr(api.store, "task_events", counting)
    await api.tasks.queue("addition", a=1, callback=False)
    calls.clear()
    futures = [api.tasks.queue("addition", a=i, callback=False) for i in range(10)]
    tasks = await asyncio.gather(*futures)
    assert calls == [10]
    assert [task.kwargs["a"] for task in tasks] == list(range(10))
    sizes = await api.tasks.sizes(["default"])
    assert sizes["default"].ready == 11


async def test_a_failed_write_fails_every_caller_of_it(api: Any, monkeypatch: Any) -> None:
    await api.start()

    async def broken(items: Any, envelopes: Any = ()) -> None:
        raise pq_api.BrokerError("down")

    monkeypatch.setattr(api.store, "task_events", broken)
    futures = [api.tasks.queue("addition", a=i, callback=False) for i in range(3)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(result, pq_api.BrokerError) for result in results)
    with pytest.raises(pq_api.BrokerError):
        await api.tasks.queue_many("addition", [{"a": 1}])


async def test_fire_and_forget_keeps_no_waiter_until_the_done_future_is_used(api: Any, worker: Any) -> None:
    task = await api.tasks.queue("addition", a=2, b=2, callback=False)
    assert isinstance(task.done_callback, DeferredTaskFuture)
    assert api._waiters == {}
    done = await task.done_callback  # done, or not yet: the record, then the done event
    assert done.result == 4 and done.id == task.id
    assert (await task.done_callback).result == 4


async def test_queue_many_checks_and_records_every_task(api: Any) -> None:
    with pytest.raises(pq_api.PQError, match="cannot take these arguments"):
        api.tasks.queue_many("addition", [{"a": 1}, {"c": 1}])
    ids = await api.tasks.queue_many("addition", [{"a": i} for i in range(5)], meta_params={"k": 1})
    assert len(set(ids)) == 5
    tasks = [await api.tasks.get_task(task_id) for task_id in ids]
    assert [task.kwargs for task in tasks] == [{"a": i} for i in range(5)]
    assert all(task.status_string == "QUEUED" and task.meta == {"k": 1} for task in tasks)
    assert len({id(task.meta) for task in tasks}) == 5


def test_messages_leave_out_what_decodes_to_none(api: Any) -> None:
    task = Task(name="addition", queue="default", kwargs={"a": 1})
    message = task.to_message()
    assert "result" not in message and "eta" not in message and message["kwargs"] == {"a": 1}
    assert api.decode_task(api.encode_task(task)) == task
    assert len(task.id) == 33 and task.id.startswith("i")


def test_accepted_argument_names_are_remembered_bad_ones_still_refused(api: Any) -> None:
    job = api.job("addition")
    check_runnable(job, {"a": 1, "b": 2})
    assert frozenset({"a", "b"}) in job.__dict__["_accepted"]
    check_runnable(job, {"b": 3, "a": 4})
    with pytest.raises(pq_api.PQError, match="cannot take these arguments"):
        check_runnable(job, {"c": 1})
    with pytest.raises(pq_api.PQError, match="cannot take these arguments"):
        check_runnable(job, ["a"])  # type: ignore[arg-type]
