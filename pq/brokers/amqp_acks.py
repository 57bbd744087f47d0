"""Settling the deliveries of one AMQP channel, many with one ``basic.ack multiple``."""
from __future__ import annotations

import asyncio
from typing import Any, Iterable


class Acks:
    """The settled delivery tags of one channel, so a batch of acks can go as one frame.

    RabbitMQ numbers a channel's deliveries 1, 2, 3... (pushed and got
    alike) and ``basic.ack(tag, multiple=True)`` settles every unsettled
    delivery up to ``tag``.  ``floor`` is the highest tag up to which
    everything is settled: the tags of a batch that, with those settled
    before, reach up from the floor without a gap go as one multiple ack;
    tags past a gap (a delivery still running or buffered, or one this
    process never saw) are acked one by one, so nothing unsettled is ever
    acked by accident.  Frames go out under a lock, in the order the floor
    was computed: a multiple ack never overtakes a single ack it covers.
    """

    __slots__ = ("channel", "floor", "above", "lock")

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.floor = 0
        self.above: set[int] = set()
        self.lock = asyncio.Lock()

    def _settle(self, tags: list[int]) -> int:
        """Mark ``tags`` settled; how many of them (the lowest) the new floor covers."""
        above = self.above
        above.update(tags)
        floor = self.floor
        while floor + 1 in above:
            floor += 1
            above.discard(floor)
        self.floor = floor
        return sum(1 for tag in tags if tag <= floor)

    async def ack(self, tags: Iterable[int]) -> None:
        """basic.ack every tag: one multiple ack for those the floor covers, single acks past a gap."""
        ordered = sorted(tags)
        if not ordered:
            return
        async with self.lock:
            covered = self._settle(ordered)
            if covered:
                await self.channel.basic_ack(ordered[covered - 1], multiple=covered > 1, wait=False)
            for tag in ordered[covered:]:
                await self.channel.basic_ack(tag, wait=False)

    async def reject(self, tag: int, requeue: bool) -> None:
        """basic.reject one delivery (requeued, or dead-lettered by its queue)."""
        async with self.lock:
            self._settle([tag])
            await self.channel.basic_reject(tag, requeue=requeue, wait=False)
