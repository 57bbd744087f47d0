"""What every broker and data store provides.

Two roles, as in pulsar-queue: the **message broker** holds the task queues,
the **data store** holds events, task records (results), locks and leased
counters.  One class may play both (sqlite, memory, redis); amqp is a broker
only.  The interface is shaped by the real brokers, not by memory:

* a message taken is *leased*, not removed: it is removed by ``ack`` and goes
  back to its queue when its lease expires without ``renew`` (a dead consumer);
* delayed messages wait in the broker, never in a worker's memory;
* ``fetch`` blocks up to a timeout and returns up to ``count`` messages, so a
  consumer fills its free slots in one round trip and never busy-polls;
* brokers never decode message bodies: bytes in, bytes out.  Decoding,
  signatures and the dead-lettering of bad messages are the consumer's job.

Every implementation passes ``tests/brokers`` against the real server.
"""
from __future__ import annotations

import abc
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


@dataclass(slots=True)
class Envelope:
    """A message to put on a queue; ``eta`` (epoch seconds) delays it."""

    id: str
    queue: str
    body: bytes
    eta: float | None = None


@dataclass(slots=True)
class Delivery:
    """A message taken from a queue under a lease.

    ``deliveries`` counts how many times the broker handed this message out
    (1 the first time): a value above 1 means a consumer died holding it.
    ``token`` is the broker's own receipt (lease token, delivery tag).
    """

    id: str
    queue: str
    body: bytes
    deliveries: int = 1
    token: Any = None


@dataclass(slots=True)
class DeadLetter:
    """A message that will not be run again unless retried by hand."""

    id: str
    queue: str
    body: bytes
    reason: str
    time: float = field(default_factory=time.time)


@dataclass(slots=True)
class QueueSize:
    """Counts of one queue: ready to run, delayed, leased (in flight), dead."""

    ready: int = 0
    delayed: int = 0
    inflight: int = 0
    dead: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"ready": self.ready, "delayed": self.delayed, "inflight": self.inflight, "dead": self.dead}


EventHandler = Callable[[str, str, bytes], Any]
"""``handler(channel, event, payload)``; may return an awaitable."""

EventItem = tuple[str, bytes, "float | None", str]
"""A task event to write: task id, encoded task (its record), record TTL (None: kept), event."""


def only_channels(handler: EventHandler, channels: Sequence[str] | None) -> EventHandler:
    """``handler`` called only for events of ``channels`` (all when None), for stores that filter locally."""
    if channels is None:
        return handler
    wanted = frozenset(channels)
    return lambda channel, event, payload: handler(channel, event, payload) if channel in wanted else None


