"""The state behind ``memory://`` stores: one ``Space`` per URL name and namespace.

Each queue is a heap of ``(ready_at, seq)``: a message is ready when its
``ready_at`` has passed, and a lease only moves ``ready_at`` to the lease's
end, so an expired lease makes its message ready again with no sweeper.
Heap entries of a message that moved since go stale and are skipped.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from .base import DeadLetter
from .notify import LocalSubscription, Waiters

NEXT_SEQ = itertools.count(1)
NEXT_TOKEN = itertools.count(1)
SWEEP_EVERY = 10.0


@dataclass(slots=True)
class Message:
    seq: int
    id: str
    queue: str
    body: bytes
    ready_at: float
    deliveries: int = 0
    token: int | None = None
    consumer: str | None = None
    version: int = 0


class Queue:
    """The messages of one queue and a heap ordering them by when they are ready."""

    __slots__ = ("messages", "heap")

    def __init__(self) -> None:
        self.messages: dict[int, Message] = {}
        self.heap: list[tuple[float, int, int]] = []

    def schedule(self, msg: Message) -> None:
        """(Re)insert ``msg`` at its ``ready_at``; older heap entries of it go stale."""
        self.messages[msg.seq] = msg
        msg.version += 1
        heapq.heappush(self.heap, (msg.ready_at, msg.seq, msg.version))

    def head(self) -> Message | None:
        """The message ready soonest, dropping stale heap entries on the way."""
        heap = self.heap
        while heap:
            _, seq, version = heap[0]
            msg = self.messages.get(seq)
            if msg is not None and msg.version == version:
                return msg
            heapq.heappop(heap)
        return None

    def remove(self, keep: Any) -> int:
        """Drop the messages for which ``keep(msg)`` is false; how many."""
        gone = [seq for seq, msg in self.messages.items() if not keep(msg)]
        for seq in gone:
            del self.messages[seq]
        return len(gone)


class Space:
    """Everything one namespace of one memory URL holds."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.waiters = Waiters()
        self.subscriptions: list[LocalSubscription] = []
        self.clear()

    def clear(self) -> None:
        self.queues: defaultdict[str, Queue] = defaultdict(Queue)
        self.dead: dict[str, DeadLetter] = {}
        self.records: dict[tuple[str, str], tuple[bytes, float | None]] = {}
        self.leases: defaultdict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        self.counters: dict[str, int] = {}
        self.swept = time.time()

    def record(self, kind: str, key: str, now: float) -> bytes | None:
        value = self.records.get((kind, key))
        if value is None:
            return None
        if value[1] is not None and value[1] <= now:
            del self.records[(kind, key)]
            return None
        return value[0]

    def holders(self, kind: str, name: str, now: float) -> dict[str, float]:
        """Live holders of a slot counter or lock, expired ones removed first."""
        held = self.leases[(kind, name)]
        for holder in [h for h, until in held.items() if until <= now]:
            del held[holder]
        return held

    def sweep(self, now: float) -> None:
        """Forget expired records and leases, at most every SWEEP_EVERY seconds."""
        if now - self.swept < SWEEP_EVERY:
            return
        self.swept = now
        for key in [k for k, (_, exp) in self.records.items() if exp is not None and exp <= now]:
            del self.records[key]
        for kind, name in list(self.leases):
            if not self.holders(kind, name, now):
                del self.leases[(kind, name)]


SPACES: dict[tuple[str, str], Space] = {}
SPACES_LOCK = threading.Lock()
