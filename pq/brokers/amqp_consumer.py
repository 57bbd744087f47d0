"""One pq consumer's AMQP channel: what it takes, holds and waits for.

``fetch`` goes queue by queue, so the first queue comes first and nothing is
taken beyond ``count``.  A consumer holding nothing that finds a backlog
(``queue.declare`` passive shows ``BURST`` or more ready) opens a *stream*:
a ``basic.consume`` kept open across fetches, with a per-consumer prefetch
of ``count``, its free slots, which are then all its slots.  Every delivery
it holds comes from the stream and stays unacked until the task ran, so
RabbitMQ pushes exactly as many as slots free up, and a fetch takes what was
pushed without a round trip (waiting for the rest of its count while pushes
keep coming less than ``STREAM_GATHER`` apart).  The earlier queues, found
empty, are watched meanwhile by consumers with a prefetch of 1, not asked on
every fetch; a message arriving there ends the stream, so queue order holds.
The stream also ends when nothing arrives for ``STREAM_IDLE`` while a fetch
waits (the queue ran dry, or the caller wants more than its prefetch), and
when a fetch asks for fewer than the prefetch less what the consumer holds
(``max_requests`` nearly reached: it stops before the end).
Otherwise a fetch pulls: ``basic.get``, and when its ``message_count`` shows
more are ready, a short burst (``basic.consume`` with a prefetch of what is
still wanted, then cancel).  Only when every queue is empty does it
*subscribe* (prefetch equal to the free slots it waits to fill) and block
until RabbitMQ pushes something, then cancel.  So RabbitMQ never hands a
consumer more than its free slots, with one exception: a message of an
earlier queue pushed by its watch is outside the stream's prefetch, so until
it is acked the consumer may hold one more (per watched queue) than it has
slots.

Each consumer has a connection of its own, pq's (``amqp_wire``), not
aio-pika's: a pushed message reaches the buffer in the loop turn that read
it.  When the connection or the channel goes, the next fetch opens new ones
(no sooner than ``reconnect_interval`` after a failed connect); RabbitMQ has
requeued whatever the old channel held.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Sequence

from aiormq import exceptions as errors

from . import amqp_wire
from .amqp_acks import Acks
from .amqp_publish import dropped
from .amqp_topology import HDR_DELIVERIES, HDR_ETA
from .base import Delivery

if TYPE_CHECKING:
    from .amqp import AmqpBroker

log = logging.getLogger("pq.brokers.amqp")

BURST = 4
"""A fetch wanting at least this many more of a queue that has them gets them pushed, not one get each."""
BURST_IDLE = 0.02
"""A burst ends when nothing more arrived for this long (another consumer took the rest)."""
STREAM_IDLE = 0.1
"""A stream ends when a fetch waited this long for a push: longer than a burst's, as a loaded
machine can stall pushes that long, and the stream keeps consuming while the fetch waits."""
STREAM_GATHER = 0.002
"""Once the stream pushed something, a fetch waits for the rest of its count while pushes keep
coming this close together: RabbitMQ refills a freed prefetch in several pushes, and taking them
in one fetch halves the fetches (and the revocation reads) per task."""
BROADCAST_EXPIRES_MS = 60_000
"""A server's broadcast queue outlives a restart of its consumers by this much, then goes."""


def header_int(headers: dict[str, Any], name: str, default: int = 0) -> int:
    """A numeric header, tolerating whatever another publisher put there."""
    try:
        return int(headers.get(name, default))
    except (TypeError, ValueError):
        return default


