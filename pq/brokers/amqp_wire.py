"""pq's own AMQP 0-9-1 connection, for the consuming side of the RabbitMQ broker.

aio-pika reads each frame through a stream reader, a lock and a queue handed
from one task to another, and runs a task per delivered message: 45 µs of a
consumer's CPU per delivery, more than the rest of pq spends on a task
(``benchmarks/amqp_reader.py``).  This connection is an ``asyncio.Protocol``
that cuts frames straight out of its receive buffer and hands each complete
delivery to its consumer's callback, in the same loop turn, as ``resp.py``
does for Redis.

It does what a consumer needs and nothing else: the handshake (PLAIN login,
vhost, TLS for ``amqps``), heartbeats, channels, queue and exchange
declarations, qos, consume, cancel, get, ack and reject, and the server
closing a channel, the connection or a consumer.  It never publishes:
enqueueing, confirms, events and administration stay on aio-pika.  It does
not reconnect either: its owner opens a new one (``amqp_consumer``).  Its
channels have the method names and arguments of aiormq's, and raise
aiormq's exception types, so the broker handles a dropped connection or a
refused declaration the same way whichever client it is on.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections import deque
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote, urlsplit

from aiormq import exceptions as errors
from pamqp import commands as spec
from pamqp import decode
from pamqp import frame as amqp_frame

log = logging.getLogger("pq.brokers.amqp")

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT, FRAME_END = 1, 2, 3, 8, 0xCE
HEARTBEAT_FRAME = bytes((FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END))
DELIVER = b"\x00\x3c\x00\x3c"
"""Basic.Deliver's class and method ids, as they open its frame's payload."""
CLOSE, CLOSE_OK = b"\x00\x14\x00\x28", b"\x00\x14\x00\x29"
"""Channel.Close's and Channel.CloseOk's."""
_FRAME = struct.Struct(">BHI")
_HEADER = struct.Struct(">HHQH")
"""A content header's class id, weight, body size and property flags."""
_SETTLE = struct.Struct(">BHIHHQBB")
"""Basic.Ack and Basic.Reject: a frame header, class and method, a delivery tag, one bit, the frame end."""
HEARTBEAT = 60
"""Seconds between heartbeats unless the URL's ``heartbeat`` says otherwise (aio-pika's default)."""
CLOSE_WAIT = 1.0
"""How long closing waits for the server's CloseOk."""
CHANNEL_ERRORS: dict[int, type[errors.ChannelClosed]] = {
    403: errors.ChannelAccessRefused,
    404: errors.ChannelNotFoundEntity,
    405: errors.ChannelLockedResource,
    406: errors.ChannelPreconditionFailed,
}


class Message:
    """A delivered (or got) message: what pq reads of it, and the channel to settle it on.

    ``delivery_tag`` is None for a ``basic_get`` that found the queue empty.
    """

    __slots__ = ("channel", "delivery_tag", "redelivered", "properties", "body", "message_count")

    def __init__(self, channel: Channel, delivery_tag: int | None, redelivered: bool = False,
                 message_count: int | None = None) -> None:
        self.channel = channel
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.properties: Any = None
        self.body = b""
        self.message_count = message_count


class Properties:
    """A message's basic properties, pamqp's names, decoded by hand: RabbitMQ sends them with every
    delivery, and pamqp's general decoder cost a consumer more than the rest of the frame.  Those
    the message does not have are None."""

    FIELDS = (
        "content_type", "content_encoding", "headers", "delivery_mode", "priority", "correlation_id",
        "reply_to", "expiration", "message_id", "timestamp", "message_type", "user_id", "app_id", "cluster_id",
    )
    content_type = content_encoding = headers = delivery_mode = priority = correlation_id = None
    reply_to = expiration = message_id = timestamp = message_type = user_id = app_id = cluster_id = None


_OCTETS = frozenset(("delivery_mode", "priority"))
_DECODERS: dict[str, Callable[[bytes], tuple[int, Any]]] = {
    "headers": decode.field_table, "timestamp": decode.timestamp,
}
_FLAGS = tuple((1 << (15 - bit), name) for bit, name in enumerate(Properties.FIELDS))


