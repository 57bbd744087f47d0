"""Events of the Redis data store, and the logging of a lost server shared with the broker.

Each pq channel is the Redis pub/sub channel ``{ns}:events:<channel>``; a
store has one listener, subscribed to the channels its handlers want.  A
message is ``<channel>\\n<event>\\n<payload>``, or a batch frame of several events
(``batch_frame``).  The listener survives a lost server: it reconnects with backoff and redis-py
subscribes the new connection again.  Events published while the server was
away are lost, as with any Redis pub/sub.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Any, Awaitable, Callable, Sequence, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import EventHandler, Subscription

logger = logging.getLogger("pq.brokers.redis")

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
BACKOFF_START = 0.05
BACKOFF_CAP = 2.0
T = TypeVar("T")


class Outage:
    """Logs a lost server once per outage, and once when it is back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.since: float | None = None

    def failed(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            why = "refused pq's credentials" if isinstance(exc, AuthenticationError) else "is unreachable"
            logger.warning("Redis at %s %s (%s); retrying with backoff", self.url, why, exc)

    def ok(self) -> None:
        if self.since is not None:
            down = time.monotonic() - self.since
            logger.warning("Redis at %s is back after %.1fs", self.url, down)
            self.since = None

    def __deepcopy__(self, memo: dict) -> Outage:
        """redis-py copies its Retry into each connection; they all report to this one."""
        return self


class NotingRetry(Retry):
    """redis-py's retry, telling ``outage`` of failures that a reconnect did not fix.

    So an outage that redis-py rides out is logged too, while a pooled
    connection found dead after a restart (one failure, then a good
    reconnect) is not mistaken for a new one.
    """

    def __init__(self, outage: Outage, backoff: AbstractBackoff, retries: int) -> None:
        super().__init__(backoff, retries)
        self.outage = outage

    async def call_with_retry(
        self, do: Callable[[], Awaitable[T]], fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None, with_failure_count: bool = False,
    ) -> T:
        failures = 0

        async def failed(error: Exception, *count: int) -> Any:
            nonlocal failures
            failures += 1
            if failures > 1:
                self.outage.failed(error)
            return await fail(error, *count)

        return await super().call_with_retry(do, failed, is_retryable, with_failure_count)


BATCH = "*"
"""The event name that marks a frame carrying several events of one channel."""


def frame(channel: str, event: str, payload: bytes) -> bytes:
    """The bytes published for one event."""
    if "\n" in channel or "\n" in event:
        raise ValueError("event channel and name cannot contain a newline")
    if event == BATCH:
        raise ValueError(f"{BATCH!r} is not an event name: it marks a batch frame")
    return f"{channel}\n{event}\n".encode() + payload


def batch_frame(channel: str, events: Sequence[tuple[str, bytes]]) -> bytes:
    """The bytes published for several events of ``channel`` at once (one PUBLISH, not one each):
    ``<channel>\\n*\\n`` then ``<event>\\n<payload length>\\n<payload>`` per event, in order.
    A single event keeps the plain frame."""
    if len(events) == 1:
        return frame(channel, *events[0])
    if "\n" in channel:
        raise ValueError("event channel and name cannot contain a newline")
    parts = [f"{channel}\n{BATCH}\n".encode()]
    for event, payload in events:
        if "\n" in event or event == BATCH:
            raise ValueError(f"{event!r} is not an event name")
        parts += (f"{event}\n{len(payload)}\n".encode(), payload)
    return b"".join(parts)


def unframe(data: bytes) -> tuple[str, list[tuple[str, bytes]]] | None:
    """The channel and events of a published message (plain or batch frame); None if malformed."""
    parts = data.split(b"\n", 2)
    if len(parts) != 3:
        return None
    channel, event, rest = parts[0].decode(errors="replace"), parts[1].decode(errors="replace"), parts[2]
    if event != BATCH:
        return channel, [(event, rest)]
    found: list[tuple[str, bytes]] = []
    pos, end = 0, len(rest)
    try:
        while pos < end:
            name_end = rest.index(b"\n", pos)
            size_end = rest.index(b"\n", name_end + 1)
            start = size_end + 1
            stop = start + int(rest[name_end + 1:size_end])
            if stop > end or stop < start:
                return None
            found.append((rest[pos:name_end].decode(errors="replace"), rest[start:stop]))
            pos = stop
    except ValueError:
        return None
    return channel, found


class EventSubscription(Subscription):
    def __init__(self, hub: EventHub, handler: EventHandler, channels: frozenset[str] | None) -> None:
        self.hub = hub
        self.handler = handler
        self.channels = channels

    async def close(self) -> None:
        await self.hub.unsubscribe(self)


class EventHub:
    """One pub/sub connection per store, subscribed to the channels its handlers want.

    pq channel ``c`` is the Redis channel ``{prefix}c``; a handler of every
    channel takes the pattern ``{prefix}*``.  A consumer that only listens to
    ``control`` never receives the namespace's task events.
    """

    def __init__(
        self, client: Callable[[], Redis], prefix: str, outage: Outage, confirm_timeout: float
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.outage = outage
        self.confirm_timeout = confirm_timeout
        self.subscriptions: list[EventSubscription] = []
        self.pubsub: PubSub | None = None
        self.listener: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()
        self.confirmed: dict[bytes, asyncio.Event] = {}

    def redis_channel(self, channel: str) -> str:
        return self.prefix + channel

    async def subscribe(self, handler: EventHandler, channels: Sequence[str] | None = None) -> Subscription:
        """Returns once Redis confirmed the subscription, so no later event is missed."""
        async with self.lock:
            if self.pubsub is None:
                self.pubsub = self.client().pubsub()
                self.listener = asyncio.create_task(self._listen(self.pubsub), name=f"pq-events {self.prefix}")
            wanted = [self.prefix + "*"] if channels is None else [self.redis_channel(c) for c in channels]
            new = [name for name in wanted if name.encode() not in self.confirmed]
            if new:
                waits = [self.confirmed.setdefault(name.encode(), asyncio.Event()) for name in new]
                if channels is None:
                    await self.pubsub.psubscribe(*new)
                else:
                    await self.pubsub.subscribe(*new)
                try:
                    await asyncio.wait_for(asyncio.gather(*(w.wait() for w in waits)), self.confirm_timeout)
                except asyncio.TimeoutError:
                    for name in new:
                        self.confirmed.pop(name.encode(), None)
                    raise RedisTimeoutError(f"no reply to SUBSCRIBE {', '.join(new)}") from None
            subscription = EventSubscription(self, handler, None if channels is None else frozenset(channels))
            self.subscriptions.append(subscription)
            return subscription

    async def unsubscribe(self, subscription: EventSubscription) -> None:
        async with self.lock:
            if subscription in self.subscriptions:
                self.subscriptions.remove(subscription)
            if not self.subscriptions:
                await self._stop()

    async def close(self) -> None:
        async with self.lock:
            self.subscriptions.clear()
            await self._stop()

    async def _stop(self) -> None:
        listener, pubsub = self.listener, self.pubsub
        self.listener = self.pubsub = None
        self.confirmed.clear()
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        if pubsub is not None:
            await pubsub.aclose()

    async def _listen(self, pubsub: PubSub) -> None:
        backoff = BACKOFF_START
        while True:
            try:
                if not pubsub.subscribed:
                    await asyncio.sleep(0.01)
                    continue
                message = await pubsub.get_message(timeout=None)
            except (RedisError, OSError) as exc:
                if isinstance(exc, UNREACHABLE):
                    self.outage.failed(exc)
                else:
                    logger.warning("events listener on %s*: %s", self.prefix, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP)
                continue
            backoff = BACKOFF_START
            self.outage.ok()
            if message is None:
                continue
            kind = message["type"]
            if kind in ("message", "pmessage"):
                try:
                    await self._dispatch(message["data"], every_channel=kind == "pmessage")
                except Exception:
                    logger.exception("events listener on %s*: an event could not be dispatched", self.prefix)
            elif kind in ("subscribe", "psubscribe"):
                name = message["channel"] if kind == "subscribe" else message.get("pattern") or message["channel"]
                confirmed = self.confirmed.get(name if isinstance(name, bytes) else name.encode())
                if confirmed is not None:
                    confirmed.set()

    async def _dispatch(self, data: bytes, every_channel: bool) -> None:
        """To the handlers of every channel (a pattern message) or of this one (a channel message):
        Redis sends an event once for each way it is subscribed."""
        unframed = unframe(data)
        if unframed is None:
            logger.warning("ignoring a malformed event on %s*", self.prefix)
            return
        channel, found = unframed
        handlers = [
            subscription.handler for subscription in list(self.subscriptions)
            if (subscription.channels is None) == every_channel
            and (subscription.channels is None or channel in subscription.channels)
        ]
        for event, payload in found:
            for handler in handlers:
                try:
                    result = handler(channel, event, payload)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    logger.exception("event handler failed on %s %s", channel, event)
