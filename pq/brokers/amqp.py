"""RabbitMQ message broker (``amqp://``, ``amqps://``): aio-pika, and pq's own connection for consumers.

AMQP is a message broker only: pair it with a data store (redis, sqlite) for
results, locks and counters.  The lease model of ``base.py`` maps onto AMQP
acknowledgements; see :class:`AmqpBroker`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Sequence

import aio_pika
import aiormq

from ..exceptions import BrokerError
from . import amqp_admin
from .amqp_acks import Acks
from .amqp_consumer import Consumer, Lease
from .amqp_events import AmqpEvents
from .amqp_publish import DROPPED, AmqpPublishing, dropped
from .amqp_topology import HDR_QUEUE, HDR_REASON, HDR_TIME, AmqpOptions, Outgoing, Topology
from .base import DeadLetter, Delivery, Envelope, EventHandler, MessageBroker, QueueSize, Subscription

log = logging.getLogger("pq.brokers.amqp")

CHANNEL_WAIT = 1.0
"""How long past its timeout a fetch waits for a channel while RabbitMQ is away, before returning nothing."""


class _Connection(aio_pika.RobustConnection):
    """A robust connection that closes itself when its first connect fails: abandoned, it
    would close itself from ``__del__``, outside any loop ("coroutine ... was never awaited")."""

    async def connect(self, timeout: Any = None) -> None:
        try:
            await super().connect(timeout)
        except BaseException:
            await self.close()
            raise


class AmqpBroker(AmqpPublishing, MessageBroker):
    """Task queues on RabbitMQ: durable queues, persistent messages, publisher confirms.

    **Leases.**  Each consumer name has its own channel.  ``fetch`` goes
    first queue first, never more than ``count``: a consumer holding nothing
    that finds a backlog keeps one ``basic.consume`` open across fetches with
    prefetch = ``count`` (its slots), so every slot freed by an ack is
    refilled by a push and fetches take without round trips; otherwise
    ``basic.get``, or a short burst with prefetch = what is still wanted; and
    when every queue is empty, it subscribes with a prefetch equal to
    ``count`` (the free slots) and blocks until RabbitMQ pushes a message
    (see ``amqp_consumer``).  So RabbitMQ never hands a consumer more than
    its free slots, and nothing sits in an idle consumer's buffer.  Acks of
    a batch go as one ``basic.ack multiple`` where the delivery tags allow.  A message taken stays
    unacked until ``ack``: the lease lasts as long as the channel, and a
    consumer that dies (or loses its connection) mid-task has its messages
    requeued by RabbitMQ itself.  Acking a delivery of a channel that closed
    is a logged no-op: RabbitMQ has requeued it already.

    **Topology** of namespace ``ns``: durable work queues ``{ns}.{queue}``
    (on the default exchange, or bound as ``routes``/``bindings`` say), the
    dead-letter queue ``{ns}.dead``, delay queues ``{ns}.delay.{ms}.{target}``,
    the topic exchange ``{ns}.events``, fanout exchanges ``{ns}.{queue}`` of
    broadcast queues with a queue ``{ns}.{queue}@{node}`` per server (shared by
    its consumers; ``x-expires`` removes it a minute after its server is gone),
    or ``{ns}.{queue}@{consumer}.{id}`` per consumer when no node is set, and
    the declared exchanges ``{ns}.{name}``.

    **Delivery count.**  Classic queues only flag a redelivery, so a
    redelivered message is republished with ``x-pq-deliveries`` incremented
    (then acked) and counted when it comes round again: exact counts, at the
    cost of its place in the queue.  The count includes messages that were
    pushed but not yet taken when their channel closed.  With
    ``queue_type=quorum`` RabbitMQ's own ``x-delivery-count`` is used.

    **Delays.**  No plugin: a message delayed *d* goes to the delay queue
    ``{ns}.delay.{ms}.{target}`` whose ``x-message-ttl`` is *d* rounded down to
    two significant digits of ms and whose dead-letter exchange routes it back
    to its target; ``x-expires`` removes idle delay queues.  It carries its
    eta (``x-pq-eta``): a message arriving early is sent round again for the
    remainder, or held in the consumer when less than ``delay_hold`` is left.

    **Dead letters.**  One durable queue ``{ns}.dead``; the reason travels in
    ``x-pq-reason``.  Work queues dead-letter there too, so ``reject(...,
    requeue=False)`` never loses a message.

    **Options** (keyword arguments, or URL query parameters in the form shown):

    * ``queue_type=classic|quorum``: type of work and dead-letter queues;
    * ``broadcast=bus,control``: fanout queues: each server gets its own
      copy in a queue bound to the fanout exchange ``{ns}.{queue}``;
      messages published while no server listens are dropped;
    * ``prefetch=emails:5``: at most that many messages of the queue held
      (unacked) by one consumer, whatever its free slots;
    * ``exchanges=mail:topic``: exchanges to declare (``{ns}.mail``);
    * ``routes=emails:mail:mail.high``: publish queue ``emails`` to exchange
      ``mail`` with routing key ``mail.high`` (its queue is bound with it);
    * ``bindings=audit:mail:mail.%23``: extra bindings of work queues;
    * ``delay_hold`` (0.05 s), ``publish_timeout`` (30 s: how long enqueue
      waits through a reconnect), ``reconnect_interval`` (1 s),
      ``connection_name``, ``dead_scan_limit`` (1000: dead letters read to
      count them per queue in ``sizes``).

    Other query parameters (``heartbeat``, and for ``amqps`` ``cafile``,
    ``capath``, ``certfile``, ``keyfile``, ``no_verify_ssl``) go to aio-pika
    and to the consumers' own connections (``amqp_wire``).
    """

    scheme = "amqp"
    carries_events = True
    unacked_take_slots = True  # the channel's prefetch counts deliveries until acked

    def __init__(self, url: str, namespace: str = "pq", **options: Any) -> None:
        super().__init__(url, namespace, **options)
        self.amqp_url, opts = AmqpOptions.from_url(url, options)
        self.topology = Topology(namespace, opts)
        self.connection: Any = None
        self.connection_name = ""
        self.channel: Any = None
        self.consumers: dict[str, Consumer] = {}
        self.buckets: dict[str, set[str]] = {}
        self.declared: dict[str, float] = {}
        self.exchanges: set[str] = set()
        self.events = AmqpEvents(self)
        self._connecting = asyncio.Lock()
        self._opening = asyncio.Lock()

    # connection ----------------------------------------------------------
    async def connect(self) -> None:
        async with self._connecting:
            if self.connection is not None:
                return
            opts = self.topology.options
            name = self.connection_name = opts.connection_name or f"pq:{self.namespace}:{os.getpid()}"
            try:
                connection = await aio_pika.connect_robust(
                    self.amqp_url, reconnect_interval=opts.reconnect_interval,
                    client_properties={"connection_name": name}, connection_class=_Connection,
                )
            except (OSError, aiormq.exceptions.AMQPError, asyncio.TimeoutError) as exc:
                raise BrokerError(
                    f"cannot connect to RabbitMQ at {self.safe_url}: {exc}; "
                    "check that the server runs and the URL, user and password"
                ) from exc
            try:
                self.channel = await connection.channel(publisher_confirms=True)
                underlay = await self.channel.get_underlay_channel()
                for exchange, kind in opts.exchanges.items():
                    await self.declare_exchange(underlay, self.topology.exchange(exchange), kind)
            except BaseException:
                await connection.close()
                raise
            self.connection = connection

    async def close(self) -> None:
        async with self._connecting:
            connection, self.connection = self.connection, None
            if connection is None:
                return
            await self.events.close()
            for consumer in self.consumers.values():
                await consumer.close()
            self.consumers.clear()
            await connection.close()

    async def drop(self) -> None:
        """Delete the namespace's dead letters, exchanges, and the queues this object declared.

        AMQP cannot list queues, so a work or delay queue that only another
        broker object declared is left to that object's ``drop`` (delay
        queues expire on their own).
        """
        for consumer in self.consumers.values():
            await consumer.close()
        self.consumers.clear()
        await self.events.close()
        topo = self.topology
        queues = {topo.dead, *self.declared, *(name for names in self.buckets.values() for name in names)}
        exchanges = {topo.events, *self.exchanges, *(topo.exchange(e) for e in topo.options.exchanges)}
        channel = await self.raw_channel()
        try:
            for name in sorted(queues):
                await channel.queue_delete(name)
            for name in sorted(exchanges):
                await channel.exchange_delete(name)
        finally:
            if not channel.is_closed:
                await channel.close()
        self.declared.clear()
        self.exchanges.clear()
        self.buckets.clear()

    async def open_channel(self, confirms: bool = False) -> Any:
        """A new robust channel, waiting (up to ``publish_timeout``) through a reconnect."""
        return await self._with_connection(lambda: self.connection.channel(publisher_confirms=confirms))

    async def raw_channel(self, confirms: bool = False) -> Any:
        """A channel that is not restored after errors: for probes and dead-letter scans."""
        return await self._with_connection(
            lambda: self.connection.transport.connection.channel(publisher_confirms=confirms)
        )

    async def _with_connection(self, open_channel: Any) -> Any:
        await self.connect()
        try:
            async with asyncio.timeout(self.topology.options.publish_timeout):
                while True:
                    await self.connection.ready()
                    try:
                        return await open_channel()
                    except (AttributeError, RuntimeError, *DROPPED) as exc:
                        log.debug("no channel yet (%s); waiting for the reconnect", exc)
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise BrokerError(f"RabbitMQ at {self.safe_url} is unreachable; no channel could be opened") from None

    # MessageBroker -------------------------------------------------------
    async def enqueue(self, envelopes: Sequence[Envelope]) -> None:
        await self.publish_all([
            self.outgoing(env.id, env.body, self.topology.route(env.queue), env.queue, env.eta)
            for env in envelopes
        ])

    async def fetch(
        self, queues: Sequence[str], count: int, timeout: float, lease: float, consumer: str
    ) -> list[Delivery]:
        """Pull up to ``count`` messages, first queue first; if none, wait for a push up to ``timeout``.

        ``lease`` is not used: see ``renew``.
        """
        if count <= 0 or not queues:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while True:
            try:
                state = self.consumers.get(consumer)
                if state is None or not state.is_live:
                    async with asyncio.timeout(max(deadline - loop.time(), 0.0) + CHANNEL_WAIT):
                        state = await self._consumer(consumer)
                        await state.live()
                await state.prepare(queues)
                out = await state.collect(queues, count)
                if out or loop.time() >= deadline:
                    return out
                await state.wait(queues, count, deadline)
            except TimeoutError:
                return []
            except Exception as exc:
                if not dropped(exc):
                    raise
                log.info("consumer %s lost its channel (%s); waiting for the reconnect", consumer, exc)
                if loop.time() >= deadline:
                    return []
                await asyncio.sleep(0.05)

    async def _consumer(self, name: str) -> Consumer:
        async with self._opening:
            state = self.consumers.get(name)
            if state is None:
                state = self.consumers[name] = Consumer(self, name)
        return state

    async def renew(self, deliveries: Sequence[Delivery], lease: float) -> None:
        """Nothing to do: an AMQP lease lasts as long as the consumer's channel.

        RabbitMQ requeues a message only when the channel holding it closes
        (the consumer died or lost its connection), never on a timer a client
        could push back, so a long task needs no renewal.  The one timer is
        the server's ``consumer_timeout`` (30 minutes by default), which
        closes a channel holding a message unacked for longer: set it above
        the longest task's timeout in rabbitmq.conf.
        """

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """basic.ack, one ``multiple`` frame per channel where the delivery tags allow it (see ``Acks``)."""
        batches: dict[Acks, list[int]] = {}
        for delivery in deliveries:
            lease: Lease = delivery.token
            if lease.settle():
                batches.setdefault(lease.acks, []).append(lease.message.delivery_tag)
        for acks, tags in batches.items():
            await self._settle(acks, acks.ack(tags))

    async def reject(self, delivery: Delivery, requeue: bool) -> None:
        """basic.reject, for the job's ack policy: requeued, or (``requeue=False``) to the dead letters.

        RabbitMQ dead-letters a rejected message with ``x-death`` reason
        ``rejected``; a requeued one comes back counted as a redelivery.
        """
        lease: Lease = delivery.token
        if lease.settle():
            await self._settle(lease.acks, lease.acks.reject(lease.message.delivery_tag, requeue))

    async def _settle(self, acks: Acks, action: Any) -> None:
        try:
            await action
        except Exception as exc:
            if not dropped(exc):
                raise
            log.info("could not settle deliveries of channel %s (%s): RabbitMQ redelivers them", acks.channel, exc)

    async def requeue(self, delivery: Delivery, body: bytes | None = None, delay: float = 0.0) -> None:
        """Publish the new body (delayed if asked) to the queue it came from, then ack the old one."""
        lease: Lease = delivery.token
        if lease.done or lease.stale:
            lease.settle()
            return
        eta = time.time() + delay if delay > 0 else None
        out = self.outgoing(delivery.id, delivery.body if body is None else body, ("", lease.source), None, eta,
                            owner=delivery.queue)
        await self._replace(lease, out)

    async def dead_letter(self, delivery: Delivery, reason: str, body: bytes | None = None) -> None:
        lease: Lease = delivery.token
        if lease.done or lease.stale:
            lease.settle()
            return
        headers = {HDR_QUEUE: delivery.queue, HDR_REASON: reason, HDR_TIME: int(time.time() * 1000)}
        out = self.outgoing(delivery.id, delivery.body if body is None else body,
                            ("", self.topology.dead), None, headers=headers)
        await self._replace(lease, out)

    async def _replace(self, lease: Lease, out: Outgoing) -> None:
        """Publish ``out`` with a confirm, then ack the lease; on failure put the lease back."""
        try:
            await self.publish_all([out])
        except BaseException:
            if lease.settle():
                await self._settle(lease.acks, lease.acks.reject(lease.message.delivery_tag, True))
            raise
        if lease.settle():
            await self._settle(lease.acks, lease.acks.ack([lease.message.delivery_tag]))

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return await amqp_admin.dead_letters(self, queue, limit)

    async def retry_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        return await amqp_admin.retry_dead_letters(self, ids)

    async def purge_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        return await amqp_admin.purge_dead_letters(self, ids)

    async def purge(self, queue: str) -> int:
        return await amqp_admin.purge(self, queue)

    async def sizes(self, queues: Sequence[str]) -> dict[str, QueueSize]:
        """Ready from RabbitMQ; in flight and delayed as far as this broker object knows.

        AMQP cannot list queues nor count another connection's unacked
        messages: ``inflight`` is what this object's consumers hold, and
        ``delayed`` sums the delay queues this object published to.
        """
        return await amqp_admin.sizes(self, queues)

    # events ----------------------------------------------------------------
    async def publish(self, channel: str, event: str, payload: bytes) -> None:
        """Send an event to every subscriber, on any machine, through ``{ns}.events``."""
        await self.events.publish(channel, event, payload)

    async def publish_events(self, channel: str, events: Sequence[tuple[str, bytes]]) -> None:
        """``publish`` for many ``(event, payload)`` of one channel: one batch, in order."""
        await self.events.publish_many(channel, events)

    async def subscribe(self, handler: EventHandler, channels: Sequence[str] | None = None) -> Subscription:
        """Call ``handler(channel, event, payload)`` for every event of ``channels`` published from now on."""
        return await self.events.subscribe(handler, channels)
