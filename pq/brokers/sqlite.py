"""The ``sqlite://`` broker and data store: the embedded default, one machine, no server.

Every process that opens the same file shares its queues, records and
events.  Calls run on the store's own connection thread (``sqlite_thread``),
never on the event loop.  A blocked fetch sleeps until the earliest of: its
timeout, the next delayed message or lease coming due, a commit by this
process (woken at once), or a commit by another process (heard through
inotify, or ``PRAGMA data_version`` polling, within a few milliseconds).
Events are rows of ``pq_events`` that every subscribed store tails by id;
old rows are pruned.  Task records, locks and counters: ``sqlite_records``.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
import weakref
from collections import deque
from typing import Any, Sequence

from ..exceptions import ImproperlyConfigured
from . import sqlite_schema as sql
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
from .notify import LocalSubscription, Waiters
from .sqlite_records import SqliteRecords
from .sqlite_schema import snapshot, write
from .sqlite_thread import SqliteThread

_PEERS: dict[str, weakref.WeakSet[SqliteStore]] = {}
_PEERS_LOCK = threading.Lock()
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class SqliteStore(SqliteRecords, MessageBroker, DataStore):
    """Broker and data store on one sqlite file in WAL mode.

    Options: ``busy_timeout`` (s, sqlite's own wait for a lock), ``retry_for``
    (s of further retries before a BrokerError), ``poll_interval`` and
    ``poll_max`` (s, how often an idle store looks for other processes'
    commits), ``event_ttl`` (s events are kept), ``cleanup_interval`` (s) and
    ``synchronous`` (``NORMAL``: durable across a process crash; ``FULL``:
    across a power cut too).
    """

    scheme = "sqlite"
    one_machine = True

    def __init__(self, url: str, namespace: str = "pq", **options: Any) -> None:
        super().__init__(url, namespace, **options)
        self.path = sql.database_path(url)
        self.synchronous = str(options.get("synchronous", "NORMAL")).upper()
        if self.synchronous not in _SYNCHRONOUS:
            raise ImproperlyConfigured(
                f"sqlite synchronous must be one of {', '.join(_SYNCHRONOUS)}"
            )
        self.event_ttl = float(options.get("event_ttl", 60.0))
        self._settings = {
            "busy_timeout": float(options.get("busy_timeout", 5.0)),
            "retry_for": float(options.get("retry_for", 60.0)),
            "poll": float(options.get("poll_interval", 0.001)),
            "poll_max": float(options.get("poll_max", 0.008)),
            "cleanup_every": float(options.get("cleanup_interval", 5.0)),
        }
        self._thread: SqliteThread | None = None
        self._waiters = Waiters()
        self._subscriptions: list[LocalSubscription] = []
        self._subs_lock = threading.Lock()
        self._event_cursor = 0
        self._event_marks: deque[tuple[float, int]] = deque()
        self._epoch = 0

    # connection ----------------------------------------------------------------
    async def connect(self) -> None:
        if self._thread is not None:
            return
        self._thread = thread = SqliteThread(
            self.path,
            synchronous=self.synchronous,
            watching=self._watching,
            on_change=self._on_change,
            cleanup=self._cleanup,
            **self._settings,
        )
        try:
            await thread.call(lambda conn: None)
        except BaseException:
            self._thread = None
            await thread.stop()
            raise
        with _PEERS_LOCK:
            _PEERS.setdefault(self.path, weakref.WeakSet()).add(self)

    async def close(self) -> None:
        """Stop subscriptions, wake blocked fetches (they return []), close the connection."""
        self._epoch += 1
        for sub in list(self._subscriptions):
            await sub.close()
        self._waiters.wake_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            with _PEERS_LOCK:
                _PEERS.get(self.path, weakref.WeakSet()).discard(self)
            await thread.stop()

    async def _call(self, fn: Any, *args: Any, then: Any = None) -> Any:
        """Run ``fn(conn, *args)`` on the connection thread, connecting first if need be."""
        if self._thread is None:
            await self.connect()
        assert self._thread is not None
        return await self._thread.call(fn, *args, then=then)

    def _watching(self) -> bool:
        return bool(self._waiters) or bool(self._subscriptions)

    def _on_change(self, conn: sqlite3.Connection) -> None:
        """Another connection committed: wake blocked fetches, hand new events to subscribers."""
        self._waiters.wake_all()
        self._read_events(conn)

    def _read_events(self, conn: sqlite3.Connection) -> None:
        if not self._subscriptions:
            return
        rows = conn.execute(
            sql.NEW_EVENTS, (self.namespace, self._event_cursor, self.namespace)
        ).fetchall()
        if not rows:
            return
        self._event_cursor = rows[-1][0]
        with self._subs_lock:
            subscriptions = list(self._subscriptions)
        for sub in subscriptions:
            sub.feed(
                [
                    (ch, ev, payload)
                    for id, mine, ch, ev, payload in rows
                    if mine and id > sub.start_id
                ]
            )

    def _queued(self, conn: sqlite3.Connection) -> None:
        """This store made messages ready: wake its fetches and those of this process's stores."""
        self._waiters.wake_all()
        self._nudge_peers()

    def _published(self, conn: sqlite3.Connection) -> None:
        """This store published: hand the event to its subscribers, tell this process's stores."""
        self._read_events(conn)
        self._nudge_peers()

    def _nudge_peers(self) -> None:
        """Other processes hear a commit through the file; stores of this process now."""
        with _PEERS_LOCK:
            peers = [peer for peer in _PEERS.get(self.path, ()) if peer is not self]
        for peer in peers:
            if peer._thread is not None:
                peer._thread.nudge()

    async def cleanup(self) -> None:
        """Remove expired records and leases and old events now (also every cleanup_interval)."""
        await self._call(self._cleanup)

    def _cleanup(self, conn: sqlite3.Connection) -> None:
        now = time.time()
        self._event_marks.append((now, conn.execute(sql.LAST_EVENT).fetchone()[0]))
        cut = 0
        while self._event_marks and self._event_marks[0][0] <= now - self.event_ttl:
            cut = self._event_marks.popleft()[1]
        with write(conn):
            conn.execute(sql.PRUNE_RECORDS, (now,))
            conn.execute(sql.PRUNE_LEASES, (now,))
            if cut:
                conn.execute(sql.PRUNE_EVENTS, (cut,))

    async def drop(self) -> None:
        await self._call(self._drop)

    def _drop(self, conn: sqlite3.Connection) -> None:
        with write(conn):
            for table in sql.TABLES:
                conn.execute(f"DELETE FROM {table} WHERE namespace = ?", (self.namespace,))

    # queues --------------------------------------------------------------------
    async def enqueue(self, envelopes: Sequence[Envelope]) -> None:
        if envelopes:
            await self._call(self._enqueue, envelopes, then=self._queued)

    def _enqueue(self, conn: sqlite3.Connection, envelopes: Sequence[Envelope]) -> None:
        now, ns = time.time(), self.namespace
        rows = [
            (ns, e.queue, e.id, e.body, now if e.eta is None else max(now, e.eta))
            for e in envelopes
        ]
        self._many(conn, sql.INSERT_MESSAGE, rows)

    async def fetch(
        self, queues: Sequence[str], count: int, timeout: float, lease: float, consumer: str
    ) -> list[Delivery]:
        deadline = time.monotonic() + max(timeout, 0.0)
        epoch = self._epoch
        names = list(dict.fromkeys(queues))
        while count > 0 and names and epoch == self._epoch:
            waiter = self._waiters.arm()
            try:
                found, next_at = await self._call(self._claim, names, count, lease, consumer)
            except BaseException:
                self._waiters.disarm(waiter)
                raise
            wait = deadline - time.monotonic()
            if found or wait <= 0:
                self._waiters.disarm(waiter)
                return found
            if next_at is not None:
                wait = min(wait, next_at - time.time())
            await self._waiters.wait(waiter, wait)
        return []

    def _next_ready(self, conn: sqlite3.Connection, queues: list[str]) -> float | None:
        heads = [conn.execute(sql.NEXT_READY, (self.namespace, q)).fetchone()[0] for q in queues]
        return min((at for at in heads if at is not None), default=None)

    def _claim(
        self, conn: sqlite3.Connection, queues: list[str], count: int, lease: float, consumer: str
    ) -> tuple[list[Delivery], float | None]:
        """Lease up to ``count`` ready messages, first queue first; else when the next one is due.

        A read-only look comes first, so idle consumers never take the write lock.
        """
        next_at = self._next_ready(conn, queues)
        if next_at is None or next_at > time.time():
            return [], next_at
        token = random.getrandbits(62)
        found: list[Delivery] = []
        with write(conn):
            now = time.time()
            until = now + max(lease, 0.001)
            for queue in queues:
                rows = conn.execute(
                    sql.SELECT_READY, (self.namespace, queue, now, count - len(found))
                ).fetchall()
                if rows:
                    conn.executemany(sql.CLAIM, [(token, consumer, until, row[0]) for row in rows])
                    found.extend(
                        Delivery(id, queue, body, n + 1, (seq, token)) for seq, id, body, n in rows
                    )
                    if len(found) >= count:
                        break
        return found, (None if found else self._next_ready(conn, queues))

    async def renew(self, deliveries: Sequence[Delivery], lease: float) -> None:
        if deliveries:
            await self._call(
                self._many, sql.RENEW, [(time.time() + lease, *d.token) for d in deliveries]
            )

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            await self._call(self._many, sql.ACK, [d.token for d in deliveries])

    async def requeue(
        self, delivery: Delivery, body: bytes | None = None, delay: float = 0.0
    ) -> None:
        args = (body, time.time() + max(delay, 0.0), *delivery.token)
        await self._call(self._one, sql.REQUEUE, args, then=self._queued)

    async def dead_letter(self, delivery: Delivery, reason: str, body: bytes | None = None) -> None:
        await self._call(self._dead_letter, delivery, reason, body)

    def _dead_letter(
        self, conn: sqlite3.Connection, delivery: Delivery, reason: str, body: bytes | None
    ) -> None:
        with write(conn):
            rows = conn.execute(sql.TAKE, delivery.token).fetchall()
            for id, queue, old_body in rows:
                dead = (
                    self.namespace,
                    id,
                    queue,
                    old_body if body is None else body,
                    reason,
                    time.time(),
                )
                conn.execute(sql.INSERT_DEAD, dead)

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return await self._call(self._dead_letters, queue, limit)

    def _dead_letters(
        self, conn: sqlite3.Connection, queue: str | None, limit: int
    ) -> list[DeadLetter]:
        where, args = ("AND queue = ?", (queue,)) if queue is not None else ("", ())
        rows = conn.execute(
            f"SELECT id, queue, body, reason, time FROM pq_dead WHERE namespace = ? {where} "
            "ORDER BY time, id LIMIT ?",
            (self.namespace, *args, limit),
        ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def _select_dead(self, ids: Sequence[str] | None) -> tuple[str, tuple]:
        if ids is None:
            return "namespace = ?", (self.namespace,)
        ids = list(dict.fromkeys(ids))
        return f"namespace = ? AND id IN ({', '.join('?' * len(ids))})", (self.namespace, *ids)

    async def retry_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        if ids is not None and not ids:
            return 0
        return await self._call(self._retry_dead, ids, then=self._queued)

    def _retry_dead(self, conn: sqlite3.Connection, ids: Sequence[str] | None) -> int:
        where, args = self._select_dead(ids)
        with write(conn):
            rows = conn.execute(
                f"SELECT id, queue, body FROM pq_dead WHERE {where} ORDER BY time", args
            ).fetchall()
            now = time.time()
            conn.executemany(
                sql.INSERT_MESSAGE, [(self.namespace, q, id, body, now) for id, q, body in rows]
            )
            conn.execute(f"DELETE FROM pq_dead WHERE {where}", args)
        return len(rows)

    async def purge_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        if ids is not None and not ids:
            return 0
        where, args = self._select_dead(ids)
        return await self._call(self._one, f"DELETE FROM pq_dead WHERE {where}", args)

    async def purge(self, queue: str) -> int:
        return await self._call(self._one, sql.PURGE, (self.namespace, queue, time.time()))

    async def sizes(self, queues: Sequence[str]) -> dict[str, QueueSize]:
        return await self._call(self._sizes, list(queues))

    def _sizes(self, conn: sqlite3.Connection, queues: list[str]) -> dict[str, QueueSize]:
        now, ns = time.time(), self.namespace
        result = {}
        with snapshot(conn):
            for queue in queues:
                ready = conn.execute(sql.COUNT_READY, (ns, queue, now)).fetchone()[0]
                delayed, inflight = conn.execute(sql.COUNT_LATER, (ns, queue, now)).fetchone()
                result[queue] = QueueSize(ready, delayed, inflight)
            for queue, dead in conn.execute(sql.COUNT_DEAD, (ns,)):
                if queue in result:
                    result[queue].dead = dead
        return result

    async def recover(self) -> int:
        return await self._call(self._one, sql.RECOVER, (self.namespace, time.time()))

    # events --------------------------------------------------------------------
    async def publish(self, channel: str, event: str, payload: bytes) -> None:
        await self._call(
            self._one,
            sql.INSERT_EVENT,
            (self.namespace, channel, event, payload),
            then=self._published,
        )

    async def subscribe(self, handler: EventHandler, channels: Sequence[str] | None = None) -> Subscription:
        sub = LocalSubscription(only_channels(handler, channels), self._unsubscribe)
        try:
            await self._call(self._add_subscription, sub)
        except BaseException:
            await sub.close()
            raise
        return sub

    def _add_subscription(self, conn: sqlite3.Connection, sub: LocalSubscription) -> None:
        sub.start_id = conn.execute(sql.LAST_EVENT).fetchone()[0]
        with self._subs_lock:
            if not self._subscriptions:
                self._event_cursor = sub.start_id
            if sub not in self._subscriptions:
                self._subscriptions.append(sub)

    def _unsubscribe(self, sub: LocalSubscription) -> None:
        with self._subs_lock:
            if sub in self._subscriptions:
                self._subscriptions.remove(sub)