def content_header(payload: bytes) -> tuple[int, Properties]:
    """The body size and properties of a content header frame's payload."""
    _, _, body_size, flags = _HEADER.unpack_from(payload)
    if flags & 1:
        raise errors.ConnectionFrameError("content header with more property flags than basic has")
    properties, pos = Properties(), 14
    for flag, name in _FLAGS:
        if not flags & flag:
            continue
        if name in _OCTETS:
            value, pos = payload[pos], pos + 1
        elif name in _DECODERS:
            used, value = _DECODERS[name](payload[pos:])
            pos += used
        else:
            end = pos + 1 + payload[pos]
            value, pos = payload[pos + 1:end], end
            try:
                value = value.decode()
            except UnicodeDecodeError:  # kept as bytes, as pamqp does
                pass
        setattr(properties, name, value)
    if pos > len(payload):
        raise errors.ConnectionFrameError(f"content header of {len(payload)} bytes is cut short")
    return body_size, properties


def channel_error(frame: spec.Channel.Close) -> errors.ChannelClosed:
    """The exception aiormq raises for the same Channel.Close."""
    kind = CHANNEL_ERRORS.get(frame.reply_code or 0)
    if kind is None:
        return errors.ChannelClosed(frame.reply_code, frame.reply_text)
    return kind(frame.reply_text)


