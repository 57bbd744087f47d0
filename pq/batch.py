"""Coalescing writes: what many callers ask for in one loop iteration goes in one call.

A burst of ``queue()`` calls, the ``started`` and ``done`` events of the tasks
a worker runs at once, or the task events of concurrent jobs become one store
round trip instead of one each.  Every caller still waits until its own items
are written, and sees the write's error if it fails.  Items that may wait
(``delay``) hold their batch open until then, or until items that may not
wait join it: a ``started`` event of a short task then goes in one write with
its ``done``.  A batch is written only once the batch before it (on the same
loop) is, so what was submitted later never lands first, even when a lost
connection makes a write retry.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")


class _Batch(Generic[T]):
    """Items collected on one loop, and the future their callers wait for."""

    __slots__ = ("items", "done", "started", "timer", "previous")

    def __init__(self, loop: asyncio.AbstractEventLoop, previous: "asyncio.Future[None] | None") -> None:
        self.items: list[T] = []
        self.done: asyncio.Future[None] = loop.create_future()
        self.started = False  # flushed: when full, then again by the loop turn it waited for
        self.timer: asyncio.TimerHandle | None = None  # the flush of a batch that may wait
        self.previous = previous  # the write of the batch before, on this loop


class Batcher(Generic[T]):
    """Collects items until the loop yields, then writes them with one ``write(items)`` call."""

    def __init__(self, write: Callable[[list[T]], Awaitable[object]], max_size: int = 1000) -> None:
        self.write = write
        self.max_size = max_size
        self._open: _Batch[T] | None = None
        self._last: asyncio.Future[None] | None = None  # the write of the latest batch flushed
        self._writing: set[asyncio.Future] = set()  # the loop keeps only weak references to tasks

    async def add(self, items: Sequence[T]) -> None:
        """Write ``items`` with whatever else is added in this loop iteration."""
        if items:
            await asyncio.shield(self.submit(items))

    def submit(self, items: Sequence[T], delay: float = 0.0) -> "asyncio.Future[None]":
        """``add`` without a coroutine, on the running loop: the future of the write that takes
        ``items``.  A batch belongs to its loop; another loop's, which may never run again, is
        left to it.  Items that may wait ``delay`` seconds keep the batch open that long, unless
        items that may not wait come first."""
        loop = asyncio.get_running_loop()
        batch = self._open
        if batch is None or batch.done.get_loop() is not loop:
            last = self._last
            batch = self._open = _Batch(loop, last if last is not None and last.get_loop() is loop else None)
            if delay > 0:
                batch.timer = loop.call_later(delay, self._flush, batch)
            else:
                loop.call_soon(self._flush, batch)
        elif delay <= 0 and batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
            loop.call_soon(self._flush, batch)
        batch.items.extend(items)
        if len(batch.items) >= self.max_size:
            self._flush(batch)
        return batch.done

    def _flush(self, batch: _Batch[T]) -> None:
        if self._open is batch:
            self._open = None
        if batch.started:
            return
        batch.started = True
        if batch.timer is not None:
            batch.timer.cancel()
        write = asyncio.ensure_future(self._write(batch))
        self._last = write
        self._writing.add(write)
        write.add_done_callback(self._writing.discard)

    async def _write(self, batch: _Batch[T]) -> None:
        try:
            previous, batch.previous = batch.previous, None
            if previous is not None and not previous.done():
                await asyncio.wait({previous})
            await self.write(batch.items)
        except Exception as exc:
            batch.done.set_exception(exc)
        else:
            batch.done.set_result(None)
        finally:
            batch.done.cancel()  # only if still pending: this write was cancelled
