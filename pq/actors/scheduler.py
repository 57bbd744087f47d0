"""The scheduler actor: queues periodic and cron jobs when ``schedule_periodic`` is on.

Any number of servers may schedule; the ``Scheduler`` engine makes exactly
one of them active across the cluster (a lock in the data store).
"""
from __future__ import annotations

from typing import Any

from ..scheduler import Scheduler
from .actor import Actor


class SchedulerActor(Actor):
    """Queues periodic and cron jobs; named ``scheduler``."""

    kind = "scheduler"
    scheduler: Scheduler | None = None

    async def on_start(self) -> None:
        if not self.cfg.schedule_periodic:
            return
        self.api = self.app.api()
        await self.api.start_retrying(self.name)
        self.scheduler = Scheduler(self.api, self.name)
        await self.scheduler.start()

    async def on_stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()
            await self.api.close()

    def extra_info(self) -> dict[str, Any]:
        if self.scheduler is None:
            return {"schedule_periodic": False}
        return {"schedule_periodic": True, **self.scheduler.info()}
