"""The mailbox: length-prefixed msgpack frames between the arbiter and its actors.

Every connection (the socketpair of each child, a client of the arbiter's
control socket) carries frames of a 4-byte big-endian length followed by a
msgpack map:

* a request ``{id, src, dst, cmd, args, kw}``; ``id`` is ``None`` for a
  fire-and-forget message (``tell``), which gets no reply;
* a reply ``{id, result}`` or ``{id, error}``, where ``error`` is
  ``{type, message}`` and is raised on the asking side as
  :class:`~pq.exceptions.ActorNotFound` or :class:`~pq.exceptions.MailboxError`.

Actor names, which ``dst`` may hold:

* ``arbiter``: the main process;
* ``monitor`` and ``scheduler``: the two single actors;
* ``consumer-1``, ``consumer-2``, ...: one per consumer slot, numbered from 1;
  the smallest free number is reused when a consumer is added;
* a kind (``consumer``) instead of a name: any live actor of that kind.

A name belongs to a slot, not to a process: a restarted or replaced actor keeps
its name under a new pid. Each process shows as ``<app name>-<actor name>``
(``pq-consumer-2``, ``pq-arbiter``) in ``ps`` and psutil. Children talk only to
the arbiter, which routes a frame whose ``dst`` is another actor and sends the
reply back to the asker.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from typing import Any, Callable

import msgpack

from ..exceptions import ActorNotFound, MailboxError

logger = logging.getLogger("pq.actors")

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
DEFAULT_TIMEOUT = 5.0

RequestHandler = Callable[["Mailbox", dict], None]


def encode(frame: dict) -> bytes:
    """One frame on the wire: length prefix and msgpack body."""
    body = msgpack.packb(frame, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise MailboxError(f"message of {len(body)} bytes is larger than the mailbox limit of {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def error_payload(exc: BaseException) -> dict:
    """The ``error`` of a reply: the exception class name and its message."""
    return {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__}


def error_from_payload(error: Any) -> MailboxError:
    """The exception raised on the asking side for an ``error`` reply."""
    if isinstance(error, dict):
        kind, message = error.get("type"), str(error.get("message"))
    else:
        kind, message = None, str(error)
    return ActorNotFound(message) if kind == "ActorNotFound" else MailboxError(message)


class Mailbox(asyncio.Protocol):
    """One end of a mailbox connection: frames in, requests out, replies matched by id.

    ``on_request(mailbox, frame)`` is called for each well-formed request;
    ``on_close(mailbox)`` once, when the connection is lost.
    """

    def __init__(
        self,
        name: str,
        on_request: RequestHandler,
        on_close: Callable[[Mailbox], None] | None = None,
    ) -> None:
        self.name = name
        self.on_request = on_request
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._backlog: list[bytes] = []
        self._closing = False
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)

    # protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        backlog, self._backlog = self._backlog, []
        for data in backlog:
            self.transport.write(data)
        if self._closing:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, start)
            if size > MAX_FRAME:
                logger.error("%s: frame of %d bytes is over the limit; closing the mailbox", self.name, size)
                self.close()
                return
            end = start + HEADER.size + size
            if len(buffer) < end:
                break
            body = bytes(buffer[start + HEADER.size:end])
            start = end
            self._frame_received(body)
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        error = MailboxError(f"mailbox {self.name} closed before the reply arrived")
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(None)
        if self.on_close is not None:
            self.on_close(self)

    # frames in

    def _frame_received(self, body: bytes) -> None:
        try:
            frame = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:
            logger.warning("%s: dropped a frame that is not msgpack: %s", self.name, exc)
            return
        if not isinstance(frame, dict):
            logger.warning("%s: dropped a frame that is not a map: %r", self.name, frame)
        elif "cmd" in frame:
            self._request_received(frame)
        elif "id" in frame:
            self._reply_received(frame)
        else:
            logger.warning("%s: dropped a frame with neither cmd nor id: %r", self.name, frame)

    def _request_received(self, frame: dict) -> None:
        frame.setdefault("args", [])
        frame.setdefault("kw", {})
        problem = None
        if not isinstance(frame["cmd"], str):
            problem = "cmd must be a string"
        elif not isinstance(frame["args"], list):
            problem = "args must be a list"
        elif not isinstance(frame["kw"], dict) or not all(isinstance(k, str) for k in frame["kw"]):
            problem = "kw must be a map with string keys"
        elif not isinstance(frame.get("dst"), str):
            problem = "dst must be an actor name"
        if problem is None:
            self.on_request(self, frame)
        elif frame.get("id") is not None:
            self.reply_error(frame["id"], MailboxError(f"bad request: {problem}"))
        else:
            logger.warning("%s: dropped a bad message: %s", self.name, problem)

    def _reply_received(self, frame: dict) -> None:
        future = self._pending.pop(frame["id"], None) if isinstance(frame["id"], int) else None
        if future is None or future.done():
            logger.debug("%s: reply to %r arrived after its request gave up", self.name, frame["id"])
        elif "error" in frame:
            future.set_exception(error_from_payload(frame["error"]))
        else:
            future.set_result(frame.get("result"))

    # frames out

    @property
    def is_open(self) -> bool:
        """True until closed; frames written before the connection is made wait for it."""
        if self._closing or self.closed.done():
            return False
        return self.transport is None or not self.transport.is_closing()

    @property
    def fileno(self) -> int | None:
        """The socket's file descriptor, for a forked child to close."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        return sock.fileno() if sock is not None else None

    def write(self, frame: dict) -> None:
        """Send one frame; raise MailboxError when closed or not encodable."""
        if not self.is_open:
            raise MailboxError(f"mailbox {self.name} is closed")
        try:
            data = encode(frame)
        except (TypeError, ValueError, OverflowError) as exc:
            raise MailboxError(f"cannot encode message for the mailbox: {exc}") from None
        if self.transport is None:
            self._backlog.append(data)
        else:
            self.transport.write(data)

    def request_future(self, dst: str, cmd: str, args: list | tuple = (), kw: dict | None = None,
                       *, src: str = "") -> asyncio.Future:
        """Send a request; the future holds its reply (or error) when it arrives."""
        return self._request(dst, cmd, args, kw, src)[1]

    async def request(self, dst: str, cmd: str, args: list | tuple = (), kw: dict | None = None,
                      *, src: str = "", timeout: float | None = DEFAULT_TIMEOUT) -> Any:
        """Send a request and wait for its reply, at most ``timeout`` seconds."""
        request_id, future = self._request(dst, cmd, args, kw, src)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise MailboxError(f"no reply from {dst} to {cmd!r} within {timeout} s") from None
        finally:
            self._pending.pop(request_id, None)

    def _request(self, dst: str, cmd: str, args: list | tuple, kw: dict | None,
                 src: str) -> tuple[int, asyncio.Future]:
        request_id = next(self._ids)
        self.write({"id": request_id, "src": src, "dst": dst, "cmd": cmd, "args": list(args), "kw": kw or {}})
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        return request_id, future

    def notify(self, dst: str, cmd: str, args: list | tuple = (), kw: dict | None = None,
               *, src: str = "") -> None:
        """Send a message that expects no reply."""
        self.write({"id": None, "src": src, "dst": dst, "cmd": cmd, "args": list(args), "kw": kw or {}})

    def reply(self, request_id: Any, result: Any) -> None:
        """Answer a request; an unencodable result is answered with an error instead."""
        if request_id is None or not self.is_open:
            return
        try:
            self.write({"id": request_id, "result": result})
        except MailboxError as exc:
            self.reply_error(request_id, exc)

    def reply_error(self, request_id: Any, exc: BaseException) -> None:
        """Answer a request with an error."""
        if request_id is not None and self.is_open:
            self.write({"id": request_id, "error": error_payload(exc)})

    def close(self) -> None:
        """Close after the frames already written are flushed."""
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    async def aclose(self) -> None:
        """Close and wait for the connection to be gone."""
        self.close()
        if self.transport is not None:
            await self.closed