class Subscription(abc.ABC):
    """A live subscription to events; ``close`` stops delivery."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class Connection(abc.ABC):
    """Common to brokers and stores: a URL, a namespace, connect and close."""

    scheme: str = ""
    one_machine: bool = False
    """True when what it holds is reachable from this machine only (a sqlite file, process
    memory): then its events cannot tell other machines, and a broker that carries events
    carries them instead (see ``MessageBroker.carries_events``)."""

    def __init__(self, url: str, namespace: str = "pq", **options: Any) -> None:
        self.url = url
        self.namespace = namespace
        self.options = options
        # The server (node) this connection works for, set by the api: brokers with
        # per-server queues (AMQP broadcast) share them among that node's consumers.
        self.node: str | None = None

    async def connect(self) -> None:
        """Open connections; safe to call twice."""

    async def close(self) -> None:
        """Release connections; safe to call twice."""

    async def drop(self) -> None:
        """Delete everything held under this namespace (queues, dead letters, records...).

        For tests and for resetting a deployment; leaves other namespaces alone.
        The default does nothing: brokers that keep data on a server override it.
        """

    @property
    def safe_url(self) -> str:
        """The URL with any password replaced, for logs and errors."""
        from . import redact_url

        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.safe_url} namespace={self.namespace!r}>"


class MessageBroker(Connection):
    """The task queues."""

    skips_revoked: bool = False
    """True when ``fetch`` drops, with the take itself, the messages revoked in this same
    object's data store: a consumer whose data store is this object then skips its own
    ``revoked`` round trip per batch.  False (the safe default) for brokers that do not."""

    unacked_take_slots: bool = False
    """True when a delivery not yet acked still counts against what the broker hands this
    consumer (RabbitMQ's prefetch): the worker then counts a finished task as running until
    its ack, instead of fetching into slots the broker will not fill before then."""

    carries_events: bool = False
    """True when it also has ``publish``, ``publish_events`` (many of one channel, in order)
    and ``subscribe`` reaching every machine that uses it (RabbitMQ's topic exchange): with a
    ``one_machine`` data store, events go that way, so ``on_events`` and waiting for results
    work across machines with this broker alone."""

    @abc.abstractmethod
    async def enqueue(self, envelopes: Sequence[Envelope]) -> None:
        """Put messages on their queues, in one round trip where the broker allows.

        A message with an ``eta`` in the future waits in the broker until then.
        """

    @abc.abstractmethod
    async def fetch(
        self, queues: Sequence[str], count: int, timeout: float, lease: float, consumer: str
    ) -> list[Delivery]:
        """Take up to ``count`` ready messages from ``queues`` (first queue first).

        Blocks up to ``timeout`` seconds for the first one; returns ``[]`` on
        timeout.  Each message taken is leased to ``consumer`` for ``lease``
        seconds.  Due delayed messages and expired leases become ready here.
        """

    @abc.abstractmethod
    async def renew(self, deliveries: Sequence[Delivery], lease: float) -> None:
        """Extend the leases of messages still being worked on."""

    @abc.abstractmethod
    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove finished messages for good."""

    @abc.abstractmethod
    async def requeue(self, delivery: Delivery, body: bytes | None = None, delay: float = 0.0) -> None:
        """Return a leased message to its queue, with a new body and a delay if given."""

    @abc.abstractmethod
    async def dead_letter(self, delivery: Delivery, reason: str, body: bytes | None = None) -> None:
        """Move a leased message to the dead letters, with the reason why."""

    @abc.abstractmethod
    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first, of one queue or of all."""

    @abc.abstractmethod
    async def retry_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        """Put dead letters (those ids, or all) back on their queues; how many."""

    @abc.abstractmethod
    async def purge_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        """Delete dead letters (those ids, or all); how many."""

    @abc.abstractmethod
    async def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of a queue; how many."""

    @abc.abstractmethod
    async def sizes(self, queues: Sequence[str]) -> dict[str, QueueSize]:
        """Counts of each queue."""

    async def recover(self) -> int:
        """Return expired leases to their queues; how many.

        Brokers that do this inside ``fetch`` (or whose server does it, as
        RabbitMQ) need not override it; the monitor calls it periodically.
        """
        return 0


class DataStore(Connection):
    """Events, task records, revocations, locks and leased counters."""

    # events -------------------------------------------------------------
    @abc.abstractmethod
    async def publish(self, channel: str, event: str, payload: bytes) -> None:
        """Send an event to every subscriber of every process using this store."""

    @abc.abstractmethod
    async def subscribe(self, handler: EventHandler, channels: Sequence[str] | None = None) -> Subscription:
        """Call ``handler(channel, event, payload)`` for every event of ``channels`` (None: of
        every channel) published from now on."""

    async def task_events(
        self, items: Sequence[EventItem], envelopes: Sequence[Envelope] = ()
    ) -> None:
        """For each ``(task_id, body, ttl, event)``: store the record and publish ``task.<event>``;
        then, when this store is also the message broker, enqueue ``envelopes``.

        The hot path of every task state change, and of queueing: records land
        before their messages, so a consumer never finishes a task whose QUEUED
        record is still to be written.  Events keep the order of ``items``.
        This default makes a call per record, per event and for the envelopes;
        stores that can do it all in one round trip override it.
        """
        await asyncio.gather(*(self.set_task(task_id, body, ttl) for task_id, body, ttl, _ in items))
        for _, body, _, event in items:
            await self.publish("task", event, body)
        if envelopes:
            assert isinstance(self, MessageBroker), "envelopes go only to a store that is also the broker"
            await self.enqueue(envelopes)

    # task records --------------------------------------------------------
    @abc.abstractmethod
    async def set_task(self, task_id: str, body: bytes, ttl: float | None = None) -> None:
        """Store a task's record; with ``ttl`` it is removed that many seconds later."""

    @abc.abstractmethod
    async def add_task(self, task_id: str, body: bytes, ttl: float | None = None) -> bytes | None:
        """Store a record only if none exists: None when stored, else the existing record."""

    @abc.abstractmethod
    async def get_tasks(self, task_ids: Sequence[str]) -> list[bytes | None]:
        """Records of these tasks, None where there is none (unknown or expired)."""

    @abc.abstractmethod
    async def delete_task(self, task_id: str) -> None:
        """Remove a task's record."""

    # revocations ---------------------------------------------------------
    @abc.abstractmethod
    async def revoke(self, task_id: str, ttl: float) -> None:
        """Mark a task revoked for ``ttl`` seconds: consumers skip it or cancel it."""

    @abc.abstractmethod
    async def revoked(self, task_ids: Sequence[str]) -> set[str]:
        """Which of these tasks are marked revoked."""

    # leased counters (max_concurrency) -----------------------------------
    @abc.abstractmethod
    async def acquire_slot(self, name: str, limit: int, holder: str, lease: float) -> bool:
        """Take one of ``limit`` slots of counter ``name`` for ``lease`` seconds.

        Slots whose lease expired (a dead holder) are freed first, so a
        consumer that dies cannot leak one.  Taking a slot already held by
        ``holder`` renews it and returns True.
        """

    @abc.abstractmethod
    async def release_slot(self, name: str, holder: str) -> None:
        """Give back a slot."""

    @abc.abstractmethod
    async def renew_slots(self, slots: Sequence[tuple[str, str]], lease: float) -> None:
        """Extend the leases of ``(name, holder)`` slots still in use."""

    @abc.abstractmethod
    async def slot_count(self, name: str) -> int:
        """Slots of counter ``name`` held now (expired ones excluded)."""

    # locks ---------------------------------------------------------------
    @abc.abstractmethod
    async def acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        """Take lock ``name`` for ``ttl`` seconds if free or expired, or if ``holder`` has it (renews)."""

    @abc.abstractmethod
    async def release_lock(self, name: str, holder: str) -> bool:
        """Release a lock held by ``holder``; False if it was not."""

    @abc.abstractmethod
    async def lock_holder(self, name: str) -> str | None:
        """Who holds lock ``name`` now, if anyone."""

    # counters ------------------------------------------------------------
    @abc.abstractmethod
    async def incr(self, key: str, amount: int = 1) -> int:
        """Add to a named counter (stats), returning its new value."""

    @abc.abstractmethod
    async def get_counters(self, keys: Sequence[str]) -> dict[str, int]:
        """Values of named counters, 0 for unknown ones."""

    @abc.abstractmethod
    async def delete_counters(self, keys: Sequence[str]) -> None:
        """Forget named counters (per-minute stats once nobody reads them); unknown ones are fine."""