class Lease:
    """``Delivery.token``: the raw delivery, its consumer, the queue it came from, its channel's acks."""

    __slots__ = ("message", "consumer", "queue", "source", "acks", "done")

    def __init__(self, message: amqp_wire.Message, consumer: Consumer, queue: str, source: str, acks: Acks) -> None:
        self.message = message
        self.consumer = consumer
        self.queue = queue
        self.source = source
        self.acks = acks
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
        self.connection: amqp_wire.Connection | None = None
        self.underlay: amqp_wire.Channel | None = None
        self.retry_at = 0.0
        self.sources: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.buffers: dict[str, deque[tuple[amqp_wire.Message, int]]] = {}
        self.leased: set[Lease] = set()
        self.acks = Acks(None)
        self.stream: tuple[str, str, int] | None = None
        """``(queue, consumer tag, prefetch)`` of the open stream."""
        self.watches: dict[str, str] = {}
        """The consumer tags watching the queues before the stream's, by queue."""
        self.waiting = 0
        self.subscribed_with = 0
        self.consumer_prefetch = -1
        self.arrived = asyncio.Event()
        self.lock = asyncio.Lock()
        self.connecting = asyncio.Lock()
        self.later: set[asyncio.Task] = set()

    @property
    def is_live(self) -> bool:
        """Whether its channel is open: nothing to wait for before using it."""
        return self.underlay is not None and not self.underlay.is_closed

    async def live(self) -> amqp_wire.Channel:
        """The consumer's channel, opened again (on a new connection if need be) when it is gone."""
        async with self.connecting:
            if self.is_live:
                return self.underlay  # type: ignore[return-value]
            if self.connection is None or self.connection.is_closed:
                await self.broker.connect()
                await asyncio.sleep(self.retry_at - time.monotonic())
                name = f"{self.broker.connection_name}/{self.name}"
                try:
                    self.connection = await amqp_wire.connect(self.broker.amqp_url, name)
                except (OSError, errors.AMQPError) as exc:
                    self.retry_at = time.monotonic() + self.broker.topology.options.reconnect_interval
                    raise errors.AMQPConnectionError(f"consumer {self.name} cannot connect to RabbitMQ: {exc}") from exc
            channel = await self.connection.channel()
            channel.close_callbacks.add(lambda _: self.arrived.set())
            channel.on_consumer_cancel_callbacks.add(self.on_cancel)
            self.underlay = channel
            self.sources.clear()
            self.tags.clear()
            self.buffers.clear()
            self.leased.clear()
            self.acks = Acks(channel)
            self.stream = None
            self.watches.clear()
            self.consumer_prefetch = -1
            return channel

    async def close(self) -> None:
        """Close the connection: RabbitMQ requeues everything it held."""
        connection, self.connection = self.connection, None
        if connection is not None:
            await connection.close()
        for task in list(self.later):
            task.cancel()
        self.leased.clear()
        self.buffers.clear()

    async def prepare(self, queues: Sequence[str]) -> amqp_wire.Channel:
        """The live channel, with the queues declared (and broadcast queues bound) on it."""
        underlay = await self.live()
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
    def lease(self, message: amqp_wire.Message, queue: str, deliveries: int) -> Delivery:
        lease = Lease(message, self, queue, self.sources.get(queue, ""), self.acks)
        self.leased.add(lease)
        msg_id = message.properties.message_id or ""
        return Delivery(msg_id, queue, message.body, deliveries, lease)

    def take(self, queue: str, count: int) -> list[Delivery]:
        """Up to ``count`` messages of ``queue`` RabbitMQ pushed earlier."""
        out: list[Delivery] = []
        buffer = self.buffers.get(queue)
        while buffer and len(out) < count:
            message, deliveries = buffer.popleft()
            if not message.channel.is_closed:
                out.append(self.lease(message, queue, deliveries))
        return out

    async def collect(self, queues: Sequence[str], count: int) -> list[Delivery]:
        """Up to ``count`` messages, queue by queue: pushed ones, then the stream or basic.get."""
        stream = self.stream
        if stream is not None and (stream[0] not in queues or count + len(self.leased) < stream[2]):
            await self.end_stream()
        out: list[Delivery] = []
        for index, queue in enumerate(queues):
            if len(out) >= count:
                break
            out += self.take(queue, count - len(out))
            if self.stream is not None:
                if self.stream[0] == queue:
                    if out or await self.arrival(queue, patience=STREAM_IDLE):
                        await self.gather(queue, count - len(out), STREAM_GATHER)
                        out += self.take(queue, count - len(out))
                        break
                    await self.end_stream()
                elif queue in self.watches:
                    if not out:
                        continue
                    await self.end_stream()  # an earlier queue has work: back to queue order
            out += await self.pull(queue, count - len(out), queues[:index])
        return out

    async def pull(self, queue: str, count: int, earlier: Sequence[str] = ()) -> list[Delivery]:
        """Up to ``count`` messages of ``queue``: a stream on a backlog, basic.get, or a burst."""
        out: list[Delivery] = []
        underlay = self.underlay
        source = self.sources[queue]
        if self.stream is None and not self.leased and not any(self.buffers.values()) and self.room(queue, 1) \
                and queue not in self.broker.topology.options.prefetch:
            ready = (await underlay.queue_declare(source, passive=True)).message_count or 0
            if ready >= BURST:
                await self.open_stream(queue, count, earlier)
                await self.gather(queue, min(count, ready))
                return self.take(queue, count)
            if not ready:
                return out
        while len(out) < count and self.room(queue, 1):
            message = await underlay.basic_get(source)
            if message.delivery_tag is None:
                break
            deliveries = await self.accept(message, queue, underlay)
            if deliveries is not None:
                out.append(self.lease(message, queue, deliveries))
            burst = min(self.room(queue, count - len(out)), message.message_count or 0)
            if burst >= BURST:
                await self.burst(queue, burst)
                out += self.take(queue, count - len(out))
        return out

    async def gather(self, queue: str, count: int, patience: float = BURST_IDLE) -> None:
        """Wait until ``count`` of ``queue`` are buffered, or nothing more arrived for ``patience``."""
        while (seen := len(self.buffers.get(queue, ()))) < count:
            if not await self.arrival(queue, seen, patience):
                return

    async def arrival(self, queue: str, seen: int = 0, patience: float = BURST_IDLE) -> bool:
        """Wait up to ``patience`` for ``queue``'s buffer to grow past ``seen``."""
        try:
            async with asyncio.timeout(patience):
                while len(self.buffers.get(queue, ())) <= seen:
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            return False
        return True

    async def open_stream(self, queue: str, prefetch: int, earlier: Sequence[str] = ()) -> None:
        """basic.consume ``queue`` with prefetch ``prefetch``, kept open across fetches.

        The ``earlier`` queues (found empty) are watched meanwhile, each by a
        consumer with a prefetch of 1, instead of asked with a basic.get round
        trip on every fetch; a message arriving there ends the stream.
        """
        underlay = self.underlay
        for watched in earlier:
            if watched in self.sources and self.room(watched, 1):
                await self.qos(1)
                tag = self.watches[watched] = f"{self.name}.{watched}.watch.{uuid.uuid4().hex[:8]}"
                await underlay.basic_consume(self.sources[watched], self.pusher(watched, underlay), consumer_tag=tag)
        await self.qos(prefetch)
        tag = f"{self.name}.{queue}.stream.{uuid.uuid4().hex[:8]}"
        await underlay.basic_consume(self.sources[queue], self.pusher(queue, underlay), consumer_tag=tag)
        self.stream = (queue, tag, prefetch)

    async def qos(self, prefetch: int) -> None:
        """The prefetch of the consumers started from now on (RabbitMQ's per-consumer ``basic.qos``)."""
        if prefetch != self.consumer_prefetch:
            await self.underlay.basic_qos(prefetch_count=prefetch, global_=False)
            self.consumer_prefetch = prefetch

    async def end_stream(self) -> None:
        """Cancel the stream and its watches; what they pushed before stays buffered for the next fetch."""
        stream, self.stream = self.stream, None
        tags = [tag for tag in (stream[1] if stream else None, *self.watches.values()) if tag]
        self.watches.clear()
        if self.underlay is None or self.underlay.is_closed:
            return
        for tag in tags:
            try:
                await self.underlay.basic_cancel(tag)
            except Exception as exc:
                if not dropped(exc):
                    raise
                log.debug("cancel of %s failed: %s", tag, exc)

    def pusher(self, queue: str, underlay: amqp_wire.Channel) -> Callable[[amqp_wire.Message], None]:
        """The basic.consume callback: buffer each pushed message; one to send round or hold goes through a task."""
        def on_message(message: amqp_wire.Message) -> None:
            deliveries = self.count(message, queue)
            if deliveries is not None:
                self.buffer(queue, message, deliveries)
                return
            task = asyncio.ensure_future(self.push_later(message, queue, underlay))
            self.later.add(task)
            task.add_done_callback(self.later.discard)

        return on_message

    def buffer(self, queue: str, message: amqp_wire.Message, deliveries: int) -> None:
        self.buffers.setdefault(queue, deque()).append((message, deliveries))
        self.arrived.set()

    async def push_later(self, message: amqp_wire.Message, queue: str, underlay: amqp_wire.Channel) -> None:
        """Send round, or hold until due, a pushed message ``count`` could not hand out at once."""
        try:
            deliveries = await self.accept(message, queue, underlay)
        except Exception:
            log.exception("a pushed message of %s could not be taken; RabbitMQ redelivers it", queue)
            if not message.channel.is_closed and message.delivery_tag is not None:
                await self.acks.reject(message.delivery_tag, True)
            return
        if deliveries is not None:
            self.buffer(queue, message, deliveries)

    def drop_buffered(self, queue: str) -> list[amqp_wire.Message]:
        """Forget what was pushed of ``queue`` (for purge): the live messages, to be acked."""
        return [message for message, _ in self.buffers.pop(queue, ()) if not message.channel.is_closed]

    async def burst(self, queue: str, count: int) -> None:
        """Have RabbitMQ push ``count`` ready messages (prefetch ``count``) instead of one get each.

        ``count`` were ready a moment ago; another consumer may take some, so
        the burst also ends when nothing arrives for ``BURST_IDLE``.
        """
        underlay = self.underlay
        await self.qos(count)
        tag = f"{self.name}.{queue}.burst.{uuid.uuid4().hex[:8]}"
        await underlay.basic_consume(self.sources[queue], self.pusher(queue, underlay), consumer_tag=tag)
        try:
            await self.gather(queue, len(self.buffers.get(queue, ())) + count)
        finally:
            await underlay.basic_cancel(tag)

    def assess(self, message: amqp_wire.Message, queue: str) -> tuple[int, bool, float]:
        """``(delivery count so far, whether a redelivery must be counted by sending it round,
        eta or 0)``: what its headers say, without I/O."""
        headers = message.properties.headers or {}
        deliveries = header_int(headers, HDR_DELIVERIES, 1)
        topology = self.broker.topology
        recount = False
        if topology.options.queue_type == "quorum":
            deliveries += header_int(headers, "x-delivery-count")
        else:
            recount = message.redelivered and not topology.is_broadcast(queue)
        return deliveries, recount, header_int(headers, HDR_ETA) / 1000 if HDR_ETA in headers else 0.0

    def count(self, message: amqp_wire.Message, queue: str) -> int | None:
        """The delivery count of a message to run now; None when ``accept`` has more to do."""
        deliveries, recount, eta = self.assess(message, queue)
        return None if recount or (eta and eta > time.time()) else deliveries

    async def accept(self, message: amqp_wire.Message, queue: str, underlay: amqp_wire.Channel) -> int | None:
        """Count a delivery, or send it round again: its delivery count, None if it is not to be run now.

        A redelivered message of a classic queue is republished with its
        count incremented (RabbitMQ only flags redeliveries); a delayed one
        that came out early is sent round again, or held when almost due.
        """
        deliveries, recount, eta = self.assess(message, queue)
        broker = self.broker
        source = self.sources.get(queue, "")
        if recount:
            if await self.send_round(message, queue, ("", source), {HDR_DELIVERIES: deliveries + 1}):
                return None
            deliveries += 1
        remaining = eta - time.time() if eta else 0.0
        if remaining > broker.topology.options.delay_hold:
            if await self.send_round(message, queue, ("", source), {}, eta=eta):
                return None
        elif remaining > 0:
            await asyncio.sleep(remaining)
        if message.channel.is_closed or underlay is not self.underlay:
            return None
        return deliveries

    async def send_round(self, message: amqp_wire.Message, queue: str, target: Any, headers: dict[str, Any],
                         eta: float | None = None) -> bool:
        """Republish a copy of ``message`` and ack it: True when done (the copy comes round instead)."""
        if not await self.broker.republish(message, queue, target, headers, eta):
            return False
        if message.channel is self.acks.channel:
            try:
                await self.acks.ack([message.delivery_tag])
            except Exception as exc:
                if not dropped(exc):
                    raise
                log.info("could not ack a republished message of %s (%s): RabbitMQ redelivers it", queue, exc)
        return True

    # waiting -------------------------------------------------------------
    async def wait(self, queues: Sequence[str], count: int, deadline: float) -> None:
        """Subscribe to ``queues`` and block until RabbitMQ pushes something or ``deadline``."""
        loop = asyncio.get_running_loop()
        self.waiting += count
        try:
            async with self.lock:
                await self.end_stream()
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
            await self.qos(room)
            tag = self.tags[queue] = f"{self.name}.{queue}.{uuid.uuid4().hex[:8]}"
            await underlay.basic_consume(self.sources[queue], self.pusher(queue, underlay), consumer_tag=tag)
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
        if self.stream is not None and self.stream[1] == frame.consumer_tag:
            self.broker.declared.pop(self.sources.pop(self.stream[0], ""), None)
            self.stream = None
        for consumers in (self.tags, self.watches):
            for queue, tag in list(consumers.items()):
                if tag == frame.consumer_tag:
                    del consumers[queue]
                    self.broker.declared.pop(self.sources.pop(queue, ""), None)
        self.arrived.set()

    def counts(self, queue: str) -> tuple[int, int]:
        """``(buffered, leased)`` messages of ``queue`` this consumer holds on its live channel."""
        leased = sum(1 for lease in self.leased if lease.queue == queue and not lease.stale)
        return len(self.buffers.get(queue, ())), leased
