"""The scheduler engine: slots, one active scheduler per store, failover, next_scheduled."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import pytest
from coreapp import make_app

from pq import api as pq_api
from pq.exceptions import ImproperlyConfigured
from pq.jobs.periodic import Schedule, get_zone, slot_after, slot_at_or_before, slot_id
from pq.scheduler import Scheduler, next_scheduled


def test_slots_every_and_anchor() -> None:
    utc = get_zone("UTC")
    every = Schedule.of_job(pq_api.job(run_every=timedelta(seconds=10))(lambda self: None))
    assert slot_at_or_before(every, 105.0, utc) == 100.0
    assert slot_after(every, 100.0, utc) == 110.0
    hourly = Schedule.of_job(
        pq_api.job(run_every=timedelta(hours=1), anchor=datetime(2000, 1, 1, 0, 30))(lambda self: None)
    )
    when = datetime(2026, 1, 1, 10, 0, tzinfo=timezone.utc).timestamp()
    assert datetime.fromtimestamp(slot_after(hourly, when, utc), timezone.utc).minute == 30
    assert slot_id("a.b", 1.5) == "periodic:a.b:1500"


def test_cron_slots_in_timezone() -> None:
    job = Schedule("nine", "nine", cron="0 9 * * *")
    rome = get_zone("Europe/Rome")
    when = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc).timestamp()
    nxt = datetime.fromtimestamp(slot_after(job, when, rome), rome)
    assert (nxt.day, nxt.hour, nxt.minute) == (2, 9, 0)
    prev = datetime.fromtimestamp(slot_at_or_before(job, when, rome), rome)
    assert (prev.day, prev.hour) == (1, 9)
    with pytest.raises(ImproperlyConfigured, match="timezone"):
        get_zone("Mars/Olympus")


def test_next_scheduled() -> None:
    api = make_app().api()
    nxt = next_scheduled(api, ["testperiodic", "anchoredeveryhour"])
    assert set(nxt) == {"testperiodic", "anchoredeveryhour"}
    assert 0 < nxt["testperiodic"].timestamp() - time.time() <= 1.001
    assert nxt["anchoredeveryhour"].minute == 0 and nxt["anchoredeveryhour"].second == 0
    assert "testperiodic" in api.tasks.next_scheduled()


async def test_one_active_scheduler_and_failover() -> None:
    app = make_app(scheduler_lease=1.0)
    api_a, api_b = app.api(), app.api()
    await api_a.start()
    await api_b.start()
    queued: list[str] = []
    api_a.on_events("task", "queued", lambda c, e, task: task.name == "testperiodic" and queued.append(task.id))
    first, second = Scheduler(api_a, "a"), Scheduler(api_b, "b")
    await first.start()
    await asyncio.sleep(0.1)
    await second.start()
    try:
        await asyncio.sleep(2.6)
        assert first.active and not second.active
        assert 2 <= len(queued) <= 4 and len(set(queued)) == len(queued)
        first._task.cancel()  # the server died: its lock is not released, it expires
        deadline = time.monotonic() + 5
        while not second.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert second.active
        count = len(queued)
        await asyncio.sleep(1.5)
        assert len(queued) > count and len(set(queued)) == len(queued)
    finally:
        await first.stop()
        await second.stop()
        await api_a.close()
        await api_b.close()


async def test_cron_job_runs_in_the_next_minute() -> None:
    from pq.api import Worker

    api = make_app().api()
    await api.start()
    nxt = (datetime.now(timezone.utc) + timedelta(minutes=1)).replace(second=0, microsecond=0)
    job = pq_api.job(name="cron.next", cron=f"{nxt.minute} {nxt.hour} * * *")(lambda self: "cron")
    api.registry.add(job)
    done: asyncio.Future = asyncio.get_running_loop().create_future()
    api.on_events("task", "done", lambda c, e, task: task.name == "cron.next" and not done.done() and done.set_result(task))
    scheduler, worker = Scheduler(api), Worker(api, "cron-worker")
    await scheduler.start()
    await worker.start()
    try:
        task = await asyncio.wait_for(done, 75)
        assert task.result == "cron" and task.meta["slot"] == nxt.timestamp()
        assert nxt.timestamp() <= task.time_started < nxt.timestamp() + 60
    finally:
        await worker.stop(1)
        await scheduler.stop()
        await api.close()


def test_bad_cron_is_refused_with_a_reason() -> None:
    with pytest.raises(ImproperlyConfigured, match="not a valid cron expression.*minute hour"):
        pq_api.job(cron="61 * * * *")(lambda self: None)


async def test_beater_registers_schedules_with_arguments() -> None:
    from pq.api import Beater, Worker

    app = make_app()
    beater = Beater(app)
    beater.register(timedelta(seconds=0.5), "addition", a=2, b=3)
    entry = beater.register("*/5 * * * *", "addition", name="five", a=1)
    assert entry.cron == "*/5 * * * *" and "five" in app.api().tasks.next_scheduled()
    with pytest.raises(ImproperlyConfigured, match="cron"):
        beater.register("*/5 * *", "addition")
    with pytest.raises(ImproperlyConfigured, match="exists already"):
        beater.register("*/5 * * * *", "addition", name="five")
    api = app.api()
    await api.start()
    done: asyncio.Future = asyncio.get_running_loop().create_future()
    api.on_events("task", "done", lambda c, e, task: not done.done() and done.set_result(task))
    scheduler, worker = Scheduler(api), Worker(api, "beat-worker")
    await scheduler.start()
    await worker.start()
    try:
        task = await asyncio.wait_for(done, 10)
        assert (task.name, task.result, task.meta["schedule"]) == ("addition", 5, "addition@0:00:00.500000")
    finally:
        await worker.stop(1)
        await scheduler.stop()
        await api.close()
