"""Counting, purging and dead letters of the AMQP broker.

Dead letters are read with ``basic.get`` on a throwaway channel and left
unacked; closing the channel puts back what was not taken, in its place.  A
listing therefore never loses a message, and one running at the same time
as another sees only what that one is not holding.
"""
from __future__ import annotations

import datetime
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from aiormq.abc import DeliveredMessage
from aiormq.exceptions import ChannelNotFoundEntity

from .amqp_topology import HDR_QUEUE, HDR_REASON, HDR_TIME
from .base import DeadLetter, QueueSize

if TYPE_CHECKING:
    from .amqp import AmqpBroker

log = logging.getLogger("pq.brokers.amqp")

Visit = Callable[[DeadLetter], Awaitable[bool | None]]
"""Called per dead letter, oldest first: True takes it, False leaves it, None stops the scan."""


def _text(value: Any, default: str = "") -> str:
    if value is None:
        return default
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def letter_of(broker: AmqpBroker, message: DeliveredMessage) -> DeadLetter:
    """A dead letter from our headers, or from RabbitMQ's ``x-death`` (a rejected message)."""
    props = message.header.properties
    headers = props.headers or {}
    queue, reason, when = headers.get(HDR_QUEUE), headers.get(HDR_REASON), headers.get(HDR_TIME)
    deaths = headers.get("x-death")
    if queue is None and isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        death = deaths[0]
        queue = _text(death.get("queue")).removeprefix(f"{broker.namespace}.")
        reason = f"{_text(death.get('reason'), 'rejected')} by a consumer"
        when = death.get("time")
    if isinstance(when, datetime.datetime):
        stamp = when.replace(tzinfo=when.tzinfo or datetime.timezone.utc).timestamp()
    elif isinstance(when, int):
        stamp = when / 1000
    else:
        stamp = 0.0
    return DeadLetter(_text(props.message_id), _text(queue), message.body, _text(reason, "unknown"), stamp)


async def scan(
    broker: AmqpBroker, visit: Visit, limit: int | None = None,
    then: Callable[[list[DeliveredMessage]], Awaitable[None]] | None = None,
) -> int:
    """Visit up to ``limit`` dead letters in order, then ``then(taken)`` and ack the taken; how many.

    Whatever was not taken (or everything, on an error) goes back in place
    when the channel closes.
    """
    channel = await broker.raw_channel()
    try:
        taken: list[DeliveredMessage] = []
        seen = 0
        while limit is None or seen < limit:
            try:
                message = await channel.basic_get(broker.topology.dead)
            except ChannelNotFoundEntity:
                return 0
            if message.delivery_tag is None:
                break
            seen += 1
            verdict = await visit(letter_of(broker, message))
            if verdict is None:
                break
            if verdict:
                taken.append(message)
        if then is not None:
            await then(taken)
        for message in taken:
            await channel.basic_ack(message.delivery_tag, wait=False)
        return len(taken)
    finally:
        if not channel.is_closed:
            await channel.close()


async def dead_letters(broker: AmqpBroker, queue: str | None, limit: int) -> list[DeadLetter]:
    found: list[DeadLetter] = []

    async def visit(letter: DeadLetter) -> bool | None:
        if queue is None or letter.queue == queue:
            found.append(letter)
        return None if len(found) >= limit else False

    if limit > 0:
        await scan(broker, visit)
    return found


def _wanted(ids: Sequence[str] | None) -> Visit:
    wanted = None if ids is None else set(ids)

    async def visit(letter: DeadLetter) -> bool:
        return wanted is None or letter.id in wanted

    return visit


async def retry_dead_letters(broker: AmqpBroker, ids: Sequence[str] | None) -> int:
    """Publish the chosen dead letters to their queues (confirmed), then remove them."""

    async def publish(taken: list[DeliveredMessage]) -> None:
        outgoing = []
        for message in taken:
            letter = letter_of(broker, message)
            topo = broker.topology
            target = topo.route(letter.queue) if topo.is_broadcast(letter.queue) else ("", topo.queue(letter.queue))
            outgoing.append(broker.outgoing(letter.id, letter.body, target, letter.queue))
        await broker.publish_all(outgoing)

    return await scan(broker, _wanted(ids), then=publish)


async def purge_dead_letters(broker: AmqpBroker, ids: Sequence[str] | None) -> int:
    if ids is None:
        return (await probe(broker, [broker.topology.dead], purge=True))[broker.topology.dead]

    return await scan(broker, _wanted(ids))


async def probe(broker: AmqpBroker, names: Sequence[str], purge: bool = False) -> dict[str, int]:
    """Ready messages of each queue (0 for a missing one), by passive declare or purge."""
    counts: dict[str, int] = {}
    channel = None
    try:
        for name in names:
            if channel is None or channel.is_closed:
                channel = await broker.raw_channel()
            try:
                if purge:
                    counts[name] = (await channel.queue_purge(name)).message_count
                else:
                    counts[name] = (await channel.queue_declare(name, passive=True)).message_count
            except ChannelNotFoundEntity:
                counts[name] = 0
    finally:
        if channel is not None and not channel.is_closed:
            await channel.close()
    return counts


def _names(broker: AmqpBroker, queue: str) -> tuple[list[str], list[str]]:
    """The queues holding ``queue``'s ready messages, and its known delay queues."""
    if broker.topology.is_broadcast(queue):
        ready = [c.sources[queue] for c in broker.consumers.values() if queue in c.sources]
    else:
        ready = [broker.topology.queue(queue)]
    return ready, sorted(broker.buckets.get(queue, ()))


async def purge(broker: AmqpBroker, queue: str) -> int:
    """Purge the queue and its known delay queues, and drop what consumers had buffered of it."""
    ready, delayed = _names(broker, queue)
    buffered = 0
    for consumer in broker.consumers.values():
        messages = consumer.drop_buffered(queue)
        await consumer.acks.ack(m.delivery_tag for m in messages if m.channel is consumer.acks.channel)
        buffered += len(messages)
    return buffered + sum((await probe(broker, ready + delayed, purge=True)).values())


async def dead_counts(broker: AmqpBroker) -> dict[str, int]:
    """Dead letters per queue, reading at most ``dead_scan_limit`` of them."""
    counts: dict[str, int] = {}
    if not (await probe(broker, [broker.topology.dead]))[broker.topology.dead]:
        return counts

    async def visit(letter: DeadLetter) -> bool:
        counts[letter.queue] = counts.get(letter.queue, 0) + 1
        return False

    await scan(broker, visit, broker.topology.options.dead_scan_limit)
    return counts


async def sizes(broker: AmqpBroker, queues: Sequence[str]) -> dict[str, QueueSize]:
    names = {queue: _names(broker, queue) for queue in queues}
    counts = await probe(broker, [n for ready, delayed in names.values() for n in ready + delayed])
    dead = await dead_counts(broker)
    out = {}
    for queue, (ready, delayed) in names.items():
        size = QueueSize(sum(counts[n] for n in ready), sum(counts[n] for n in delayed), 0, dead.get(queue, 0))
        for consumer in broker.consumers.values():
            buffered, leased = consumer.counts(queue)
            size.ready += buffered
            size.inflight += leased
        out[queue] = size
    return out
