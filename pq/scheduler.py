"""The scheduler: queues periodic and cron jobs, one active per cluster.

Every scheduler tries to hold the ``scheduler`` lock of the data store; the
holder queues each slot that falls due.  A slot's task id comes from the job
and the slot time and is stored with ``add_task`` (set if absent), so a slot
is queued once even when two schedulers overlap in a failover.  The last
slot queued per job is kept in the store: after downtime, a job with
``catch_up = True`` runs once for the slots it missed; the others skip them.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Iterable

from .exceptions import ImproperlyConfigured
from .jobs.periodic import Schedule, check_cron, get_zone, slot_after, slot_at_or_before, slot_id
from .tasks import Task

if TYPE_CHECKING:
    from .app import PulsarQueue
    from .jobs.job import Job
    from .producer import Producer

logger = logging.getLogger("pq.scheduler")

LOCK = "scheduler"
LAST_SLOT = "pq:scheduler:last:"  # task-record ids holding each job's last slot


class Beater:
    """Schedules in code, as oxalis's Beater: ``Beater(app).register('*/5 * * * *', 'addition', a=1)``.

    ``when`` is a cron expression or a number of seconds (or a timedelta).
    Register at import time of the config module, before the server starts.
    """

    def __init__(self, app: "PulsarQueue") -> None:
        self.app = app

    def register(self, when: Any, job: "str | type[Job]", *, name: str | None = None,
                 catch_up: bool = False, **kwargs: Any) -> Schedule:
        job_name = job if isinstance(job, str) else job.name
        entry_name = name or f"{job_name}@{when}"
        if isinstance(when, str):
            check_cron(when, entry_name)
            entry = Schedule(entry_name, job_name, kwargs, cron=when, catch_up=catch_up)
        else:
            seconds = when.total_seconds() if isinstance(when, timedelta) else when
            if not isinstance(seconds, (int, float)) or seconds <= 0:
                raise ImproperlyConfigured(f"schedule {entry_name!r}: {when!r} is not a cron expression or seconds > 0")
            entry = Schedule(entry_name, job_name, kwargs, run_every=float(seconds), catch_up=catch_up)
        if any(existing.name == entry.name for existing in self.app.schedules):
            raise ImproperlyConfigured(f"a schedule named {entry.name!r} exists already; pass name=...")
        self.app.schedules.append(entry)
        return entry


def schedules(api: "Producer") -> list[Schedule]:
    """Every schedule of the application: periodic jobs, then ``Beater`` entries."""
    return [Schedule.of_job(job) for job in api.registry.periodic()] + list(api.app.schedules)


def next_scheduled(api: "Producer", jobnames: Iterable[str] | None = None, now: float | None = None) -> dict[str, datetime]:
    """When each schedule (or those of ``jobnames``) queues next, in the ``timezone`` setting."""
    zone = get_zone(api.cfg.timezone)
    now = time.time() if now is None else now
    wanted = set(jobnames) if jobnames else None
    return {
        entry.name: datetime.fromtimestamp(slot_after(entry, now, zone), zone)
        for entry in schedules(api) if wanted is None or entry.name in wanted or entry.job in wanted
    }


class Scheduler:
    """Holds the cluster's scheduler lock while it can, and queues due slots."""

    def __init__(self, api: "Producer", name: str = "scheduler") -> None:
        self.api = api
        self.name = f"{name}:{api.node_name}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = api.cfg.scheduler_lease
        self.zone = get_zone(api.cfg.timezone)
        self.active = False
        self.queued = 0
        self._next: dict[str, float] = {}
        self._entries: dict[str, Schedule] = {}
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.api._started()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.active and self.api.store is not None:
            await self.api.store.release_lock(LOCK, self.name)
            self.active = False

    def info(self) -> dict[str, Any]:
        return {"active": self.active, "queued": self.queued, "next": dict(self._next)}

    async def _run(self) -> None:
        store = self.api.store
        assert store is not None
        while True:
            try:
                holding = await store.acquire_lock(LOCK, self.name, self.lease)
                if holding and not self.active:
                    logger.info("%s is the active scheduler", self.name)
                    await self._take_over()
                elif not holding and self.active:
                    logger.warning("%s lost the scheduler lock", self.name)
                self.active = holding
                pause = self.lease / 3
                if holding:
                    await self._queue_due()
                    if self._next:
                        pause = min(pause, max(0.0, min(self._next.values()) - time.time()))
            except Exception as exc:
                logger.warning("%s: %s", self.name, exc)
                pause = 1.0
            await asyncio.sleep(pause)

    async def _take_over(self) -> None:
        """Find each schedule's next slot from the last one queued (by any scheduler)."""
        store, now = self.api.store, time.time()
        assert store is not None
        self._entries = {entry.name: entry for entry in schedules(self.api)}
        entries = list(self._entries.values())
        records = await store.get_tasks([LAST_SLOT + entry.name for entry in entries])
        self._next = {}
        for entry, record in zip(entries, records):
            upcoming = slot_after(entry, now, self.zone)
            if record is not None:
                missed = slot_at_or_before(entry, now, self.zone)
                if missed > float(record) and entry.catch_up:
                    upcoming = missed
            self._next[entry.name] = upcoming

    async def _queue_due(self) -> None:
        now = time.time()
        for name, slot in list(self._next.items()):
            if slot > now:
                continue
            entry = self._entries[name]
            await self._queue_slot(entry, slot)
            self._next[name] = slot_after(entry, max(slot, slot_at_or_before(entry, now, self.zone)), self.zone)

    async def _queue_slot(self, entry: Schedule, slot: float) -> None:
        api = self.api
        assert api.store is not None and api.broker is not None
        job = api.registry.job(entry.job)
        task = Task(id=slot_id(entry.name, slot), name=job.name, queue=job.default_queue or api.cfg.default_queue,
                    kwargs=dict(entry.kwargs), timeout=job.timeout or api.cfg.default_task_timeout,
                    meta={"slot": slot, "schedule": entry.name})
        body = api.encode_task(task)
        if await api.store.add_task(task.id, body) is None:
            await api.enqueue_tasks([(task, body)])
            self.queued += 1
        await api.store.set_task(LAST_SLOT + entry.name, repr(slot).encode())
