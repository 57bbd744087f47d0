"""A small pipelined RESP2 client: the commands of the Redis store without redis-py's per-call cost.

redis-py spends, on every command, a pool checkout, an ``asyncio.wait_for``
around the send (a task of its own on Python 3.11) and a ``Timeout`` around
each read: more than the command itself on pq's hot path.  Here the
commands of a process share one connection: what callers send in one loop
iteration leaves in one write, and hiredis parses the replies, which come
back in order to their callers.  A connection that dies fails its pending
calls, and ``RespClient.exchange`` sends them again on a new one with backoff
(the store's commands and scripts are safe to repeat).  A blocking command
gets a connection of its own.  Pub/sub stays on redis-py (redis_events.py).
"""
from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from typing import Any, Sequence

import hiredis
from redis.asyncio.connection import parse_url
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import AuthenticationError, ConnectionError, NoScriptError, ResponseError, TimeoutError

from .redis_events import BACKOFF_CAP, BACKOFF_START, Outage

Command = Sequence[Any]
LOST = (ConnectionError, TimeoutError, OSError)
"""What a lost or unreachable server raises; anything else is the server's answer."""


def checked(replies: list[Any]) -> list[Any]:
    """``replies`` when none is an error reply; else the first error, raised."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def pack(commands: Sequence[Command]) -> bytes:
    """``commands`` in the RESP2 request format, ready for one write (hiredis packs in C what
    it takes: str, bytes, int and float arguments; the rest is packed here)."""
    parts = []
    for command in commands:
        try:
            parts.append(_pack_command(command if type(command) is tuple else tuple(command)))
        except TypeError:
            parts.append(_pack_one(command))
    return b"".join(parts)


_pack_command = hiredis.pack_command


def _pack_one(command: Command) -> bytes:
    """One command whose arguments hiredis does not take as they are (bytearray, int subclasses)."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        kind = type(arg)
        if kind is bytes:
            pass
        elif kind is str:
            arg = arg.encode()
        elif kind is int:
            arg = b"%d" % arg
        elif kind is float:
            arg = repr(arg).encode()
        elif isinstance(arg, (bytes, bytearray, memoryview)):
            arg = bytes(arg)
        elif isinstance(arg, int) and not isinstance(arg, bool):
            arg = b"%d" % arg
        else:
            raise TypeError(f"cannot send {type(arg).__name__} {arg!r} to Redis; use bytes, str, int or float")
        parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)