class Channel:
    """One channel of a :class:`Connection`; requests are answered in the order they were sent."""

    def __init__(self, connection: Connection, number: int) -> None:
        self.connection = connection
        self.number = number
        self.replies: deque[tuple[tuple[type, ...], asyncio.Future]] = deque()
        self.consumers: dict[str, Callable[[Message], None]] = {}
        self.on_consumer_cancel_callbacks: set[Callable[[spec.Basic.Cancel], None]] = set()
        self.close_callbacks: set[Callable[[BaseException], None]] = set()
        self.closing: BaseException | None = None
        self.message: Message | None = None
        self.receiver: Any = None
        self.remaining = 0

    def __repr__(self) -> str:
        return f"<amqp_wire.Channel {self.number} of {self.connection.name}{' closed' if self.closing else ''}>"

    @property
    def is_closed(self) -> bool:
        return self.closing is not None

    # requests --------------------------------------------------------------
    async def request(self, frame: Any, *replies: type) -> Any:
        """Send ``frame`` and wait for its reply (one of ``replies``)."""
        if self.closing is not None:
            raise errors.ChannelInvalidStateError(f"{self!r}: {self.closing}")
        self.connection.send(self.number, frame)  # queued: no reply can come before the append
        future = asyncio.get_running_loop().create_future()
        self.replies.append((replies, future))
        return await future

    async def queue_declare(self, queue: str = "", passive: bool = False, durable: bool = False,
                            exclusive: bool = False, auto_delete: bool = False,
                            arguments: dict[str, Any] | None = None) -> spec.Queue.DeclareOk:
        return await self.request(spec.Queue.Declare(
            queue=queue, passive=passive, durable=durable, exclusive=exclusive, auto_delete=auto_delete,
            arguments=arguments), spec.Queue.DeclareOk)

    async def queue_bind(self, queue: str, exchange: str, routing_key: str = "",
                         arguments: dict[str, Any] | None = None) -> spec.Queue.BindOk:
        return await self.request(spec.Queue.Bind(
            queue=queue, exchange=exchange, routing_key=routing_key, arguments=arguments), spec.Queue.BindOk)

    async def exchange_declare(self, exchange: str, exchange_type: str = "direct", passive: bool = False,
                               durable: bool = False, auto_delete: bool = False, internal: bool = False,
                               arguments: dict[str, Any] | None = None) -> spec.Exchange.DeclareOk:
        return await self.request(spec.Exchange.Declare(
            exchange=exchange, exchange_type=exchange_type, passive=passive, durable=durable,
            auto_delete=auto_delete, internal=internal, arguments=arguments), spec.Exchange.DeclareOk)

    async def basic_qos(self, prefetch_count: int = 0, global_: bool = False) -> spec.Basic.QosOk:
        return await self.request(spec.Basic.Qos(prefetch_count=prefetch_count, global_=global_), spec.Basic.QosOk)

    async def basic_consume(self, queue: str, consumer_callback: Callable[[Message], None],
                            consumer_tag: str) -> spec.Basic.ConsumeOk:
        """Have ``consumer_callback`` called with every message pushed to ``consumer_tag``, in the read's turn."""
        self.consumers[consumer_tag] = consumer_callback
        try:
            return await self.request(spec.Basic.Consume(queue=queue, consumer_tag=consumer_tag), spec.Basic.ConsumeOk)
        except BaseException:
            if self.closing is not None:
                self.consumers.pop(consumer_tag, None)
            raise

    async def basic_cancel(self, consumer_tag: str) -> spec.Basic.CancelOk:
        """Stop a consumer; what the server pushed before its CancelOk still reaches the callback."""
        try:
            return await self.request(spec.Basic.Cancel(consumer_tag=consumer_tag), spec.Basic.CancelOk)
        finally:
            self.consumers.pop(consumer_tag, None)

    async def basic_get(self, queue: str) -> Message:
        """One message of ``queue``, or one whose ``delivery_tag`` is None when it is empty."""
        return await self.request(spec.Basic.Get(queue=queue), spec.Basic.GetOk, spec.Basic.GetEmpty)

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = False) -> None:
        """Ack (without a reply to wait for: ``wait`` is aiormq's signature)."""
        self.settle(80, delivery_tag, multiple)

    async def basic_reject(self, delivery_tag: int, requeue: bool = True, wait: bool = False) -> None:
        self.settle(90, delivery_tag, requeue)

    def settle(self, method: int, delivery_tag: int, bit: bool) -> None:
        """Write Basic.Ack (80) or Basic.Reject (90), packed here: one per task on the hot path."""
        if self.closing is not None:
            raise errors.ChannelInvalidStateError(f"{self!r}: {self.closing}")
        self.connection.write(_SETTLE.pack(FRAME_METHOD, self.number, 13, 60, method, delivery_tag, bit, FRAME_END))

    async def close(self) -> None:
        """Close the channel: the server requeues what it held unacked.  When its CloseOk is
        late, the channel's number stays taken until it comes: the server refuses (by closing
        the connection) a channel opened on a number it is still closing."""
        if self.closing is not None:
            return
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                await self.request(spec.Channel.Close(reply_code=200, reply_text="closed by pq", class_id=0, method_id=0),
                                   spec.Channel.CloseOk)
        except TimeoutError:
            self.closed(errors.ChannelInvalidStateError(f"{self!r} closed"), release=False)
            return
        except (errors.AMQPError, ConnectionError):
            pass
        self.closed(errors.ChannelInvalidStateError(f"{self!r} closed"))

    # what the server sends -------------------------------------------------
    def closed(self, reason: BaseException, release: bool = True) -> None:
        """The channel is gone: fail its waiting requests and tell whoever asked.  Its number
        is free again unless ``release`` is False (see ``close``)."""
        if self.closing is not None:
            return
        self.closing = reason
        if release:
            self.connection.channels.pop(self.number, None)
        while self.replies:
            _, future = self.replies.popleft()
            if not future.done():
                future.set_exception(reason)
        self.consumers.clear()
        for callback in list(self.close_callbacks):
            try:
                callback(reason)
            except Exception:
                log.exception("close callback of %r failed", self)

    def on_method(self, frame: Any) -> None:
        if isinstance(frame, spec.Basic.GetOk):
            self.start(Message(self, frame.delivery_tag, frame.redelivered, frame.message_count), self.reply(frame))
        elif isinstance(frame, spec.Channel.Close):
            self.connection.send(self.number, spec.Channel.CloseOk())
            self.closed(channel_error(frame))
        elif isinstance(frame, spec.Basic.Cancel):
            self.consumers.pop(frame.consumer_tag, None)
            if not frame.nowait:
                self.connection.send(self.number, spec.Basic.CancelOk(consumer_tag=frame.consumer_tag))
            for callback in list(self.on_consumer_cancel_callbacks):
                callback(frame)
        elif isinstance(frame, spec.Channel.Flow):
            self.connection.send(self.number, spec.Channel.FlowOk(active=frame.active))
        elif isinstance(frame, spec.Basic.GetEmpty):
            future = self.reply(frame)
            if future is not None:
                future.set_result(Message(self, None))
        else:
            future = self.reply(frame)
            if future is not None:
                future.set_result(frame)

    def reply(self, frame: Any) -> asyncio.Future | None:
        """The future of the request ``frame`` answers (None when its caller gave up)."""
        if not self.replies or not isinstance(frame, self.replies[0][0]):
            raise errors.ConnectionUnexpectedFrame(f"{self!r}: unexpected {frame.name}")
        _, future = self.replies.popleft()
        return None if future.done() else future

    def on_deliver(self, payload: bytes) -> None:
        """Basic.Deliver, decoded here (once per pushed message): the tag, the redelivered bit."""
        end = 5 + payload[4]
        tag = int.from_bytes(payload[end:end + 8], "big")
        self.start(Message(self, tag, bool(payload[end + 8] & 1)), self.consumers.get(payload[5:end].decode()))

    def start(self, message: Message, receiver: Any) -> None:
        """A message's method arrived: its header and body follow."""
        self.message, self.receiver = message, receiver

    def on_header(self, payload: bytes) -> None:
        message = self.message
        if message is None:
            raise errors.ConnectionUnexpectedFrame(f"{self!r}: content header without a message")
        self.remaining, message.properties = content_header(payload)
        if not self.remaining:
            self.complete(message)

    def on_body(self, payload: bytes) -> None:
        message = self.message
        if message is None:
            raise errors.ConnectionUnexpectedFrame(f"{self!r}: content body without a message")
        message.body = message.body + payload if message.body else payload
        self.remaining -= len(payload)
        if self.remaining <= 0:
            self.complete(message)

    def complete(self, message: Message) -> None:
        """Hand a whole message over; one nobody waits for any more goes back to its queue."""
        receiver, self.message, self.receiver = self.receiver, None, None
        if isinstance(receiver, asyncio.Future):
            if not receiver.done():
                receiver.set_result(message)
                return
        elif receiver is not None:
            try:
                receiver(message)
            except Exception:
                log.exception("consumer callback of %r failed; the message goes back to its queue", self)
            else:
                return
        if message.delivery_tag is not None:
            self.settle(90, message.delivery_tag, True)


