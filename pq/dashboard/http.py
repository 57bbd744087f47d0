"""A tiny HTTP/1.1 server on asyncio streams, enough for the dashboard's GET requests.

It runs on the monitor actor's loop, so it must never let one client hurt the
actor: every read is bounded in size and time, connections are capped, a
malformed request gets a 4xx reply and the connection closed, and a failing
handler gets a 500 without a traceback on the wire. Keep-alive is supported
because the page polls every second.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger("pq.dashboard")

MAX_HEAD = 16 * 1024  # request line and headers
MAX_BODY = 64 * 1024  # a GET has none; a small one is read and ignored
MAX_CONNECTIONS = 64
READ_TIMEOUT = 10.0  # seconds to send a whole request head
IDLE_TIMEOUT = 30.0  # seconds a kept-alive connection may wait for its next request
LINGER = 1.0  # seconds to drain a refused request before closing
METHODS = ("GET", "HEAD")
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'",
}


class BadRequest(Exception):
    """The client sent something that is not a request we serve; carries the status to reply."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    version: str
    headers: dict[str, str]

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default


@dataclass
class Response:
    status: HTTPStatus = HTTPStatus.OK
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: HTTPStatus = HTTPStatus.OK) -> Response:
        body = json.dumps(data, default=str, separators=(",", ":")).encode()
        return cls(status, body, "application/json")

    @classmethod
    def text(cls, text: str, status: HTTPStatus = HTTPStatus.OK,
             content_type: str = "text/plain; charset=utf-8") -> Response:
        return cls(status, text.encode(), content_type)

    @classmethod
    def error(cls, status: HTTPStatus, message: str | None = None) -> Response:
        return cls.json({"error": message or status.phrase, "status": status.value}, status)

    def encode(self, keep_alive: bool, head_only: bool) -> bytes:
        headers = {
            "Content-Type": self.content_type,
            "Content-Length": str(len(self.body)),
            "Connection": "keep-alive" if keep_alive else "close",
            **SECURITY_HEADERS,
            **self.headers,
        }
        lines = [f"HTTP/1.1 {self.status.value} {self.status.phrase}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


Handler = Callable[[Request], Awaitable[Response]]


def parse_head(head: bytes) -> Request:
    """The request line and headers; BadRequest for anything malformed."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "request head is not text") from None
    request_line, *header_lines = text.rstrip("\r\n").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"{version} is not supported")
    if not target.startswith("/"):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "the request target must be a path")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(HTTPStatus.BAD_REQUEST, "malformed header line")
        headers[name.lower()] = value.strip()
    url = urlsplit(target)
    return Request(method, unquote(url.path), parse_qs(url.query), version, headers)


class HttpServer:
    """Serve ``handler`` on ``host:port``; ``port`` 0 picks a free one (see ``port`` once started)."""

    def __init__(self, handler: Handler, host: str, port: int) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if len(self._connections) > MAX_CONNECTIONS:
                writer.write(Response.error(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections")
                             .encode(keep_alive=False, head_only=False))
                await writer.drain()
                return
            await self._requests(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        timeout = READ_TIMEOUT
        while True:
            try:
                request = await asyncio.wait_for(self._read(reader), timeout)
            except BadRequest as exc:
                writer.write(Response.error(exc.status, str(exc)).encode(keep_alive=False, head_only=False))
                await writer.drain()
                await self._discard(reader)
                return
            if request is None:
                return
            response = await self._respond(request)
            writer.write(response.encode(request.keep_alive, request.method == "HEAD"))
            await writer.drain()
            if not request.keep_alive:
                return
            timeout = IDLE_TIMEOUT

    @staticmethod
    async def _discard(reader: asyncio.StreamReader) -> None:
        """Read what the client is still sending, briefly, so closing does not reset the connection
        before it reads the error reply."""
        left = MAX_BODY
        try:
            while left > 0:
                chunk = await asyncio.wait_for(reader.read(left), LINGER)
                if not chunk:
                    return
                left -= len(chunk)
        except (asyncio.TimeoutError, ConnectionError):
            return

    async def _read(self, reader: asyncio.StreamReader) -> Request | None:
        """The next request, None when the client closed the connection between requests."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise BadRequest(HTTPStatus.BAD_REQUEST, "incomplete request") from None
            return None
        except asyncio.LimitOverrunError:
            raise BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large") from None
        request = parse_head(head)
        if "transfer-encoding" in request.headers:
            raise BadRequest(HTTPStatus.NOT_IMPLEMENTED, "request bodies are not accepted")
        try:
            length = int(request.headers.get("content-length", "0"))
        except ValueError:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
        if length < 0 or length > MAX_BODY:
            raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        if length:
            await reader.readexactly(length)
        return request

    async def _respond(self, request: Request) -> Response:
        if request.method not in METHODS:
            response = Response.error(HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method} is not allowed")
            response.headers["Allow"] = ", ".join(METHODS)
            return response
        try:
            return await self.handler(request)
        except Exception:
            logger.exception("dashboard: %s %s failed", request.method, request.path)
            return Response.error(HTTPStatus.INTERNAL_SERVER_ERROR,
                                  "the dashboard failed to answer; see the server log")
