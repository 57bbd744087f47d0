"""The consumer actor: the process that takes tasks from the broker and runs them.

It runs a ``Worker`` on its own producer api.  On a graceful stop the
worker stops fetching, lets in-flight tasks finish within most of the stop
timeout, and returns the rest to their queues.  Past ``max_requests`` tasks
it asks the arbiter to replace it (the new consumer starts first).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..worker import Worker
from .actor import Actor

logger = logging.getLogger("pq.actors")


class ConsumerActor(Actor):
    """Consumes tasks; the arbiter runs ``workers`` of them, named ``consumer-N``."""

    kind = "consumer"
    worker: Worker | None = None

    async def on_start(self) -> None:
        self.api = self.app.api()
        await self.api.start_retrying(self.name)
        self.worker = Worker(self.api, f"{self.name}:{self.pid}")
        await self.worker.start()
        self._tasks.add(asyncio.ensure_future(self._recycle_when_exhausted()))

    async def _recycle_when_exhausted(self) -> None:
        assert self.worker is not None
        await self.worker.exhausted.wait()
        logger.info("%s (pid %d) ran max_requests=%d tasks; asking to be replaced",
                    self.name, self.pid, self.cfg.max_requests)
        await self.send("arbiter", "replace", self.name)

    async def on_stop(self) -> None:
        timeout = self.stop_timeout if self.stop_timeout is not None else self.cfg.graceful_timeout
        if self.worker is not None:
            await self.worker.stop(max(timeout - 0.5, timeout / 2))
        await self.api.close()

    def extra_info(self) -> dict[str, Any]:
        return self.worker.info() if self.worker is not None else {}