class Connection(asyncio.Protocol):
    """One AMQP connection: frames cut from one buffer, methods to their channels."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: Any = None
        self.buffer = bytearray()
        self.out: list[bytes] = []
        self.channels: dict[int, Channel] = {}
        self.control = Channel(self, 0)
        self.channel_max = 2047
        self.heartbeat = 0
        self.heard = True
        self.silent = 0
        self.timer: asyncio.TimerHandle | None = None
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"<amqp_wire.Connection {self.name}>"

    @property
    def is_closed(self) -> bool:
        return self.lost.done()

    # the transport --------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed(errors.AMQPConnectionError(f"connection {self.name} lost: {exc or 'closed'}"))

    def write(self, data: bytes) -> None:
        """Queue ``data``: what a loop turn writes leaves in one send, after the turn."""
        if self.transport is None or self.transport.is_closing():
            raise errors.AMQPConnectionError(f"connection {self.name} is closed")
        if not self.out:
            asyncio.get_running_loop().call_soon(self.flush)
        self.out.append(data)

    def flush(self) -> None:
        out, self.out = self.out, []
        if not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def send(self, number: int, frame: Any) -> None:
        self.write(amqp_frame.marshal(frame, number))

    def closed(self, reason: BaseException) -> None:
        """Everything on the connection fails with ``reason``; the socket goes."""
        if self.lost.done():
            return
        self.lost.set_result(reason)
        if self.timer is not None:
            self.timer.cancel()
        for channel in (self.control, *list(self.channels.values())):
            channel.closed(reason)
        if self.transport is not None:
            if self.out:
                self.flush()
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.heard = True
        buffer = self.buffer
        buffer += data
        pos, size = 0, len(buffer)
        try:
            while size - pos >= 8:
                kind, number, length = _FRAME.unpack_from(buffer, pos)
                end = pos + 7 + length
                if end >= size:
                    break
                if buffer[end] != FRAME_END:
                    raise errors.ConnectionFrameError(f"frame on channel {number} does not end with 0xCE")
                channel = self.channels.get(number) if number else self.control
                if channel is None or channel.closing is not None:
                    log.debug("%r: a frame for channel %d, which is closed", self, number)
                    if channel is not None and kind == FRAME_METHOD:  # a channel pq closed, its CloseOk late
                        if buffer[pos + 7:pos + 11] == CLOSE_OK:
                            del self.channels[number]  # the number is free again
                        elif buffer[pos + 7:pos + 11] == CLOSE:  # closed by both ends at once
                            self.send(number, spec.Channel.CloseOk())
                elif kind == FRAME_BODY:
                    channel.on_body(bytes(buffer[pos + 7:end]))
                elif kind == FRAME_METHOD:
                    if buffer[pos + 7:pos + 11] == DELIVER:
                        channel.on_deliver(bytes(buffer[pos + 7:end]))
                    else:
                        self.on_method(channel, amqp_frame.unmarshal(bytes(buffer[pos:end + 1]))[2])
                elif kind == FRAME_HEADER:
                    channel.on_header(bytes(buffer[pos + 7:end]))
                elif kind != FRAME_HEARTBEAT:
                    raise errors.ConnectionFrameError(f"unknown frame type {kind}")
                pos = end + 1
        except Exception as exc:
            log.warning("%r: cannot read what RabbitMQ sent (%s); closing the connection", self, exc)
            self.closed(exc if isinstance(exc, errors.AMQPConnectionError) else errors.ConnectionFrameError(str(exc)))
            if self.transport is not None:
                self.transport.abort()
        del buffer[:pos]

    def on_method(self, channel: Channel, frame: Any) -> None:
        if channel is not self.control:
            channel.on_method(frame)
        elif isinstance(frame, spec.Connection.Close):
            self.send(0, spec.Connection.CloseOk())
            self.closed(errors.ConnectionClosed(frame.reply_code, frame.reply_text))
        elif isinstance(frame, (spec.Connection.Blocked, spec.Connection.Unblocked)):
            log.debug("%r: %s", self, frame.name)
        else:
            future = channel.reply(frame)
            if future is not None:
                future.set_result(frame)

    def beat(self) -> None:
        """Every half heartbeat: send one, and drop a connection silent for two heartbeats."""
        if self.transport.is_closing():
            return
        self.silent = 0 if self.heard else self.silent + 1
        self.heard = False
        if self.silent >= 4:
            log.warning("%r: RabbitMQ sent nothing for %ds; dropping the connection", self, 2 * self.heartbeat)
            self.closed(errors.AMQPConnectionError(f"connection {self.name}: heartbeats missed"))
            self.transport.abort()
            return
        self.write(HEARTBEAT_FRAME)
        self.timer = asyncio.get_running_loop().call_later(self.heartbeat / 2, self.beat)

    # opening and closing --------------------------------------------------
    async def handshake(self, user: str, password: str, vhost: str, heartbeat: int) -> None:
        start = asyncio.get_running_loop().create_future()
        self.control.replies.append(((spec.Connection.Start,), start))
        self.transport.write(PROTOCOL_HEADER)
        await start
        capabilities = {"consumer_cancel_notify": True, "authentication_failure_close": True, "basic.nack": True}
        tune = await self.control.request(spec.Connection.StartOk(
            client_properties={"connection_name": self.name, "product": "pq", "capabilities": capabilities},
            mechanism="PLAIN", response=f"\0{user}\0{password}", locale="en_US"), spec.Connection.Tune)
        self.channel_max = tune.channel_max or 65535
        self.heartbeat = heartbeat
        self.send(0, spec.Connection.TuneOk(channel_max=self.channel_max, frame_max=tune.frame_max, heartbeat=heartbeat))
        await self.control.request(spec.Connection.Open(virtual_host=vhost), spec.Connection.OpenOk)
        if heartbeat:
            self.timer = asyncio.get_running_loop().call_later(heartbeat / 2, self.beat)

    async def channel(self) -> Channel:
        """A new open channel, on the lowest free number."""
        number = next(n for n in range(1, self.channel_max + 1) if n not in self.channels)
        channel = self.channels[number] = Channel(self, number)
        try:
            await channel.request(spec.Channel.Open(), spec.Channel.OpenOk)
        except BaseException:
            self.channels.pop(number, None)
            raise
        return channel

    async def close(self) -> None:
        """Close politely (the server requeues what the channels held), then drop the socket."""
        if self.lost.done():
            return
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                await self.control.request(
                    spec.Connection.Close(reply_code=200, reply_text="closed by pq", class_id=0, method_id=0),
                    spec.Connection.CloseOk)
        except (TimeoutError, errors.AMQPError, ConnectionError):
            pass
        self.closed(errors.AMQPConnectionError(f"connection {self.name} closed"))


def tls_context(query: dict[str, str]) -> ssl.SSLContext:
    """The TLS settings of an ``amqps`` URL, named as aio-pika names them."""
    context = ssl.create_default_context(cafile=query.get("cafile") or None, capath=query.get("capath") or None)
    if query.get("certfile"):
        context.load_cert_chain(query["certfile"], query.get("keyfile") or None)
    if query.get("no_verify_ssl", "").lower() in ("1", "true", "yes"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def connect(url: str, name: str) -> Connection:
    """Open and log in: ``amqp[s]://user:password@host:port/vhost?heartbeat=60``."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    tls = parts.scheme == "amqps"
    host = parts.hostname or "localhost"
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    try:
        heartbeat = int(query.get("heartbeat", HEARTBEAT))
    except ValueError:
        raise ValueError(f"amqp URL: heartbeat must be a number of seconds, not {query['heartbeat']!r}") from None
    loop = asyncio.get_running_loop()
    transport, connection = await loop.create_connection(
        lambda: Connection(name), host, parts.port or (5671 if tls else 5672),
        ssl=tls_context(query) if tls else None, server_hostname=host if tls else None)
    try:
        await connection.handshake(unquote(parts.username or "guest"), unquote(parts.password or "guest"),
                                   vhost, max(heartbeat, 0))
    except BaseException:
        connection.closed(errors.AMQPConnectionError(f"connection {name}: handshake failed"))
        transport.abort()
        raise
    return connection
