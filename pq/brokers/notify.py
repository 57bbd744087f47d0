"""In-process wake-ups and event fan-out, shared by the memory and sqlite stores.

Both stores are touched from more than one thread (sqlite's connection thread,
or callers of ``memory://`` on other loops), so every hand-over to a loop goes
through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from typing import Callable

from .base import EventHandler, Subscription

logger = logging.getLogger("pq.brokers")

Event = tuple[str, str, bytes]


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class Waiters:
    """Fetches blocked until a message may be ready; ``wake_all`` may run on any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: set[asyncio.Future] = set()

    def __bool__(self) -> bool:
        return bool(self._futures)

    def arm(self) -> asyncio.Future:
        """A future resolved by the next ``wake_all``; arm it before looking, so no wake is lost."""
        fut = asyncio.get_running_loop().create_future()
        with self._lock:
            self._futures.add(fut)
        return fut

    async def wait(self, fut: asyncio.Future, timeout: float) -> None:
        """Wait for ``fut`` up to ``timeout`` seconds, then forget it."""
        try:
            await asyncio.wait_for(asyncio.shield(fut), max(timeout, 0.0))
        except asyncio.TimeoutError:
            pass
        finally:
            self.disarm(fut)

    def disarm(self, fut: asyncio.Future) -> None:
        with self._lock:
            self._futures.discard(fut)

    def wake_all(self) -> None:
        with self._lock:
            futures, self._futures = self._futures, set()
        for fut in futures:
            try:
                fut.get_loop().call_soon_threadsafe(_resolve, fut)
            except RuntimeError:
                pass  # its loop is closed: nobody is waiting any more


class LocalSubscription(Subscription):
    """Calls a handler for each event fed to it, in order, on the loop that subscribed.

    A failing handler is logged and does not end the subscription.
    """

    def __init__(
        self, handler: EventHandler, on_close: Callable[[LocalSubscription], None]
    ) -> None:
        self.handler = handler
        self.start_id = 0
        self._on_close = on_close
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[list[Event]] = asyncio.Queue()
        self._task = self._loop.create_task(self._run())
        self.closed = False

    def feed(self, events: list[Event]) -> None:
        """Queue events for the handler; safe from any thread."""
        if self.closed or not events:
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, events)
        except RuntimeError:
            self.closed = True
            self._on_close(self)

    async def _run(self) -> None:
        while True:
            for channel, event, payload in await self._queue.get():
                try:
                    result = self.handler(channel, event, payload)
                    if inspect.isawaitable(result):
                        await result
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception(
                        "event handler %r failed on %s/%s", self.handler, channel, event
                    )

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._on_close(self)
        self._task.cancel()
        if asyncio.get_running_loop() is self._loop and asyncio.current_task() is not self._task:
            try:
                await self._task
            except asyncio.CancelledError:
                pass
