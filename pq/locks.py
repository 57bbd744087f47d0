"""A lock shared by every process using one data store (``self.lock()`` in a job)."""
from __future__ import annotations

import asyncio
import random
import time
import uuid
from types import TracebackType

from .brokers.base import DataStore
from .exceptions import PQError


class LockError(PQError):
    """The lock could not be taken within the time allowed."""


class Lock:
    """``async with Lock(store, name):`` holds ``name`` for at most ``timeout`` seconds.

    ``blocking`` is True (wait as long as it takes), False (fail at once) or
    a number of seconds to wait.  The holder renews the lock while the body
    runs, so ``timeout`` bounds only how long a dead holder keeps it.
    """

    def __init__(
        self, store: DataStore, name: str, timeout: float = 60.0, blocking: float | bool = True,
        holder: str | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.timeout = timeout
        self.blocking = blocking
        self.holder = f"{holder or 'lock'}:{uuid.uuid4().hex[:8]}"
        self._renewer: asyncio.Task | None = None

    async def acquire(self) -> bool:
        deadline = None
        if self.blocking is not True:
            deadline = time.monotonic() + (0.0 if self.blocking is False else float(self.blocking))
        pause = 0.01
        while not await self.store.acquire_lock(self.name, self.holder, self.timeout):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 0.5)
        self._renewer = asyncio.create_task(self._renew())
        return True

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.timeout / 3)
            await self.store.acquire_lock(self.name, self.holder, self.timeout)

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        await self.store.release_lock(self.name, self.holder)

    async def __aenter__(self) -> "Lock":
        if not await self.acquire():
            raise LockError(f"lock {self.name!r} is held by {await self.store.lock_holder(self.name)!r}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()
