"""Redis broker and data store (``redis://``, ``rediss://``, ``unix://``; Redis 6.2+).

Every key of a namespace ``ns`` starts with the hash tag ``{ns}:``, so one
namespace lives in one cluster slot and its Lua scripts are legal on Redis
Cluster; several apps sharing a server never see each other's keys.  The key
layout and the scripts are documented in docs/protocol.md.

Messages taken are leased (a zset of lease expiries per queue); ``fetch``
blocks on per-queue wake lists with ``BLPOP`` for at most the time to the
next delayed message or lease expiry, so nothing is polled.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from typing import Any, Iterator, Sequence, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import AuthenticationError, NoScriptError, RedisError

from ..exceptions import BrokerError, ImproperlyConfigured
from . import redis_scripts as lua
from .base import DeadLetter, Delivery, Envelope, EventItem, MessageBroker, QueueSize
from .redis_events import BACKOFF_CAP, BACKOFF_START, UNREACHABLE, EventHub, NotingRetry, Outage
from .redis_store import RedisDataStore
from .resp import RespClient, checked

logger = logging.getLogger("pq.brokers.redis")

MIN_VERSION = (6, 2)
RETRIES = 8
"""redis-py's own retries of a command (with jittered backoff up to 2 s) before pq sees an error."""
T = TypeVar("T")


MAX_CONNECTIONS = 64


