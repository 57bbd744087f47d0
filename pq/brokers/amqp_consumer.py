"""One pq consumer's AMQP channel: what it takes, holds and waits for.

``fetch`` first *pulls*, queue by queue, so the first queue comes first and
nothing is taken beyond ``count``: one ``basic.get``, and when its
``message_count`` shows more are ready, a short burst (``basic.consume`` with
a per-consumer prefetch of what is still wanted, then cancel).  Only when
every queue is empty does it *subscribe* (prefetch equal to the free slots it
waits to fill) and block until RabbitMQ pushes something, then cancel.  So a consumer never holds more than it asked for, and between
fetches RabbitMQ pushes it nothing that another consumer could have run.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, Sequence

from aiormq.abc import DeliveredMessage

from .amqp_topology import HDR_DELIVERIES, HDR_ETA
from .base import Delivery

if TYPE_CHECKING:
    from .amqp import AmqpBroker

log = logging.getLogger("pq.brokers.amqp")

BURST = 4
# A server's broadcast queue outlives a restart of its consumers by this much, then goes.
BROADCAST_EXPIRES_MS = 60_000
"""A fetch wanting at least this many more of a queue that has them gets them pushed, not one get each."""
BURST_IDLE = 0.02
"""A burst ends when nothing more arrived for this long (another consumer took the rest)."""


def header_int(headers: dict[str, Any], name: str, default: int = 0) -> int:
    """A numeric header, tolerating whatever another publisher put there."""
    try:
        return int(headers.get(name, default))
    except (TypeError, ValueError):
        return default


class Lease:
    """``Delivery.token``: the raw delivery, its consumer, and the queue it came from."""

    __slots__ = ("message", "consumer", "queue", "source", "done")

    def __init__(self, message: DeliveredMessage, consumer: Consumer, queue: str, source: str) -> None:
        self.message = message
        self.consumer = consumer
        self.queue = queue
        self.source = source
        self.done = False

    @property
    def stale(self) -> bool:
        """True once the channel it arrived on closed: RabbitMQ has requeued it already."""
        return self.message.channel.is_closed

    def settle(self) -> bool:
        """Mark the lease finished; False (logged) when acking it now would be wrong."""
        if self.done:
            log.debug("delivery %s of %s already settled", self.message.delivery_tag, self.source)
            return False
        self.done = True
        self.consumer.leased.discard(self)
        if self.stale:
            log.info("delivery from %s arrived on a closed channel: RabbitMQ redelivers it", self.source)
            return False
        return True


class Consumer:
    """The channel, leases and subscriptions of one named consumer of an AmqpBroker."""

    def __init__(self, broker: AmqpBroker, name: str) -> None:
        self.broker = broker
        self.name = name
        self.token = uuid.uuid4().hex[:8]
        self.channel: Any = None
        self.underlay: Any = None
        self.sources: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.buffers: dict[str, deque[tuple[DeliveredMessage, int]]] = {}
        self.leased: set[Lease] = set()
        self.waiting = 0
        self.subscribed_with = 0
        self.consumer_prefetch = -1
        self.arrived = asyncio.Event()
        self.lock = asyncio.Lock()

    async def open(self) -> None:
        self.channel = await self.broker.open_channel()
        self.channel.reopen_callbacks.add(lambda *_: self.arrived.set())

    async def close(self) -> None:
        """Close the channel: RabbitMQ requeues everything it held."""
        if self.channel is not None and not self.channel.is_closed:
            await self.channel.close()
        self.leased.clear()
        self.buffers.clear()

    async def prepare(self, queues: Sequence[str]) -> Any:
        """The live channel, with the queues declared (and broadcast queues bound) on it."""
        underlay = await self.channel.get_underlay_channel()
        if underlay is not self.underlay:
            self.underlay = underlay
            self.sources.clear()
            self.tags.clear()
            self.buffers.clear()
            self.leased.clear()
            self.consumer_prefetch = -1
            underlay.on_consumer_cancel_callbacks.add(self.on_cancel)
        topology = self.broker.topology
        for queue in queues:
            if queue in self.sources:
                continue
            if topology.is_broadcast(queue):
                node = self.broker.node
                source = topology.broadcast_queue(queue, node or self.name, "" if node else self.token)
                exchange = topology.exchange(queue)
                await self.broker.declare_exchange(underlay, exchange, "fanout")
                if node:
                    await underlay.queue_declare(source, arguments={"x-expires": BROADCAST_EXPIRES_MS})
                else:
                    await underlay.queue_declare(source, exclusive=True, auto_delete=True)
                await underlay.queue_bind(source, exchange, routing_key="")
            else:
                source = await self.broker.declare_queue(queue, underlay)
            self.sources[queue] = source
        return underlay

    def room(self, queue: str, count: int) -> int:
        """How many more of ``queue`` this consumer may take, under its per-queue prefetch cap."""
        cap = self.broker.topology.options.prefetch.get(queue)
        if cap is None:
            return count
        held = sum(1 for lease in self.leased if lease.queue == queue) + len(self.buffers.get(queue, ()))
        return max(min(count, cap - held), 0)

    # taking --------------------------------------------------------------
    def lease(self, message: DeliveredMessage, queue: str, deliveries: int) -> Delivery:
        lease = Lease(message, self, queue, self.sources.get(queue, ""))
        self.leased.add(lease)
        msg_id = message.header.properties.message_id or ""
        return Delivery(msg_id, queue, message.body, deliveries, lease)

    def take(self, queues: Sequence[str], count: int) -> list[Delivery]:
        """Up to ``count`` messages RabbitMQ pushed during an earlier wait, first queue first."""
        out: list[Delivery] = []
        for queue in queues:
            buffer = self.buffers.get(queue)
            while buffer and len(out) < count:
                message, deliveries = buffer.popleft()
                if not message.channel.is_closed:
                    out.append(self.lease(message, queue, deliveries))
        return out

    async def pull(self, queues: Sequence[str], count: int) -> list[Delivery]:
        """Up to ``count`` messages, queue by queue: basic.get, or a burst when many are ready."""
        out: list[Delivery] = []
        underlay = self.underlay
        for queue in queues:
            while len(out) < count and self.room(queue, 1):
                message = await underlay.basic_get(self.sources[queue])
                if message.delivery_tag is None:
                    break
                deliveries = await self.accept(message, queue, underlay)
                if deliveries is not None:
                    out.append(self.lease(message, queue, deliveries))
                burst = min(self.room(queue, count - len(out)), message.message_count or 0)
                if burst >= BURST:
                    await self.burst(queue, burst)
                    out += self.take([queue], count - len(out))
        return out

    async def burst(self, queue: str, count: int) -> None:
        """Have RabbitMQ push ``count`` ready messages (prefetch ``count``) instead of one get each.

        ``count`` were ready a moment ago; another consumer may take some, so
        the burst also ends when nothing arrives for ``BURST_IDLE``.
        """
        underlay = self.underlay
        pushed = asyncio.Event()
        arrived = 0

        async def on_message(message: DeliveredMessage) -> None:
            nonlocal arrived
            deliveries = await self.accept(message, queue, underlay)
            if deliveries is not None:
                self.buffers.setdefault(queue, deque()).append((message, deliveries))
                arrived += 1
                pushed.set()

        if count != self.consumer_prefetch:
            await underlay.basic_qos(prefetch_count=count, global_=False)
            self.consumer_prefetch = count
        tag = f"{self.name}.{queue}.burst.{uuid.uuid4().hex[:8]}"
        await underlay.basic_consume(self.sources[queue], on_message, consumer_tag=tag)
        try:
            while arrived < count:
                pushed.clear()
                async with asyncio.timeout(BURST_IDLE):
                    await pushed.wait()
        except TimeoutError:
            pass
        finally:
            await underlay.basic_cancel(tag)

    async def accept(self, message: DeliveredMessage, queue: str, underlay: Any) -> int | None:
        """Count a delivery, or send it round again: its delivery count, None if it is not to be run now.

        A redelivered message of a classic queue is republished with its
        count incremented (RabbitMQ only flags redeliveries); a delayed one
        that came out early is sent round again, or held when almost due.
        """
        headers = message.header.properties.headers or {}
        deliveries = header_int(headers, HDR_DELIVERIES, 1)
        broker = self.broker
        source = self.sources.get(queue, "")
        if broker.topology.options.queue_type == "quorum":
            deliveries += header_int(headers, "x-delivery-count")
        elif message.redelivered and not broker.topology.is_broadcast(queue):
            if await broker.republish(message, queue, ("", source), {HDR_DELIVERIES: deliveries + 1}):
                return None
            deliveries += 1
        eta = header_int(headers, HDR_ETA) / 1000
        remaining = eta - time.time() if eta else 0.0
        if remaining > broker.topology.options.delay_hold:
            if await broker.republish(message, queue, ("", source), {}, eta=eta):
                return None
        elif remaining > 0:
            await asyncio.sleep(remaining)
        if message.channel.is_closed or underlay is not self.underlay:
            return None
        return deliveries

    # waiting -------------------------------------------------------------
    async def wait(self, queues: Sequence[str], count: int, deadline: float) -> None:
        """Subscribe to ``queues`` and block until RabbitMQ pushes something or ``deadline``."""
        loop = asyncio.get_running_loop()
        self.waiting += count
        try:
            async with self.lock:
                await self.subscribe(queues)
            if not any(self.buffers.get(queue) for queue in queues):
                self.arrived.clear()
                async with asyncio.timeout(max(deadline - loop.time(), 0)):
                    await self.arrived.wait()
        except TimeoutError:
            pass
        finally:
            self.waiting -= count
            self.arrived.set()
            if self.waiting == 0:
                async with self.lock:
                    await self.unsubscribe()

    async def subscribe(self, queues: Sequence[str]) -> None:
        """basic.consume each queue with prefetch = the slots still waited for.

        Pushed messages taken keep counting against a consumer's prefetch
        until acked, so when the number waited for changes, the
        subscriptions are made again.
        """
        if self.tags and self.subscribed_with != self.waiting:
            await self.unsubscribe()
        underlay = self.underlay
        for queue in queues:
            room = self.room(queue, self.waiting)
            if queue in self.tags or room <= 0:
                continue
            if room != self.consumer_prefetch:
                await underlay.basic_qos(prefetch_count=room, global_=False)
                self.consumer_prefetch = room
            tag = self.tags[queue] = f"{self.name}.{queue}.{uuid.uuid4().hex[:8]}"

            async def on_message(message: DeliveredMessage, queue: str = queue) -> None:
                deliveries = await self.accept(message, queue, underlay)
                if deliveries is not None:
                    self.buffers.setdefault(queue, deque()).append((message, deliveries))
                    self.arrived.set()

            await underlay.basic_consume(self.sources[queue], on_message, consumer_tag=tag)
        self.subscribed_with = self.waiting

    async def unsubscribe(self) -> None:
        """Cancel every subscription; what RabbitMQ pushed before stays buffered for the next fetch."""
        tags, self.tags = list(self.tags.values()), {}
        if self.underlay is None or self.underlay.is_closed:
            return
        for tag in tags:
            try:
                await self.underlay.basic_cancel(tag)
            except Exception as exc:
                log.debug("cancel of %s failed: %s", tag, exc)

    def on_cancel(self, frame: Any) -> None:
        """RabbitMQ cancelled a consumer (its queue was deleted): declare and subscribe again."""
        for queue, tag in list(self.tags.items()):
            if tag == frame.consumer_tag:
                del self.tags[queue]
                self.broker.declared.pop(self.sources.pop(queue, ""), None)
        self.arrived.set()

    def counts(self, queue: str) -> tuple[int, int]:
        """``(buffered, leased)`` messages of ``queue`` this consumer holds on its live channel."""
        leased = sum(1 for lease in self.leased if lease.queue == queue and not lease.stale)
        return len(self.buffers.get(queue, ())), leased