class Client:
    """A connection to the arbiter's control socket (``--control PATH``).

    ``await client.send('consumer-1', 'ping')`` reaches any actor through the
    arbiter; used by tests and by the ``pq`` command.
    """

    def __init__(self, mailbox: Mailbox, name: str) -> None:
        self.mailbox = mailbox
        self.name = name

    @classmethod
    async def connect(cls, path: str, name: str = "client") -> Client:
        """Connect to the control socket at ``path``."""
        loop = asyncio.get_running_loop()

        def refuse(mailbox: Mailbox, frame: dict) -> None:
            mailbox.reply_error(frame.get("id"), MailboxError(f"{name} is a client and takes no commands"))

        try:
            _, mailbox = await loop.create_unix_connection(lambda: Mailbox(name, refuse), path)
        except OSError as exc:
            raise MailboxError(f"cannot reach the arbiter's control socket {path!r}: {exc}") from None
        return cls(mailbox, name)

    async def send(self, target: str, cmd: str, *args: Any, timeout: float | None = DEFAULT_TIMEOUT,
                   **kw: Any) -> Any:
        """Run ``cmd`` on actor ``target`` and return its reply."""
        return await self.mailbox.request(target, cmd, args, kw, src=self.name, timeout=timeout)

    def tell(self, target: str, cmd: str, *args: Any, **kw: Any) -> None:
        """Send ``cmd`` to ``target`` without waiting for a reply."""
        self.mailbox.notify(target, cmd, args, kw, src=self.name)

    async def close(self) -> None:
        await self.mailbox.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()
