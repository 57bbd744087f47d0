"""Jobs, tasks and executors in one process on memory:// (the seed's API)."""
from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import psutil
import pytest
import testjobs
from coreapp import make_app

from pq import api as pq_api
from pq.brokers.base import Envelope
from pq.exceptions import BrokerError, ImproperlyConfigured, SerializationError, TaskNotAvailable
from pq.jobs.job import slugify
from pq.tasks import FULL_RUN_STATES, READY_STATES, Task


async def test_seed_jobs(api: Any, worker: Any) -> None:
    task = await api.tasks.queue("addition", a=4, b=6)
    assert (task.result, task.status_string) == (10, "SUCCESS")
    assert task.worker == "test-worker" and task.time_ended >= task.time_started >= task.time_queued
    task = await api.tasks.queue("asynchronous", lag=0.1)
    assert task.status_string == "SUCCESS" and 0.09 < task.result < 2
    task = await api.tasks.queue("read.text", input=__file__)
    assert task.result.startswith('"""Jobs, tasks')
    task = await api.tasks.queue("in.thread")
    assert task.result.startswith("pq-thread")
    task = await api.tasks.queue("cpubound")
    assert task.status_string == "SUCCESS" and task.result[0] == "OK" and task.result[1] != os.getpid()
    task = await api.tasks.queue("cpubound", error=True)
    assert task.status_string == "FAILURE" and "kaputt" in task.exception and "CpuBoundError" in task.stacktrace
    task = await api.tasks.queue("cpuboundwithasync")
    assert task.status_string == "SUCCESS" and task.result != os.getpid()


async def test_cpubound_logs_reach_consumer(api: Any, worker: Any, caplog: Any) -> None:
    caplog.set_level("INFO")
    task = await api.tasks.queue("cpubound")
    assert task.status_string == "SUCCESS"
    assert any("Testing cpubound in pid" in r.getMessage() and r.name == "pq.cpubound" for r in caplog.records)
    task = await api.tasks.queue("cpuboundbiglog", size=200000)
    assert task.result == 200000
    assert any(len(r.getMessage()) == 200000 for r in caplog.records)


