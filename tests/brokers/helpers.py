"""Helpers of the broker contract tests: messages, bounded waits, an event recorder."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, Sequence

from pq.brokers import Delivery, Envelope

LEASE = 0.3
CONSUMER = "consumer-1"


def envelopes(
    queue: str, count: int, prefix: str = "m", eta: float | None = None
) -> list[Envelope]:
    """``count`` messages whose body is their id, so a mix-up shows."""
    return [Envelope(f"{prefix}{i}", queue, f"{prefix}{i}".encode(), eta) for i in range(count)]


def ids(deliveries: Sequence[Delivery]) -> list[str]:
    return [d.id for d in deliveries]


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 3.0, since: float | None = None
) -> float:
    """Poll ``predicate`` until true (for expiry), failing after ``timeout``; seconds since
    ``since`` (a ``time.monotonic()`` taken before the write whose expiry is awaited: the
    write's own round trip may be slow), or since the call."""
    start = time.monotonic()
    while not await predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - (start if since is None else since)


class Recorder:
    """An event handler that remembers what it got and lets a test wait for it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, bytes]] = []
        self._changed = asyncio.Event()

    def __call__(self, channel: str, event: str, payload: bytes) -> None:
        self.events.append((channel, event, payload))
        self._changed.set()

    async def wait(self, count: int, timeout: float = 2.0) -> list[tuple[str, str, bytes]]:
        """Wait until ``count`` events arrived; fail after ``timeout``."""

        async def enough() -> None:
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(enough(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"got {len(self.events)} of {count} events in {timeout}s: {self.events}"
            ) from None
        return self.events
