"""The ``memory://`` broker and data store: in-process, for tests and ``execute``.

Objects made with the same URL in one process share their state
(``memory://`` and ``memory://name`` are two stores), so a producer and a
consumer in one process meet; namespaces isolate.  The semantics are those of
the real brokers: leases expire and return their messages, delayed messages
wait, records, slots and locks expire, and a blocked fetch sleeps until woken.

The state itself, and how a queue orders its messages, is in ``memory_space``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Sequence
from urllib.parse import urlsplit

from .base import (
    DataStore,
    DeadLetter,
    Delivery,
    Envelope,
    EventHandler,
    MessageBroker,
    QueueSize,
    Subscription,
    only_channels,
)
from .memory_space import NEXT_SEQ, NEXT_TOKEN, SPACES, SPACES_LOCK, Message, Queue, Space
from .notify import LocalSubscription


def _expires(ttl: float | None, now: float) -> float | None:
    return None if ttl is None else now + ttl


class MemoryStore(MessageBroker, DataStore):
    """In-process broker and data store; thread-safe, usable from several loops."""

    scheme = "memory"
    one_machine = True

    def __init__(self, url: str = "memory://", namespace: str = "pq", **options: Any) -> None:
        super().__init__(url, namespace, **options)
        parts = urlsplit(url)
        self._key = ((parts.netloc + parts.path).strip("/"), namespace)
        self._subscriptions: list[LocalSubscription] = []
        self._epoch = 0

    @property
    def _space(self) -> Space:
        space = SPACES.get(self._key)
        if space is None:
            with SPACES_LOCK:
                space = SPACES.setdefault(self._key, Space())
        return space

    async def close(self) -> None:
        """Stop this object's subscriptions and wake its blocked fetches (they return [])."""
        self._epoch += 1
        for sub in list(self._subscriptions):
            await sub.close()
        self._space.waiters.wake_all()

    async def drop(self) -> None:
        space = self._space
        with space.lock:
            space.clear()
        with SPACES_LOCK:
            if not space.subscriptions and not space.waiters:
                SPACES.pop(self._key, None)

    # queues ----------------------------------------------------------------
    async def enqueue(self, envelopes: Sequence[Envelope]) -> None:
        space = self._space
        now = time.time()
        with space.lock:
            for env in envelopes:
                ready_at = now if env.eta is None else max(now, env.eta)
                msg = Message(next(NEXT_SEQ), env.id, env.queue, env.body, ready_at)
                space.queues[env.queue].schedule(msg)
        space.waiters.wake_all()

    async def fetch(
        self, queues: Sequence[str], count: int, timeout: float, lease: float, consumer: str
    ) -> list[Delivery]:
        deadline = time.monotonic() + max(timeout, 0.0)
        epoch = self._epoch
        while count > 0 and epoch == self._epoch:
            space = self._space
            waiter = space.waiters.arm()
            with space.lock:
                found, next_at = self._claim(space, queues, count, lease, consumer)
            wait = deadline - time.monotonic()
            if found or wait <= 0:
                space.waiters.disarm(waiter)
                return found
            if next_at is not None:
                wait = min(wait, next_at - time.time())
            await space.waiters.wait(waiter, wait)
        return []

    @staticmethod
    def _claim(
        space: Space, queues: Sequence[str], count: int, lease: float, consumer: str
    ) -> tuple[list[Delivery], float | None]:
        """Lease up to ``count`` ready messages, first queue first; else when the next is due."""
        now = time.time()
        until = now + max(lease, 0.001)
        found: list[Delivery] = []
        next_at: float | None = None
        for name in dict.fromkeys(queues):
            queue = space.queues.get(name)
            while queue is not None and len(found) < count:
                msg = queue.head()
                if msg is None:
                    break
                if msg.ready_at > now:
                    next_at = msg.ready_at if next_at is None else min(next_at, msg.ready_at)
                    break
                msg.token, msg.consumer, msg.ready_at = next(NEXT_TOKEN), consumer, until
                msg.deliveries += 1
                queue.schedule(msg)
                found.append(Delivery(msg.id, name, msg.body, msg.deliveries, (msg.seq, msg.token)))
        return found, next_at

    @staticmethod
    def _leased(space: Space, delivery: Delivery) -> tuple[Queue, Message] | None:
        """The queue and message of a delivery, if its lease is still the current one."""
        queue = space.queues.get(delivery.queue)
        seq, token = delivery.token
        msg = queue.messages.get(seq) if queue is not None else None
        if msg is None or msg.token != token:
            return None
        return queue, msg

    async def renew(self, deliveries: Sequence[Delivery], lease: float) -> None:
        space = self._space
        until = time.time() + lease
        with space.lock:
            for delivery in deliveries:
                found = self._leased(space, delivery)
                if found:
                    found[1].ready_at = until
                    found[0].schedule(found[1])

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        space = self._space
        with space.lock:
            for delivery in deliveries:
                found = self._leased(space, delivery)
                if found:
                    del found[0].messages[found[1].seq]

    async def requeue(
        self, delivery: Delivery, body: bytes | None = None, delay: float = 0.0
    ) -> None:
        space = self._space
        with space.lock:
            found = self._leased(space, delivery)
            if not found:
                return
            queue, msg = found
            msg.ready_at = time.time() + max(delay, 0.0)
            msg.token = msg.consumer = None
            msg.deliveries = 0
            if body is not None:
                msg.body = body
            queue.schedule(msg)
        space.waiters.wake_all()

    async def dead_letter(self, delivery: Delivery, reason: str, body: bytes | None = None) -> None:
        space = self._space
        with space.lock:
            found = self._leased(space, delivery)
            if not found:
                return
            queue, msg = found
            del queue.messages[msg.seq]
            space.dead.pop(msg.id, None)
            space.dead[msg.id] = DeadLetter(
                msg.id, msg.queue, msg.body if body is None else body, reason
            )

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        space = self._space
        with space.lock:
            letters = [replace(d) for d in space.dead.values() if queue is None or d.queue == queue]
        return letters[:limit]

    def _take_dead(self, space: Space, ids: Sequence[str] | None) -> list[DeadLetter]:
        keys = (
            list(space.dead) if ids is None else [i for i in dict.fromkeys(ids) if i in space.dead]
        )
        return [space.dead.pop(key) for key in keys]

    async def retry_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        space = self._space
        with space.lock:
            letters = self._take_dead(space, ids)
        await self.enqueue([Envelope(d.id, d.queue, d.body) for d in letters])
        return len(letters)

    async def purge_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        space = self._space
        with space.lock:
            return len(self._take_dead(space, ids))

    async def purge(self, queue: str) -> int:
        space = self._space
        now = time.time()
        with space.lock:
            found = space.queues.get(queue)
            if found is None:
                return 0
            return found.remove(lambda msg: msg.token is not None and msg.ready_at > now)

    async def sizes(self, queues: Sequence[str]) -> dict[str, QueueSize]:
        space = self._space
        now = time.time()
        result = {name: QueueSize() for name in queues}
        with space.lock:
            for name, size in result.items():
                queue = space.queues.get(name)
                for msg in queue.messages.values() if queue is not None else ():
                    if msg.ready_at <= now:
                        size.ready += 1
                    elif msg.token is None:
                        size.delayed += 1
                    else:
                        size.inflight += 1
            for dead in space.dead.values():
                if dead.queue in result:
                    result[dead.queue].dead += 1
        return result

    async def recover(self) -> int:
        space = self._space
        now = time.time()
        recovered = 0
        with space.lock:
            for queue in space.queues.values():
                for msg in queue.messages.values():
                    if msg.token is not None and msg.ready_at <= now:
                        msg.token = msg.consumer = None
                        recovered += 1
        return recovered

    # events ----------------------------------------------------------------
    async def publish(self, channel: str, event: str, payload: bytes) -> None:
        for sub in list(self._space.subscriptions):
            sub.feed([(channel, event, payload)])

    async def subscribe(self, handler: EventHandler, channels: Sequence[str] | None = None) -> Subscription:
        space = self._space
        sub = LocalSubscription(only_channels(handler, channels), self._unsubscribe)
        with space.lock:
            space.subscriptions.append(sub)
        self._subscriptions.append(sub)
        return sub

    def _unsubscribe(self, sub: LocalSubscription) -> None:
        space = self._space
        with space.lock:
            if sub in space.subscriptions:
                space.subscriptions.remove(sub)
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)

    # task records and revocations --------------------------------------------
    async def set_task(self, task_id: str, body: bytes, ttl: float | None = None) -> None:
        space = self._space
        now = time.time()
        with space.lock:
            space.sweep(now)
            space.records[("task", task_id)] = (body, _expires(ttl, now))

    async def add_task(self, task_id: str, body: bytes, ttl: float | None = None) -> bytes | None:
        space = self._space
        now = time.time()
        with space.lock:
            existing = space.record("task", task_id, now)
            if existing is None:
                space.records[("task", task_id)] = (body, _expires(ttl, now))
            return existing

    async def get_tasks(self, task_ids: Sequence[str]) -> list[bytes | None]:
        space = self._space
        now = time.time()
        with space.lock:
            return [space.record("task", task_id, now) for task_id in task_ids]

    async def delete_task(self, task_id: str) -> None:
        space = self._space
        with space.lock:
            space.records.pop(("task", task_id), None)

    async def revoke(self, task_id: str, ttl: float) -> None:
        space = self._space
        now = time.time()
        with space.lock:
            space.sweep(now)
            space.records[("revoked", task_id)] = (b"", now + ttl)

    async def revoked(self, task_ids: Sequence[str]) -> set[str]:
        space = self._space
        now = time.time()
        with space.lock:
            return {i for i in task_ids if space.record("revoked", i, now) is not None}

    # slots and locks ---------------------------------------------------------
    async def acquire_slot(self, name: str, limit: int, holder: str, lease: float) -> bool:
        space = self._space
        now = time.time()
        with space.lock:
            held = space.holders("slot", name, now)
            if holder not in held and len(held) >= limit:
                return False
            held[holder] = now + lease
            return True

    async def release_slot(self, name: str, holder: str) -> None:
        space = self._space
        with space.lock:
            space.leases[("slot", name)].pop(holder, None)

    async def renew_slots(self, slots: Sequence[tuple[str, str]], lease: float) -> None:
        space = self._space
        now = time.time()
        with space.lock:
            for name, holder in slots:
                held = space.holders("slot", name, now)
                if holder in held:
                    held[holder] = now + lease

    async def slot_count(self, name: str) -> int:
        space = self._space
        with space.lock:
            return len(space.holders("slot", name, time.time()))

    async def acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        space = self._space
        now = time.time()
        with space.lock:
            held = space.holders("lock", name, now)
            if held and holder not in held:
                return False
            held.clear()
            held[holder] = now + ttl
            return True

    async def release_lock(self, name: str, holder: str) -> bool:
        space = self._space
        with space.lock:
            held = space.holders("lock", name, time.time())
            return held.pop(holder, None) is not None

    async def lock_holder(self, name: str) -> str | None:
        space = self._space
        with space.lock:
            held = space.holders("lock", name, time.time())
            return next(iter(held), None)

    # counters ----------------------------------------------------------------
    async def incr(self, key: str, amount: int = 1) -> int:
        space = self._space
        with space.lock:
            value = space.counters[key] = space.counters.get(key, 0) + amount
            return value

    async def get_counters(self, keys: Sequence[str]) -> dict[str, int]:
        space = self._space
        with space.lock:
            return {key: space.counters.get(key, 0) for key in keys}

    async def delete_counters(self, keys: Sequence[str]) -> None:
        space = self._space
        with space.lock:
            for key in keys:
                space.counters.pop(key, None)