async def test_cpubound_timeout_kills_the_process(api: Any, worker: Any, tmp_path: Any) -> None:
    path = tmp_path / "pid"
    task = await api.tasks.queue("cpu.sleeper", path=str(path))
    assert task.status_string == "REVOKED"
    assert "timeout" in task.exception and task.time_ended - task.time_started >= 1
    pid = int(path.read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    task = await api.tasks.queue("cpubound")
    assert task.status_string == "SUCCESS"


async def test_async_timeout_is_revoked_with_elapsed(api: Any, worker: Any) -> None:
    task = await api.tasks.queue("slow")
    assert task.status_string == "REVOKED"
    assert 0.19 < task.time_ended - task.time_started < 2
    task = await api.tasks.queue("sleeper", lag=5, timeout=0.1)
    assert task.status_string == "REVOKED"


async def test_max_concurrency(api: Any, worker: Any) -> None:
    testjobs.STATE.update(running=0, peak=0)
    tasks = await asyncio.gather(*(api.tasks.queue("limited", lag=0.2) for _ in range(5)))
    assert [t.status_string for t in tasks] == ["SUCCESS"] * 5
    assert testjobs.STATE["peak"] == 2
    assert await api.store.slot_count("limited") == 0


async def test_max_concurrency_across_workers(api: Any) -> None:
    from pq.api import Worker

    testjobs.STATE.update(running=0, peak=0)
    workers = [Worker(api, f"w{i}") for i in range(3)]
    for w in workers:
        await w.start()
    try:
        tasks = await asyncio.gather(*(api.tasks.queue("limited", lag=0.1) for _ in range(8)))
        assert all(t.status_string == "SUCCESS" for t in tasks)
        assert testjobs.STATE["peak"] == 2
    finally:
        for w in workers:
            await w.stop(2)


async def test_retries_keep_the_id(api: Any, worker: Any) -> None:
    events: list[tuple[str, str]] = []
    api.on_events("task", "*", lambda channel, event, task: events.append((event, task.id)))
    task = await api.tasks.queue("flaky", key="retries-1", failures=2)
    assert task.status_string == "SUCCESS" and task.result == 3 and task.retries == 2
    mine = [event for event, task_id in events if task_id == task.id]
    assert mine.count("retry") == 2 and mine.count("done") == 1 and mine[0] == "queued"


async def test_final_failure_goes_to_dead_letters(api: Any, worker: Any) -> None:
    task = await api.tasks.queue("flaky", key="dead-1", failures=10, meta_params={"retry_delay": 0.01})
    assert task.status_string == "FAILURE" and task.retries == 3 and "failure 4" in task.exception
    letters = await api.tasks.dead_letters()
    assert [t.id for _, t in letters] == [task.id]
    assert "failure 4" in letters[0][0].reason
    task2 = await api.tasks.queue("always.fails")
    assert task2.status_string == "FAILURE" and "KeyError" in task2.exception
    testjobs.STATE["calls"]["dead-1"] = 100  # past its failures: the next run succeeds
    assert await api.tasks.retry_dead_letters([task.id]) == 1
    done = await api.tasks.wait_for_result(task.id, timeout=10)
    assert done.status_string == "SUCCESS" and done.retries == 0
    assert await api.tasks.purge_dead_letters() == 1
    assert await api.tasks.dead_letters() == []


async def test_revoke_queued_task_never_runs(api: Any, tmp_path: Any) -> None:
    path = tmp_path / "ran"
    task = await api.tasks.queue("marker", path=str(path), callback=False, delay=0.3)
    assert await api.tasks.revoke(task.id)
    done = await task.done_callback
    assert done.status_string == "REVOKED"
    from pq.api import Worker

    worker = Worker(api, "late")
    await worker.start()
    try:
        check = await api.tasks.queue("addition", a=1, b=1, delay=0.5)
        assert check.result == 2
        assert not path.exists()
        assert (await api.tasks.sizes())["default"].ready == 0
    finally:
        await worker.stop(1)


async def test_revoke_running_task(api: Any, worker: Any) -> None:
    started = asyncio.Event()
    api.on_events("task", "started", lambda c, e, t: started.set())
    future = api.tasks.queue("sleeper", lag=30)
    await asyncio.wait_for(started.wait(), 5)
    assert await api.tasks.revoke(future.task_id)
    task = await asyncio.wait_for(future, 5)
    assert task.status_string == "REVOKED" and "revoked" in task.exception


async def test_custom_task_id_returns_the_same_future(api: Any, worker: Any) -> None:
    first = await api.tasks.queue("sleeper", lag=0.3, task_id="custom-1", callback=False)
    second = await api.tasks.queue("sleeper", lag=0.3, task_id="custom-1", callback=False)
    assert first.id == second.id == "custom-1"
    assert (await first.done_callback).status_string == "SUCCESS"
    assert (await second.done_callback).status_string == "SUCCESS"
    for _ in range(100):  # the ack follows the done event
        sizes = await api.tasks.sizes()
        if sizes["default"].inflight == 0:
            break
        await asyncio.sleep(0.02)
    assert sizes["default"].ready == 0 and sizes["default"].inflight == 0


async def test_a_custom_id_whose_queueing_failed_can_be_queued_again(
    api: Any, worker: Any, monkeypatch: Any
) -> None:
    write = api.store.task_events
    failures = [BrokerError("the broker went away")]

    async def failing_once(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return await write(*args, **kwargs)

    monkeypatch.setattr(api.store, "task_events", failing_once)
    with pytest.raises(BrokerError, match="went away"):
        await api.tasks.queue("addition", a=1, b=2, task_id="retried-1")
    task = await asyncio.wait_for(api.tasks.queue("addition", a=1, b=2, task_id="retried-1"), 5)
    assert (task.id, task.status_string, task.result) == ("retried-1", "SUCCESS", 3)


async def test_a_custom_id_claim_whose_reply_was_lost_is_still_ours(api: Any, worker: Any, monkeypatch: Any) -> None:
    add = api.store.add_task

    async def stored_then_retried(task_id: str, body: bytes, ttl: float | None = None) -> bytes | None:
        await add(task_id, body, ttl)  # the first send stored it; its reply was lost
        return await add(task_id, body, ttl)  # the store sends it again and finds it there

    monkeypatch.setattr(api.store, "add_task", stored_then_retried)
    task = await asyncio.wait_for(api.tasks.queue("addition", a=3, b=4, task_id="lost-reply-1"), 5)
    assert (task.id, task.status_string, task.result) == ("lost-reply-1", "SUCCESS", 7)


async def test_a_task_whose_outcome_cannot_be_recorded_is_not_acked_and_runs_again(
    api: Any, worker: Any, monkeypatch: Any
) -> None:
    """The worker frees the slot before the done record is written, but acks only after."""
    write, failed = api.store.task_events, []

    async def failing_first_done(items: Any, envelopes: Any = ()) -> None:
        done = [item[0] for item in items if item[3] == "done"]
        if done and not failed:
            failed.extend(done)
            raise BrokerError("the store went away")
        await write(items, envelopes)

    monkeypatch.setattr(api.store, "task_events", failing_first_done)
    acked = record_acks(api, monkeypatch)
    task = await asyncio.wait_for(api.tasks.queue("addition", a=5, b=6), 10)
    assert (task.status_string, task.result) == ("SUCCESS", 11)  # from the second run: writes are not retried
    assert failed == [task.id] and acked == [task.id]  # acked once: after the second run's record


@pytest.mark.parametrize("unacked_take_slots", [False, True])
async def test_a_slot_frees_when_the_task_ends_or_when_its_ack_goes(
    api: Any, monkeypatch: Any, unacked_take_slots: bool
) -> None:
    """One slot; the done records are held back.  The second task starts at once, unless the
    broker counts unacked deliveries against the consumer (RabbitMQ's prefetch); a third never
    does: at most ``concurrent_tasks`` finished tasks wait for their records."""
    gate, held = hold_done_writes(api, monkeypatch)
    monkeypatch.setattr(api.broker, "unacked_take_slots", unacked_take_slots)
    worker = pq_api.Worker(api, "one-slot", concurrent_tasks=1)
    await worker.start()
    try:
        first = api.tasks.queue("addition", a=1, b=1)
        await asyncio.wait_for(held.wait(), 5)
        later = [await api.tasks.queue("addition", a=n, b=n, callback=False) for n in (2, 3)]
        assert await ran(worker, 2, 0.5) is not unacked_take_slots
        assert not await ran(worker, 3, 0.3)
        gate.set()
        results = [await asyncio.wait_for(first, 5)] + [await api.tasks.wait_for_result(t.id, 5) for t in later]
        assert [task.result for task in results] == [2, 4, 6]
    finally:
        gate.set()
        await worker.stop(2)


async def test_a_finished_task_waiting_for_its_record_keeps_its_lease(monkeypatch: Any) -> None:
    """Its lease is renewed until the record is written and the task acked: not handed out again."""
    api = make_app(lease_timeout=1.0).api()
    await api.start()
    gate, held = hold_done_writes(api, monkeypatch)
    renew, renewed = api.broker.renew, []

    async def recording(deliveries: Any, lease: float) -> None:
        renewed.extend(d.id for d in deliveries)
        await renew(deliveries, lease)

    monkeypatch.setattr(api.broker, "renew", recording)
    worker = pq_api.Worker(api, "renewing")
    await worker.start()
    try:
        queued = await api.tasks.queue("addition", a=1, b=1, callback=False)
        await asyncio.wait_for(held.wait(), 5)
        await asyncio.sleep(1.5)
        assert renewed.count(queued.id) >= 2
        gate.set()
        assert (await api.tasks.wait_for_result(queued.id, 5)).result == 2
        assert worker.processed == 1, "run once: its lease never ran out"
    finally:
        gate.set()
        await worker.stop(2)
        await api.close()


async def test_a_stop_waits_for_outcome_writes_at_most_its_timeout(api: Any, monkeypatch: Any) -> None:
    """A done record that cannot be written in time leaves its task unacked (it runs again)."""
    gate, held = hold_done_writes(api, monkeypatch)
    acked = record_acks(api, monkeypatch)
    worker = pq_api.Worker(api, "stopping")
    await worker.start()
    try:
        await api.tasks.queue("addition", a=1, b=1, callback=False)
        await asyncio.wait_for(held.wait(), 5)
        await asyncio.wait_for(worker.stop(0.2), 5)
        assert acked == []
    finally:
        gate.set()


def record_acks(api: Any, monkeypatch: Any) -> list[str]:
    """The ids the broker acks from now on, in order."""
    ack, acked = api.broker.ack, []

    async def recording(deliveries: Any) -> None:
        acked.extend(d.id for d in deliveries)
        await ack(deliveries)

    monkeypatch.setattr(api.broker, "ack", recording)
    return acked


def hold_done_writes(api: Any, monkeypatch: Any) -> tuple[asyncio.Event, asyncio.Event]:
    """``(gate, held)``: a write with a done record waits for ``gate``; ``held`` says one does."""
    write, gate, held = api.store.task_events, asyncio.Event(), asyncio.Event()

    async def holding(items: Any, envelopes: Any = ()) -> None:
        if any(item[3] == "done" for item in items) and not gate.is_set():
            held.set()
            await gate.wait()
        await write(items, envelopes)

    monkeypatch.setattr(api.store, "task_events", holding)
    return gate, held


async def ran(worker: Any, count: int, seconds: float) -> bool:
    """Whether ``worker`` started ``count`` tasks within ``seconds``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while worker.processed < count and loop.time() < end:
        await asyncio.sleep(0.01)
    return worker.processed >= count


async def test_a_custom_id_left_claimed_is_free_again_after_the_claim_expires(
    api: Any, worker: Any, monkeypatch: Any
) -> None:
    import pq.taskapi

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise BrokerError("the store went away")

    monkeypatch.setattr(pq.taskapi, "CLAIM_TTL", 0.3)
    with monkeypatch.context() as broken:
        broken.setattr(api.store, "task_events", failing)
        broken.setattr(api.store, "delete_task", failing)
        with pytest.raises(BrokerError):
            await api.tasks.queue("addition", a=2, b=2, task_id="retried-2")
    await asyncio.sleep(0.4)
    task = await asyncio.wait_for(api.tasks.queue("addition", a=2, b=2, task_id="retried-2"), 5)
    assert (task.status_string, task.result) == ("SUCCESS", 4)


async def test_bad_input_fails_at_queue(api: Any) -> None:
    with pytest.raises(TaskNotAvailable, match="nosuchjob"):
        api.tasks.queue("nosuchjob")
    with pytest.raises(SerializationError, match="addition"):
        api.tasks.queue("addition", a=object())
    with pytest.raises(pq_api.PQError, match="cannot take these arguments"):
        api.tasks.queue("addition", c=3)
    with pytest.raises(pq_api.PQError, match="delay"):
        api.tasks.queue("addition", delay=-1)


async def test_execute_runs_now(api: Any) -> None:
    task = await api.tasks.execute("addition", a=2, b=3)
    assert task.result == 5 and task.queue is None and task.status_string == "SUCCESS"
    task = await api.tasks.queue("addition", a=2, b=5, queue=False)
    assert task.result == 7
    with pytest.raises(pq_api.PQError, match="--enable-execute-python"):
        api.tasks.execute("execute.python", code="result = 1")


async def test_job_list_and_queues(api: Any) -> None:
    jobs = dict(api.tasks.job_list())
    assert jobs["execute.python"]["concurrency"] == "process"
    assert jobs["addition"] == {**jobs["addition"], "type": "regular", "doc": "Add two numbers."}
    assert jobs["testperiodic"]["type"] == "periodic"
    assert api.tasks.queues() == [api.tasks.node_name, "default"]


async def test_get_result_and_wait(api: Any, worker: Any) -> None:
    task = await api.tasks.queue("addition", a=1, b=2, callback=False)
    done = await api.tasks.wait_for_result(task.id, timeout=5)
    assert done.result == 3
    assert await api.tasks.get_result(task.id) == 3
    assert (await api.tasks.get_task(task.id)).status_string == "SUCCESS"
    assert await api.tasks.get_result("unknown") is None
    pending = await api.tasks.queue("sleeper", lag=5, callback=False)
    with pytest.raises(TimeoutError):
        await api.tasks.wait_for_result(pending.id, timeout=0.2)
    assert await api.tasks.revoke(pending.id)


async def test_result_ttl() -> None:
    api = make_app(result_ttl=0.2).api()
    await api.start()
    from pq.api import Worker

    worker = Worker(api, "ttl")
    await worker.start()
    try:
        task = await api.tasks.queue("addition", a=1, b=1)
        assert await api.tasks.get_result(task.id) == 2
        for _ in range(50):
            if await api.tasks.get_task(task.id) is None:
                break
            await asyncio.sleep(0.05)
        assert await api.tasks.get_task(task.id) is None
    finally:
        await worker.stop(1)
        await api.close()


async def test_unserializable_result_is_a_failure(api: Any, worker: Any) -> None:
    task = await api.tasks.queue("returns.unserializable")
    assert task.status_string == "FAILURE" and "SerializationError" in task.exception


async def test_bad_messages_are_dead_lettered(api: Any, worker: Any) -> None:
    good = Task(name="addition", queue="default", kwargs={"a": "x", "c": 1})
    await api.broker.enqueue([
        Envelope("junk", "default", b"\xff\x00garbage"),
        Envelope("schema", "default", b'{"id": 3}'),
        Envelope("unknown", "default", api.encode_task(Task(id="unknown", name="nope", queue="default"))),
        Envelope(good.id, "default", api.encode_task(good)),
    ])
    task = await api.tasks.queue("addition", a=1, b=1)
    assert task.result == 2
    for _ in range(50):
        letters = {letter.id: letter.reason for letter in await api.broker.dead_letters()}
        if len(letters) == 4:
            break
        await asyncio.sleep(0.05)
    assert "cannot be decoded" in letters["junk"]
    assert "'name'" in letters["schema"] or "'id'" in letters["schema"]
    assert "not available" in letters["unknown"]
    assert "cannot take these arguments" in letters[good.id]
    assert (await api.tasks.get_task("unknown")).status_string == "FAILURE"


async def test_events_and_manager_hooks() -> None:
    seen: list[tuple[str, str]] = []

    class Manager(pq_api.Manager):
        async def store_message(self, message: Task) -> None:
            seen.append(("store", message.status_string))

        async def execute(self, job: Any, task: Task, run: Any) -> Any:
            seen.append(("wrap", task.name))
            return await run()

    app = make_app()
    app.manager_class = Manager
    api = app.api()
    await api.start()
    from pq.api import Worker

    worker = Worker(api, "hooks")
    await worker.start()
    names: list[str] = []
    callback = lambda channel, event, task: names.append(event)  # noqa: E731
    api.on_events("task", "*ed", callback)
    try:
        await api.tasks.queue("addition", a=1)
        assert ("wrap", "addition") in seen
        assert [s for _, s in seen if _ == "store"] == ["QUEUED", "STARTED", "SUCCESS"]
        assert names == ["queued", "started"]
        api.remove_event_callback("task", "*ed", callback)
        await api.tasks.queue("addition", a=1)
        assert names == ["queued", "started"]
    finally:
        await worker.stop(1)
        await api.close()


async def test_msgpack_and_custom_codec() -> None:
    for serializer in ("msgpack", "testcodecs.ReversedJson"):
        api = make_app(message_serializer=serializer).api()
        await api.start()
        from pq.api import Worker

        worker = Worker(api, "codec")
        await worker.start()
        try:
            task = await api.tasks.queue("addition", a=3, b=4)
            assert task.result == 7
        finally:
            await worker.stop(1)
            await api.close()
    with pytest.raises(ImproperlyConfigured, match="message_serializer"):
        make_app(message_serializer="nosuch.Codec").api()


def test_shell_usage_with_wait() -> None:
    """The seed's shell session: no loop in this thread, ``.wait()`` blocks."""
    app = make_app()
    api = app.api()
    from pq.api import Worker

    worker_api = None

    def serve(ready: threading.Event, stop: threading.Event) -> None:
        nonlocal worker_api

        async def main() -> None:
            nonlocal worker_api
            worker_api = app.api()
            worker = Worker(worker_api, "shell-worker")
            await worker.start()
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await worker.stop(1)

        asyncio.run(main())

    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve, args=(ready, stop))
    thread.start()
    try:
        assert ready.wait(10)
        future = api.tasks.queue("addition", a=4, b=6)
        assert repr(future).startswith("<TaskFuture pending ID=i")
        task = future.wait(10)
        assert repr(task) == f"task.addition<{task.id}><SUCCESS>"
        assert (task.result, task.status_string) == (10, "SUCCESS")
        task = api.tasks.queue("addition", a=4, b=6, callback=False, delay=0.5).wait(10)
        assert task.status_string == "QUEUED"
        task = task.done_callback.wait(10)
        assert task.status_string == "SUCCESS" and task.time_started - task.time_queued >= 0.5
    finally:
        stop.set()
        thread.join(10)
        api.close().wait(5)


def test_states_and_names() -> None:
    assert FULL_RUN_STATES == {pq_api.FAILURE, pq_api.SUCCESS}
    assert READY_STATES == {pq_api.REVOKED, pq_api.FAILURE, pq_api.SUCCESS}
    assert (pq_api.QUEUED, pq_api.STARTED, pq_api.RETRY) == (6, 5, 4)
    assert slugify("bla_foo") == "bla.foo" and slugify("CpuBound") == "cpubound"
    with pytest.raises(ImproperlyConfigured, match="cron"):
        pq_api.job(cron="every minute")(lambda self: None)
    with pytest.raises(ImproperlyConfigured, match="concurrency"):
        pq_api.job(concurrency="gevent")(lambda self: None)


async def test_ack_policies(api: Any, worker: Any) -> None:
    task = await api.tasks.queue("fails.dropped")
    assert task.status_string == "FAILURE"
    assert await api.tasks.dead_letters() == []
    assert (await api.tasks.sizes())["default"].ready == 0
    seen: list[str] = []
    api.on_events("task", "done", lambda c, e, t: t.name == "fails.requeued" and seen.append(t.status_string))
    first = await api.tasks.queue("fails.requeued", key="rq-1")
    assert first.status_string == "FAILURE"
    for _ in range(100):
        if seen[-1:] == ["SUCCESS"]:
            break
        await asyncio.sleep(0.05)
    assert seen == ["FAILURE", "FAILURE", "SUCCESS"]
    assert await api.tasks.get_result(first.id) == 3


async def test_job_helpers_shell_and_executor(api: Any, worker: Any) -> None:
    assert (await api.tasks.queue("shell.echo", text="pq")).result == "pq"
    failed = await api.tasks.queue("shell.fails")
    assert failed.status_string == "FAILURE" and "exited with 3" in failed.exception
    task = await api.tasks.queue("blocking.in.executor", n=4)
    assert task.result[0] == 8 and task.result[1].startswith("pq-thread")


async def test_revoke_running_cpubound_kills_its_process(api: Any, worker: Any, tmp_path: Any) -> None:
    path = tmp_path / "pid"
    future = api.tasks.queue("cpu.sleeper", path=str(path), timeout=60)
    for _ in range(200):
        if path.exists() and path.read_text():
            break
        await asyncio.sleep(0.05)
    pid = int(path.read_text())
    assert await api.tasks.revoke(future.task_id)
    task = await asyncio.wait_for(future, 10)
    assert task.status_string == "REVOKED"
    for _ in range(100):
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            break
        await asyncio.sleep(0.05)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