class RespConnection(asyncio.Protocol):
    """One connection: sends command lists, hands each its replies (errors as values).

    A reply later than ``timeout`` seconds (plus the time a blocking command
    may wait) means the server is gone: the connection is aborted and its
    callers see ``TimeoutError``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        self.loop = loop
        self.timeout = timeout
        self.id: int | None = None  # CLIENT ID, for CLIENT UNBLOCK
        self.lost: Exception | None = None
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._waiting: collections.deque[list[Any]] = collections.deque()  # [future, replies, count, deadline]
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while waiting:
            reply = self._reader.gets()
            if reply is False:
                return
            if type(reply) is ResponseError and str(reply).startswith("NOSCRIPT"):
                reply = NoScriptError(str(reply))
            entry = waiting[0]
            entry[1].append(reply)
            if len(entry[1]) == entry[2]:
                waiting.popleft()
                if not entry[0].done():  # a caller that gave up: its replies are dropped, in order
                    entry[0].set_result(entry[1])

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = ConnectionError(f"connection to Redis lost: {exc}" if exc else "Redis closed the connection")
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiting, self._waiting = self._waiting, collections.deque()
        for entry in waiting:
            if not entry[0].done():
                entry[0].set_exception(self.lost)

    def send(self, commands: Sequence[Command], wait: float = 0.0) -> "asyncio.Future[list[Any]]":
        """The future of the replies to ``commands``; ``wait`` is how long a blocking one may take."""
        if self.lost is not None:
            raise self.lost
        future = self.loop.create_future()
        deadline = None if self.timeout is None else self.loop.time() + wait + self.timeout
        self._waiting.append([future, [], len(commands), deadline])
        if not self._out:
            self.loop.call_soon(self._flush)
        self._out.append(pack(commands))
        if self._watchdog is None and deadline is not None:
            self._watchdog = self.loop.call_at(deadline, self._watch)
        return future

    def abort(self, exc: Exception) -> None:
        """Drop the connection; pending callers see ``exc``."""
        if self.lost is None:
            self.lost = exc
        if self._transport is not None:
            self._transport.abort()
        self.connection_lost(None)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.lost is None and self._transport is not None:
            self._transport.write(b"".join(out))

    def _watch(self) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        deadline = self._waiting[0][3]
        if self.loop.time() >= deadline:
            self.abort(TimeoutError(f"Redis sent no reply within {self.timeout:g} s"))
        else:
            self._watchdog = self.loop.call_at(deadline, self._watch)


class RespClient:
    """The connections of one store to the server of ``url``.

    ``options`` are the store's (redis-py's names): ``socket_timeout``,
    ``socket_connect_timeout``, ``socket_keepalive``, ``ssl_*``; ``retries``
    is how many times a call is sent again after a lost connection.
    """

    def __init__(self, url: str, options: dict[str, Any], outage: Outage, retries: int) -> None:
        settings = {**options, **parse_url(url)}  # the URL's query wins, as in redis-py's from_url
        self.path: str | None = settings.get("path")
        self.host: str = settings.get("host", "localhost")
        self.port = int(settings.get("port", 6379))
        self.db = int(settings.get("db", 0) or 0)
        self.username: str | None = settings.get("username")
        self.password: str | None = settings.get("password")
        self.timeout: float | None = settings.get("socket_timeout")
        self.connect_timeout: float | None = settings.get("socket_connect_timeout")
        self.keepalive = bool(settings.get("socket_keepalive"))
        self.ssl = _ssl_context(settings) if url.lower().startswith("rediss:") else None
        self.outage = outage
        self.retries = retries
        self._backoff = ExponentialWithJitterBackoff(BACKOFF_START, BACKOFF_CAP)
        self._shared: RespConnection | None = None
        self._opening: asyncio.Future[RespConnection] | None = None
        self._idle: list[RespConnection] = []  # dedicated connections between blocking calls
        self._dedicated: set[RespConnection] = set()

    async def exchange(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` in one write on the shared connection; their replies, errors as values.

        A lost connection is replaced and the commands sent again, up to
        ``retries`` times with backoff; failures after the first are noted
        on the outage (the first may be a connection that died while idle).
        """
        if not commands:
            return []
        failures = 0
        while True:
            try:
                connection = self._shared
                if connection is None or connection.lost is not None or connection.loop is not asyncio.get_running_loop():
                    connection = await self._shared_connection()
                return await connection.send(commands)
            except AuthenticationError:
                raise
            except LOST as exc:
                failures += 1
                if failures > self.retries:
                    raise _lost(exc) from exc
                if failures > 1:
                    self.outage.failed(exc)
                await asyncio.sleep(self._backoff.compute(failures))

    async def _shared_connection(self) -> RespConnection:
        """One connect for every caller waiting for the shared connection."""
        loop = asyncio.get_running_loop()
        if self._opening is None or self._opening.get_loop() is not loop:
            self._opening = asyncio.ensure_future(self.connect())
        opening = self._opening
        try:
            connection = await asyncio.shield(opening)
        finally:
            if self._opening is opening and opening.done():
                self._opening = None
        self._shared = connection
        return connection

    async def connect(self) -> RespConnection:
        """A new connection, authenticated, on the URL's database, its CLIENT ID known."""
        loop = asyncio.get_running_loop()

        def protocol() -> RespConnection:
            return RespConnection(loop, self.timeout)

        try:
            if self.path:
                opening = loop.create_unix_connection(protocol, self.path)
            else:
                opening = loop.create_connection(protocol, self.host, self.port, ssl=self.ssl)
            _, connection = await asyncio.wait_for(opening, self.connect_timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no connection to Redis within {self.connect_timeout:g} s") from None
        if self.keepalive and not self.path:
            sock = connection._transport.get_extra_info("socket") if connection._transport else None
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        handshake: list[Command] = []
        if self.password is not None:
            handshake.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            handshake.append(("SELECT", self.db))
        handshake.append(("CLIENT", "ID"))
        try:
            replies = await connection.send(handshake)
        except BaseException:
            connection.abort(ConnectionError("handshake failed"))
            raise
        for command, reply in zip(handshake, replies):
            if isinstance(reply, Exception):
                connection.abort(ConnectionError("handshake refused"))
                if command[0] == "AUTH" or str(reply).startswith(("NOAUTH", "WRONGPASS")):
                    raise AuthenticationError(str(reply))
                raise reply
        connection.id = replies[-1]
        return connection

    async def blocking(self, commands: Sequence[Command], seconds: float) -> list[Any]:
        """Send ``commands``, the first a blocking one, on a connection of their own; after
        ``seconds`` the block is ended (``CLIENT UNBLOCK``: Redis times blocks out only on its
        100 ms tick) and the rest still run.  Not retried: the caller decides."""
        connection = await self._dedicated_connection()
        replies = connection.send(commands, wait=seconds + 1)
        try:
            done, _ = await asyncio.wait({replies}, timeout=seconds)
            if not done:
                await self._unblock(connection)
            return await replies
        finally:
            if replies.done() and connection.lost is None:
                self._idle.append(connection)
            else:
                replies.cancel()  # first: an abandoned call's error is nobody's to retrieve
                connection.abort(ConnectionError("blocking call abandoned"))
                self._dedicated.discard(connection)

    async def _dedicated_connection(self) -> RespConnection:
        loop = asyncio.get_running_loop()
        while self._idle:
            connection = self._idle.pop()
            if connection.lost is None and connection.loop is loop:
                return connection
            self._dedicated.discard(connection)
        connection = await self.connect()
        self._dedicated.add(connection)
        return connection

    async def _unblock(self, connection: RespConnection) -> None:
        """End a block early; a user without the right to ``CLIENT UNBLOCK`` loses the
        connection instead (a reconnect, nothing else)."""
        try:
            (reply,) = await self.exchange([("CLIENT", "UNBLOCK", connection.id)])
        except LOST as exc:
            connection.abort(_lost(exc))
            return
        if isinstance(reply, Exception):
            connection.abort(ConnectionError(f"cannot unblock: {reply}"))

    def close(self) -> None:
        """Drop every connection; pending callers see ``ConnectionError``."""
        closed = ConnectionError("the Redis store was closed")
        for connection in [self._shared, *self._dedicated]:
            if connection is not None:
                connection.abort(closed)
        self._shared, self._idle, self._opening = None, [], None
        self._dedicated.clear()


def _lost(exc: BaseException) -> Exception:
    """``exc`` as the redis-py error callers expect of an unreachable server."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return exc
    return ConnectionError(f"cannot reach Redis: {exc}")


def _ssl_context(settings: dict[str, Any]) -> ssl.SSLContext:
    """TLS as redis-py's ``ssl_*`` options describe it."""
    context = ssl.create_default_context(cafile=settings.get("ssl_ca_certs"))
    if settings.get("ssl_certfile"):
        context.load_cert_chain(settings["ssl_certfile"], settings.get("ssl_keyfile"))
    reqs = settings.get("ssl_cert_reqs", "required")
    verify = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    mode = verify.get(reqs, reqs) if isinstance(reqs, str) else reqs
    context.check_hostname = bool(settings.get("ssl_check_hostname", mode != ssl.CERT_NONE)) and mode != ssl.CERT_NONE
    context.verify_mode = mode
    return context
