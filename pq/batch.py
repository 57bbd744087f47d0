"""Coalescing writes: what many coroutines ask for in one loop iteration goes in one call.

The ``started`` and ``done`` events of the tasks a worker runs at once, or
the task events of concurrent jobs, become one store round trip instead of one
each (queueing has its own batch in ``Producer._enqueue_soon``).  Every caller still waits
until its own items are written, and sees the write's error if it fails.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Collects items until the loop yields, then writes them with one ``write(items)`` call."""

    def __init__(self, write: Callable[[list[T]], Awaitable[object]], max_size: int = 1000) -> None:
        self.write = write
        self.max_size = max_size
        self._items: list[T] = []
        self._done: asyncio.Future | None = None
        self._writing: set[asyncio.Future] = set()  # the loop keeps only weak references to tasks

    async def add(self, items: Sequence[T]) -> None:
        """Write ``items`` with whatever else is added in this loop iteration."""
        if not items:
            return
        if self._done is None:
            loop = asyncio.get_running_loop()
            self._done = loop.create_future()
            loop.call_soon(self._flush)
        done = self._done
        self._items.extend(items)
        if len(self._items) >= self.max_size:
            self._flush()
        await asyncio.shield(done)

    def _flush(self) -> None:
        if self._done is None:
            return
        items, done = self._items, self._done
        self._items, self._done = [], None
        write = asyncio.ensure_future(self._write(items, done))
        self._writing.add(write)
        write.add_done_callback(self._writing.discard)

    async def _write(self, items: list[T], done: asyncio.Future) -> None:
        try:
            await self.write(items)
        except Exception as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)
