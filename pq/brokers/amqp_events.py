"""Events over RabbitMQ: a topic exchange ``{ns}.events``, one exclusive queue per subscriber.

So ``on_events`` works across machines with RabbitMQ alone.  Events are
transient (not persisted, dropped when nobody listens); a subscriber's queue
is re-declared and re-bound by aio-pika after a reconnect, and events sent
while it was away are lost, as with Redis pub/sub.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from typing import TYPE_CHECKING, Any, Sequence

from aio_pika.abc import AbstractIncomingMessage
from pamqp.commands import Basic

from .amqp_topology import Outgoing
from .base import EventHandler, Subscription

if TYPE_CHECKING:
    from .amqp import AmqpBroker

log = logging.getLogger("pq.brokers.amqp")

HDR_CHANNEL = "x-pq-channel"
HDR_EVENT = "x-pq-event"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


class AmqpSubscription(Subscription):
    """One subscriber's exclusive queue and consumer."""

    def __init__(self, events: AmqpEvents, queue: Any, tag: str) -> None:
        self.events = events
        self.queue = queue
        self.tag = tag

    async def close(self) -> None:
        if self not in self.events.subscriptions:
            return
        self.events.subscriptions.discard(self)
        try:
            await self.queue.cancel(self.tag)
            await self.events.channel.queue_delete(self.queue.name)
        except Exception as exc:
            log.debug("event queue %s already gone: %s", self.queue.name, exc)


class AmqpEvents:
    """Publishing and subscribing on ``{ns}.events``, routing key ``channel.event``."""

    def __init__(self, broker: AmqpBroker) -> None:
        self.broker = broker
        self.channel: Any = None
        self.subscriptions: set[AmqpSubscription] = set()

    async def publish(self, channel: str, event: str, payload: bytes) -> None:
        await self.publish_many(channel, [(event, payload)])

    async def publish_many(self, channel: str, events: Sequence[tuple[str, bytes]]) -> None:
        """Events of one channel in one batch of publishes, in order."""
        exchange = self.broker.topology.events
        await self.broker.publish_all([
            Outgoing(exchange, f"{channel}.{event}", payload,
                     Basic.Properties(delivery_mode=1, headers={HDR_CHANNEL: channel, HDR_EVENT: event}),
                     mandatory=False)
            for event, payload in events
        ])

    async def subscribe(self, handler: EventHandler, channels: Sequence[str] | None = None) -> Subscription:
        if self.channel is None:
            self.channel = await self.broker.open_channel()
        events = self.broker.topology.events
        await self.broker.declare_exchange(await self.broker.underlay(), events, "topic")
        name = f"{events}@{uuid.uuid4().hex[:12]}"
        queue = await self.channel.declare_queue(name, exclusive=True, auto_delete=True)
        for key in ["#"] if channels is None else [f"{channel}.#" for channel in channels]:
            await queue.bind(events, routing_key=key)
        order = asyncio.Lock()

        async def on_message(message: AbstractIncomingMessage) -> None:
            headers = message.headers or {}
            key = message.routing_key or ""
            channel = _text(headers.get(HDR_CHANNEL, key.partition(".")[0]))
            event = _text(headers.get(HDR_EVENT, key.partition(".")[2]))
            async with order:
                try:
                    result = handler(channel, event, message.body)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("event handler failed on %s.%s", channel, event)

        tag = await queue.consume(on_message, no_ack=True)
        subscription = AmqpSubscription(self, queue, tag)
        self.subscriptions.add(subscription)
        return subscription

    async def close(self) -> None:
        for subscription in list(self.subscriptions):
            await subscription.close()
        if self.channel is not None and not self.channel.is_closed:
            await self.channel.close()
        self.channel = None
