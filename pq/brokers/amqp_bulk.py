"""Publishing many messages on an aiormq channel as one write, each with its own confirm.

``aiormq.Channel.basic_publish`` takes the channel lock, marshals, queues one
frame write and waits, once per message: on a batch of 1,000 that is most of
the enqueue's CPU.  ``publish_many`` does what it does for a whole batch under
one lock acquisition (numbering the publishes for their confirms, registering
each confirm future and each message id for returns) and queues all frames as
one write.  It uses the channel's internals as aiormq 7 has them, so it is
used only on aiormq 7 (``BULK``); elsewhere the caller publishes one by one.
"""
from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Sequence

from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from .amqp_topology import Outgoing


def _aiormq_major() -> str:
    try:
        return version("aiormq").split(".")[0]
    except PackageNotFoundError:
        return ""


BULK = _aiormq_major() == "7"
"""Whether the installed aiormq has the internals ``publish_many`` relies on."""


async def publish_many(channel: Any, outgoing: Sequence[Outgoing]) -> list[asyncio.Future]:
    """Queue every publish of ``outgoing`` as one frame write; the confirm future of each, in order.

    A confirm future resolves to the broker's ``Basic.Ack``, to the returned
    message when RabbitMQ returns a mandatory one, or fails (a ``Basic.Nack``,
    the channel closing).  Cancelled before the write was queued, the
    numbering is rolled back, as ``basic_publish`` does.
    """
    futures: list[asyncio.Future] = []
    frames: list[Any] = []
    async with channel.lock:
        if channel.is_closed:
            raise ChannelInvalidStateError(f"{channel!r} closed")
        first = channel.delivery_tag + 1
        for out in outgoing:
            channel.delivery_tag += 1
            tag = channel.delivery_tag
            future = channel.create_future()
            channel.confirmations[tag] = future
            message_id = out.properties.message_id
            if message_id:
                channel.message_id_delivery_tag[message_id] = tag
                future.add_done_callback(_forgetter(channel, message_id, tag))
            futures.append(future)
            frames.append(Basic.Publish(exchange=out.exchange, routing_key=out.key, mandatory=out.mandatory))
            frames.append(ContentHeader(properties=out.properties, body_size=len(out.body)))
            frames += channel._split_body(out.body)
        try:
            await channel.write_queue.put(ChannelFrame.marshall(channel_number=channel.number, frames=frames))
        except BaseException:
            for tag, future in enumerate(futures, first):
                channel.confirmations.pop(tag, None)
                future.cancel()
            channel.delivery_tag = first - 1
            raise
    return futures


def _forgetter(channel: Any, message_id: str, tag: int) -> Any:
    """Drop the message id's entry (kept to match a return to its confirm) once confirmed."""
    def forget(_: asyncio.Future) -> None:
        if channel.message_id_delivery_tag.get(message_id) == tag:
            channel.message_id_delivery_tag.pop(message_id)

    return forget