class RedisStore(MessageBroker, RedisDataStore):
    """Message broker and data store on one Redis server (or one cluster slot).

    ``options`` go to ``redis.asyncio.BlockingConnectionPool.from_url`` (``max_connections``, default 64,
    ``socket_timeout``, TLS settings...), except ``retries``: how many times
    redis-py retries a command on a lost connection (default 8).
    """

    scheme = "redis"
    skips_revoked = True  # FETCH removes messages whose {ns}:revoked:<id> exists

    def __init__(self, url: str, namespace: str = "pq", **options: Any) -> None:
        super().__init__(url, namespace, **options)
        if not namespace or "{" in namespace or "}" in namespace:
            raise ImproperlyConfigured(
                f"namespace {namespace!r} cannot be a Redis hash tag; use a name without braces"
            )
        self.prefix = f"{{{namespace}}}:"
        self.channel = self.prefix + "events:"  # + pq channel: one Redis channel each
        self._queues_key = self.prefix + "queues"
        self._client: Redis | None = None
        self._closed = False
        self._drained: dict[tuple[str, ...], float] = {}  # see fetch
        self._outage = Outage(self.safe_url)
        self._events = EventHub(lambda: self.redis, self.channel, self._outage, confirm_timeout=5.0)
        options = dict(self.options)
        self._retries = options.pop("retries", RETRIES)
        self._settings: dict[str, Any] = {
            "socket_connect_timeout": 5, "socket_timeout": 10, "health_check_interval": 15,
            **({} if url.lower().startswith("unix:") else {"socket_keepalive": True}),
            **options,
        }
        self.resp = RespClient(url, self._settings, self._outage, self._retries)
        socket_timeout = self.resp.timeout
        self._max_block = max(0.05, min(30.0, float(socket_timeout) * 0.8)) if socket_timeout else 30.0

    # connection -----------------------------------------------------------
    @property
    def redis(self) -> Redis:
        """The redis-py client, created on first use: pub/sub only, commands go through ``resp``."""
        if self._client is None:
            backoff = ExponentialWithJitterBackoff(BACKOFF_START, BACKOFF_CAP)
            # A bounded pool whose callers wait for a free connection: a burst of
            # concurrent calls queues up instead of failing with "Too many connections".
            settings = {"max_connections": MAX_CONNECTIONS, **self._settings,
                        "retry": NotingRetry(self._outage, backoff, self._retries)}
            self._client = Redis.from_pool(BlockingConnectionPool.from_url(self.url, **settings))
        return self._client

    @contextlib.contextmanager
    def _io(self, what: str) -> Iterator[None]:
        """Around every round trip: redis-py errors become BrokerError, outages are noted once."""
        try:
            yield
        except AuthenticationError as exc:
            self._outage.failed(exc)
            raise BrokerError(
                f"Redis at {self.safe_url} refused pq's credentials ({exc}); check the user name "
                "and password in the URL (redis://user:password@host:port/db)"
            ) from exc
        except UNREACHABLE as exc:
            self._outage.failed(exc)
            raise BrokerError(
                f"Redis at {self.safe_url} is unreachable ({exc}); check that redis-server is "
                "running and reachable, pq keeps retrying"
            ) from exc
        except RedisError as exc:
            raise BrokerError(f"Redis at {self.safe_url} refused {what}: {exc}") from exc
        self._outage.ok()

    async def connect(self) -> None:
        self._closed = False
        with self._io("INFO"):
            info = await self._command("INFO", "server")
        found = re.search(rb"redis_version:(\d+)\.(\d+)", info)
        if found is None or (int(found[1]), int(found[2])) < MIN_VERSION:
            raise ImproperlyConfigured(
                f"Redis at {self.safe_url} is version {found[0][14:].decode() if found else 'unknown'}; "
                "pq needs 6.2 or later"
            )

    async def drop(self) -> None:
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + "*"
        with self._io("drop"):
            cursor: Any = 0
            while True:
                cursor, keys = await self._command("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
                if keys:
                    await self._command("UNLINK", *keys)
                if cursor == b"0":
                    return

    async def close(self) -> None:
        """Also ends fetches blocked in this store: they return []."""
        self._closed = True
        self.resp.close()
        await self._events.close()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    # broker -----------------------------------------------------------------
    async def enqueue(self, envelopes: Sequence[Envelope]) -> None:
        """One script call per 500 messages, all pipelined in one round trip."""
        calls = self._enqueue_calls(envelopes)
        if calls:
            with self._io("enqueue"):
                await lua.ENQUEUE.many(self.resp, [self._queues_key], calls)

    def _enqueue_calls(self, envelopes: Sequence[Envelope]) -> list[list[Any]]:
        calls = []
        for chunk in _chunks(envelopes, lua.BATCH // 2):
            args: list[Any] = [self.prefix]
            for env in chunk:
                eta = "" if env.eta is None else repr(env.eta * 1000)
                args += (env.id, env.queue, eta, env.body)
            calls.append(args)
        return calls

    async def task_events(
        self, items: Sequence[EventItem], envelopes: Sequence[Envelope] = ()
    ) -> None:
        """Records and events, then the messages, in one ordered round trip: a consumer never
        takes a message before its record is written."""
        if not envelopes:
            return await super().task_events(items)
        calls = self._enqueue_calls(envelopes)
        commands = self._event_commands(items)
        commands += [lua.ENQUEUE.command([self._queues_key], args) for args in calls]
        with self._io("enqueue"):
            replies = await self.resp.exchange(commands)
            events, scripts = replies[:-len(calls)], replies[-len(calls):]
            await lua.ENQUEUE.rerun_missing(self.resp, [self._queues_key], calls, scripts)
            checked(events + scripts)

    async def fetch(
        self, queues: Sequence[str], count: int, timeout: float, lease: float, consumer: str
    ) -> list[Delivery]:
        """Claim up to ``count`` in one script call; when none is ready, BLPOP the wake lists.

        The FETCH script goes out with the BLPOP, on its connection: Redis runs it
        as soon as the block ends, so a task queued to an idle consumer costs it one
        round trip, not two.  A consumer whose last fetch left the queues empty
        blocks at once: whatever was queued since left a wake token.  The block
        lasts at most until the next delayed message or lease is due, so those
        become ready without polling.  A lost server is retried with backoff until
        ``timeout``: a consumer never sees it fail.
        """
        if not queues or count <= 0:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        keys, args = [self._queues_key], [self.prefix, count, lua.ms(lease), *queues]
        fetch = lua.FETCH.command(keys, args)
        wake_keys = [f"{self.prefix}wake:{queue}" for queue in queues]
        drained = (consumer, *queues)
        due = self._drained.pop(drained, None)  # when the next delayed message or lease is due
        backoff = BACKOFF_START
        reply: Any = None
        while not self._closed:
            try:
                if due is not None:
                    wait, due = min(deadline, due) - loop.time(), None
                else:
                    if reply is None:
                        reply = await lua.FETCH(self.resp, keys, args)
                    self._outage.ok()
                    backoff = BACKOFF_START
                    now = loop.time()
                    wait = deadline - now
                    taken = (len(reply) - 1) // 5
                    if taken or wait <= 0:
                        if taken < count:
                            self._drained[drained] = now + reply[0] / 1000 if reply[0] >= 0 else math.inf
                        return _deliveries(reply)
                    if reply[0] >= 0:
                        wait = min(wait, reply[0] / 1000)
                if wait <= 0:
                    reply = None
                    continue
                seconds = min(wait, self._max_block)
                block = ("BLPOP", *wake_keys, math.ceil(seconds) + 1)
                _, reply = await self.resp.blocking([block, fetch], seconds)
                if isinstance(reply, NoScriptError):  # the server restarted: FETCH loads it again
                    reply = None
                elif isinstance(reply, Exception):
                    raise reply
            except UNREACHABLE as exc:
                reply = None
                if self._closed:
                    break
                self._outage.failed(exc)
                wait = deadline - loop.time()
                if wait <= 0:
                    return []
                await asyncio.sleep(min(backoff, wait))
                backoff = min(backoff * 2, BACKOFF_CAP)
            except RedisError as exc:
                raise BrokerError(f"Redis at {self.safe_url} refused fetch: {exc}") from exc
        return []

    async def renew(self, deliveries: Sequence[Delivery], lease: float) -> None:
        if deliveries:
            ms = lua.ms(lease)
            calls = [[self.prefix, queue, ms, *pairs] for queue, pairs in _by_queue(deliveries)]
            with self._io("renew"):
                await lua.RENEW.many(self.resp, [self._queues_key], calls)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """One script call per queue and 1000 messages, all in one round trip."""
        if deliveries:
            calls = [[self.prefix, queue, *pairs] for queue, pairs in _by_queue(deliveries)]
            with self._io("ack"):
                await lua.ACK.many(self.resp, [self._queues_key], calls)

    async def requeue(
        self, delivery: Delivery, body: bytes | None = None, delay: float = 0.0
    ) -> None:
        ms = lua.ms(delay) if delay > 0 else 0
        args = [self.prefix, delivery.queue, delivery.id, _token(delivery), ms]
        with self._io("requeue"):
            done = await lua.REQUEUE(self.resp, [self._queues_key], args + _optional(body))
        if not done:
            logger.info("lease of %s was lost before its requeue; it runs again", delivery.id)

    async def dead_letter(self, delivery: Delivery, reason: str, body: bytes | None = None) -> None:
        args = [self.prefix, delivery.queue, delivery.id, _token(delivery), reason]
        with self._io("dead_letter"):
            done = await lua.DEAD_LETTER(self.resp, [self._queues_key], args + _optional(body))
        if not done:
            logger.info("lease of %s was lost before dead-lettering; it runs again", delivery.id)

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        with self._io("dead_letters"):
            args = [self.prefix, limit, queue or ""]
            reply = await lua.DEAD_LETTERS(self.resp, [self._queues_key], args)
        return [
            DeadLetter(
                id=reply[i].decode(), queue=reply[i + 1].decode(), body=reply[i + 2],
                reason=reply[i + 3].decode(errors="replace"), time=float(reply[i + 4]) / 1000,
            )
            for i in range(0, len(reply), 5)
        ]

    async def retry_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        return await self._each_dead(lua.RETRY_DEAD, ids)

    async def purge_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        return await self._each_dead(lua.PURGE_DEAD, ids)

    async def _each_dead(self, script: lua.Script, ids: Sequence[str] | None) -> int:
        keys = [self._queues_key]
        if ids is not None:
            calls = [[self.prefix, "1", *chunk] for chunk in _chunks(list(ids))]
            if not calls:
                return 0
            with self._io("dead letters"):
                return sum(await script.many(self.resp, keys, calls))
        with self._io("dead letters"):
            total = 0
            while True:
                done = await script(self.resp, keys, [self.prefix, "0"])
                total += done
                if done < lua.BATCH:
                    return total

    async def purge(self, queue: str) -> int:
        total = 0
        with self._io("purge"):
            while True:
                done = await lua.PURGE(self.resp, [self._queues_key], [self.prefix, queue])
                total += done
                if done < lua.BATCH:
                    return total

    async def sizes(self, queues: Sequence[str]) -> dict[str, QueueSize]:
        if not queues:
            return {}
        commands: list[tuple[str, str]] = []
        for queue in queues:
            commands.append(("LLEN", f"{self.prefix}ready:{queue}"))
            commands += [("ZCARD", f"{self.prefix}{kind}:{queue}") for kind in ("delayed", "leased", "dead")]
        with self._io("sizes"):
            counts = checked(await self.resp.exchange(commands))
        return {queue: QueueSize(*counts[4 * i:4 * i + 4]) for i, queue in enumerate(queues)}

    async def recover(self) -> int:
        with self._io("recover"):
            return await lua.RECOVER(self.resp, [self._queues_key], [self.prefix])


def _deliveries(reply: list[Any]) -> list[Delivery]:
    return [
        Delivery(id=reply[i].decode(), queue=reply[i + 1].decode(), body=reply[i + 2],
                 deliveries=reply[i + 3], token=reply[i + 4])
        for i in range(1, len(reply), 5)
    ]


def _chunks(items: Sequence[T], size: int = lua.BATCH) -> list[Sequence[T]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _by_queue(deliveries: Sequence[Delivery]) -> list[tuple[str, list[str]]]:
    """(queue, [id, token, id, token...]) per queue and 1000 deliveries, as scripts take them."""
    groups: dict[str, list[str]] = {}
    for d in deliveries:
        groups.setdefault(d.queue, []).extend((d.id, _token(d)))
    return [(queue, pairs[i:i + 2 * lua.BATCH]) for queue, pairs in groups.items()
            for i in range(0, len(pairs), 2 * lua.BATCH)]


def _token(delivery: Delivery) -> str:
    """The lease number as the scripts compare it ('' never matches)."""
    return "" if delivery.token is None else str(delivery.token)


def _optional(body: bytes | None) -> list[bytes]:
    return [] if body is None else [body]
