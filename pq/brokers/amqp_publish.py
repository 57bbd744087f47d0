"""Declaring and publishing for the AMQP broker: confirms, returns, reconnects, delay queues.

Everything the broker publishes (enqueued tasks, requeues, dead letters,
events, the copies that count a redelivery or finish a delay) goes through
``publish_all``: declare what is missing, publish all (as one write, see
``amqp_bulk``), await the confirms together, and retry what a dropped
connection or a deleted queue lost.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Sequence

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from ..exceptions import BrokerError
from .amqp_bulk import BULK, publish_many
from .amqp_topology import GRACE_MS, HDR_ETA, Outgoing, Target, Topology, bucket_ms

log = logging.getLogger("pq.brokers.amqp")

DROPPED = (
    ConnectionError,
    asyncio.CancelledError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
)
"""Errors of a connection or channel going away: worth waiting for the reconnect and retrying."""


def dropped(exc: BaseException) -> bool:
    return isinstance(exc, DROPPED) or type(exc) is aiormq.exceptions.ChannelClosed


class AmqpPublishing:
    """The declaring and publishing half of AmqpBroker, a mixin over its connection and caches."""

    topology: Topology
    channel: Any
    declared: dict[str, float]
    exchanges: set[str]
    buckets: dict[str, set[str]]
    safe_url: str

    async def underlay(self) -> Any:
        """The live publishing channel (with confirms), waiting through a reconnect."""
        await self.connect()
        await self.channel.ready()
        return await self.channel.get_underlay_channel()

    async def declare_exchange(self, channel: Any, name: str, kind: str) -> None:
        """Declare a durable exchange (once per broker object)."""
        if name not in self.exchanges:
            await channel.exchange_declare(name, exchange_type=kind, durable=True)
            self.exchanges.add(name)

    async def declare_dead(self, channel: Any) -> None:
        """The dead-letter queue, declared before any work queue that dead-letters to it."""
        if self.topology.dead not in self.declared:
            await channel.queue_declare(self.topology.dead, durable=True, arguments=self.topology.dead_arguments())
            self.declared[self.topology.dead] = time.monotonic()

    async def declare_queue(self, queue: str, channel: Any) -> str:
        """Declare the work queue of ``queue`` and its bindings (once per broker); its name."""
        name = self.topology.queue(queue)
        if name in self.declared:
            return name
        try:
            for exchange, kind, key in self.topology.bindings(queue):
                await self.declare_exchange(channel, exchange, kind)
            await self.declare_dead(channel)
            await channel.queue_declare(name, durable=True, arguments=self.topology.queue_arguments())
            for exchange, _, key in self.topology.bindings(queue):
                await channel.queue_bind(name, exchange, routing_key=key)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise BrokerError(
                f"RabbitMQ refused to declare queue {name!r} ({exc}): it exists with other "
                "arguments or type; delete it or use another namespace"
            ) from exc
        self.declared[name] = time.monotonic()
        return name

    async def _prepare(self, channel: Any, outgoing: Sequence[Outgoing]) -> None:
        """Declare what the messages need; a delay queue again when half its grace has passed.

        Publishing does not count as using a queue for ``x-expires``, so a delay
        queue is re-declared before it could expire holding a message.
        """
        now = time.monotonic()
        topo = self.topology
        for out in outgoing:
            if out.queue is not None:
                if topo.is_broadcast(out.queue):
                    await self.declare_exchange(channel, topo.exchange(out.queue), "fanout")
                else:
                    await self.declare_queue(out.queue, channel)
            elif out.exchange == topo.events:
                await self.declare_exchange(channel, topo.events, "topic")
            elif out.key == topo.dead:
                await self.declare_dead(channel)
            if out.bucket is not None:
                name, args = out.bucket
                last = self.declared.get(name)
                if last is None or now - last > GRACE_MS / 2000:
                    await channel.queue_declare(name, durable=True, arguments=args)
                    self.declared[name] = now

    # publishing ------------------------------------------------------------
    def outgoing(
        self, msg_id: str, body: bytes, target: Target, queue: str | None,
        eta: float | None = None, headers: dict[str, Any] | None = None, owner: str | None = None,
    ) -> Outgoing:
        """A message for ``target``, through a delay queue when ``eta`` is far enough.

        ``queue`` is declared before publishing; ``owner`` is the pq queue
        whose delayed count includes the delay queue (``queue`` by default).
        """
        headers = dict(headers or {})
        out = Outgoing(target[0], target[1], body, Basic.Properties(), queue)
        out.mandatory = not (queue is not None and self.topology.is_broadcast(queue)) and bool(target[1])
        if eta:
            headers[HDR_ETA] = int(eta * 1000)
            delay = eta - time.time()
            if delay > self.topology.options.delay_hold:
                name, args = self.topology.bucket(target, bucket_ms(delay))
                out.exchange, out.key, out.bucket, out.mandatory = "", name, (name, args), True
                self.buckets.setdefault(owner or queue or target[1], set()).add(name)
        out.properties = Basic.Properties(delivery_mode=2, message_id=msg_id, headers=headers or None)
        return out

    async def publish_all(self, outgoing: Sequence[Outgoing]) -> None:
        """Publish all, then await their confirms together; retry through reconnects.

        A message RabbitMQ returns as unroutable (or whose exchange is gone)
        makes its queue or exchange declared again and is published once more;
        refused twice, it is an error.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.topology.options.publish_timeout
        pending = list(outgoing)
        while pending:
            try:
                async with asyncio.timeout(max(deadline - loop.time(), 0.001)):
                    channel = await self.underlay()
                    await self._prepare(channel, pending)
                    if BULK:
                        sent: Any = await publish_many(channel, pending)
                    else:
                        sent = (channel.basic_publish(o.body, exchange=o.exchange, routing_key=o.key,
                                                      properties=o.properties, mandatory=o.mandatory, wait=False)
                                for o in pending)
                    results = await asyncio.gather(*sent, return_exceptions=True)
            except TimeoutError:
                raise BrokerError(
                    f"RabbitMQ at {self.safe_url} did not confirm {len(pending)} message(s) "
                    f"within {self.topology.options.publish_timeout}s"
                ) from None
            except Exception as exc:
                if not dropped(exc):
                    raise
                log.info("publish interrupted (%s); retrying after the reconnect", exc)
                await asyncio.sleep(0.05)
                continue
            retry, interrupted = [], False
            for out, result in zip(pending, results):
                if isinstance(result, (DeliveredMessage, aiormq.exceptions.ChannelNotFoundEntity)):
                    if out.returned:
                        raise BrokerError(f"RabbitMQ cannot route a message to {out.exchange!r}/{out.key!r}")
                    out.returned = True
                    self.forget(out)
                    retry.append(out)
                elif isinstance(result, BaseException):
                    if not dropped(result):
                        raise BrokerError(f"RabbitMQ refused a message for {out.key!r}: {result}") from result
                    retry.append(out)
                    interrupted = True
            if interrupted:
                log.info("%d publish(es) interrupted; retrying after the reconnect", len(retry))
                await asyncio.sleep(0.05)
            pending = retry

    def forget(self, out: Outgoing) -> None:
        """Someone deleted what ``out`` goes to: declare it again before the next try."""
        if out.queue is not None:
            self.declared.pop(self.topology.queue(out.queue), None)
            self.exchanges.difference_update(e for e, _, _ in self.topology.bindings(out.queue))
            self.exchanges.discard(self.topology.exchange(out.queue))
        self.declared.pop(out.key, None)
        self.exchanges.discard(out.exchange)

    async def republish(
        self, message: Any, queue: str, target: Target, headers: dict[str, Any],
        eta: float | None = None,
    ) -> bool:
        """Publish a copy of a delivered message (new headers, maybe delayed), confirmed; the caller acks it.

        Used to count a redelivery and to send an early message round again;
        False, with a log line, when it could not be done (the caller then
        hands the message out as it is).
        """
        props = message.properties
        merged = {k: v for k, v in (props.headers or {}).items() if k.startswith("x-pq-")}
        merged.update(headers)
        out = self.outgoing(props.message_id or "", message.body, target, None, eta, merged, owner=queue)
        try:
            await self.publish_all([out])
        except Exception as exc:
            log.warning("could not republish a message of %s: %s", target[1], exc)
            return False
        return True
