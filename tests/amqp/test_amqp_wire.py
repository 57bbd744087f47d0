"""pq's own AMQP connection (``amqp_wire``): against the shared RabbitMQ, and a loopback server that misbehaves."""
from __future__ import annotations

import asyncio
import datetime
import shutil
import ssl
import subprocess
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aio_pika
import pytest
from aiormq import exceptions as errors
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp.header import ContentHeader

from pq.brokers import amqp_wire

from amqp_helpers import close_connections, eventually


@pytest.fixture
async def queue(amqp_url: str) -> AsyncIterator[str]:
    name = f"pqtest-wire-{uuid.uuid4().hex[:10]}"
    yield name
    connection = await aio_pika.connect(amqp_url)
    try:
        await (await connection.channel()).queue_delete(name)
    finally:
        await connection.close()


async def publish(url: str, queue: str, *messages: aio_pika.Message) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for message in messages:
            await channel.default_exchange.publish(message, routing_key=queue)
    finally:
        await connection.close()


async def connected(url: str) -> amqp_wire.Connection:
    return await amqp_wire.connect(url, f"pqtest-wire-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def wire(amqp_url: str) -> AsyncIterator[amqp_wire.Connection]:
    """A connection to the shared RabbitMQ, closed after the test."""
    connection = await connected(amqp_url)
    yield connection
    await connection.close()


async def test_get_consume_ack_and_reject_on_rabbitmq(amqp_url: str, queue: str, wire: amqp_wire.Connection) -> None:
    channel = await wire.channel()
    await channel.queue_declare(queue)
    assert (await channel.basic_get(queue)).delivery_tag is None, "an empty queue"
    await publish(amqp_url, queue, *(aio_pika.Message(f"b{i}".encode(), message_id=f"m{i}",
                                                      headers={"x-pq-deliveries": i}) for i in range(3)))
    got = await channel.basic_get(queue)
    assert (got.body, got.properties.message_id, got.properties.headers, got.message_count) == \
        (b"b0", "m0", {"x-pq-deliveries": 0}, 2)
    await channel.basic_reject(got.delivery_tag, requeue=True)
    pushed: list[amqp_wire.Message] = []
    arrived = asyncio.Event()

    def on_message(message: amqp_wire.Message) -> None:
        pushed.append(message)
        if len(pushed) == 3:
            arrived.set()

    await channel.basic_qos(prefetch_count=3)
    await channel.basic_consume(queue, on_message, consumer_tag="t")
    await asyncio.wait_for(arrived.wait(), 5)
    assert sorted((m.body, m.redelivered) for m in pushed) == [(b"b0", True), (b"b1", False), (b"b2", False)]
    await channel.basic_cancel("t")
    await channel.basic_ack(max(m.delivery_tag for m in pushed), multiple=True)
    assert (await channel.queue_declare(queue, passive=True)).message_count == 0
    await wire.close()
    assert wire.is_closed


async def test_a_body_larger_than_a_frame_arrives_whole(amqp_url: str, queue: str, wire: amqp_wire.Connection) -> None:
    body = bytes(range(256)) * 2000
    channel = await wire.channel()
    await channel.queue_declare(queue)
    await publish(amqp_url, queue, aio_pika.Message(body), aio_pika.Message(b""))
    assert (await channel.basic_get(queue)).body == body
    empty = await channel.basic_get(queue)
    assert (empty.delivery_tag is not None, empty.body) == (True, b"")


async def test_a_refused_request_closes_its_channel_only(amqp_url: str, queue: str, wire: amqp_wire.Connection) -> None:
    channel = await wire.channel()
    closed: list[BaseException] = []
    channel.close_callbacks.add(closed.append)
    with pytest.raises(errors.ChannelNotFoundEntity):
        await channel.queue_declare(queue, passive=True)
    assert channel.is_closed and isinstance(closed[0], errors.ChannelNotFoundEntity)
    with pytest.raises(errors.ChannelInvalidStateError):
        await channel.basic_qos(prefetch_count=1)
    again = await wire.channel()
    await again.queue_declare(queue)
    with pytest.raises(errors.ChannelPreconditionFailed):
        await again.queue_declare(queue, durable=True)
    assert not wire.is_closed


async def test_the_server_cancelling_a_consumer_is_told(amqp_url: str, queue: str, wire: amqp_wire.Connection) -> None:
    channel = await wire.channel()
    cancelled: list[str] = []
    channel.on_consumer_cancel_callbacks.add(lambda frame: cancelled.append(frame.consumer_tag))
    await channel.queue_declare(queue)
    await channel.basic_consume(queue, lambda message: None, consumer_tag="gone")
    other = await wire.channel()
    await other.request(spec.Queue.Delete(queue=queue), spec.Queue.DeleteOk)
    await eventually(lambda: cancelled)
    assert cancelled == ["gone"] and "gone" not in channel.consumers
    assert not channel.is_closed


async def test_an_operator_closing_the_connection_fails_what_waits(amqp_url: str, queue: str) -> None:
    name = f"pqtest-wire-{uuid.uuid4().hex[:8]}"
    connection = await amqp_wire.connect(amqp_url, name)
    channel = await connection.channel()
    await channel.queue_declare(queue)
    closed: list[BaseException] = []
    channel.close_callbacks.add(closed.append)
    assert await asyncio.to_thread(close_connections, name) == 1
    reason = await asyncio.wait_for(connection.lost, 10)
    assert isinstance(reason, errors.ConnectionClosed) and "CONNECTION_FORCED" in str(reason)
    assert channel.is_closed and closed == [reason]
    with pytest.raises(errors.ChannelInvalidStateError):
        await channel.basic_get(queue)
    with pytest.raises(errors.ChannelInvalidStateError):
        await channel.basic_ack(1)


async def test_a_wrong_password_is_refused_with_the_server_s_reason(amqp_url: str) -> None:
    bad = amqp_url.replace("guest:guest@", "guest:wrong@")
    with pytest.raises(errors.ConnectionClosed, match="ACCESS_REFUSED"):
        await connected(bad)
    with pytest.raises(errors.ConnectionClosed, match="NOT_ALLOWED|vhost"):
        await connected(amqp_url.rstrip("/") + "/pqtest-no-such-vhost")


async def test_a_callback_that_raises_sends_its_message_back(amqp_url: str, queue: str, wire: amqp_wire.Connection) -> None:
    channel = await wire.channel()
    await channel.queue_declare(queue)
    await publish(amqp_url, queue, aio_pika.Message(b"x"))
    seen: list[bool] = []

    def on_message(message: amqp_wire.Message) -> None:
        seen.append(message.redelivered)
        if len(seen) == 1:
            raise RuntimeError("a bug in the consumer")

    await channel.basic_consume(queue, on_message, consumer_tag="t")
    await eventually(lambda: len(seen) >= 2)
    assert seen[:2] == [False, True], "rejected to its queue, then delivered again"
    assert not wire.is_closed


# a loopback server --------------------------------------------------------------
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_channel_frame(reader: asyncio.StreamReader) -> tuple[int, Any]:
    """The next frame the client sent: its channel number and method."""
    head = await reader.readexactly(7)
    rest = await reader.readexactly(int.from_bytes(head[3:7], "big") + 1)
    _, number, method = amqp_frame.unmarshal(head + rest)
    return number, method


async def read_frame(reader: asyncio.StreamReader) -> Any:
    return (await read_channel_frame(reader))[1]


async def serve(heartbeat: int, script: Script, tls: ssl.SSLContext | None = None) -> tuple[asyncio.AbstractServer, str]:
    """A server on a free loopback port: it logs the client in, then runs ``script``."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            assert await reader.readexactly(8) == amqp_wire.PROTOCOL_HEADER
            writer.write(amqp_frame.marshal(spec.Connection.Start(mechanisms="PLAIN", locales="en_US"), 0))
            assert isinstance(await read_frame(reader), spec.Connection.StartOk)
            writer.write(amqp_frame.marshal(spec.Connection.Tune(2047, 131072, heartbeat), 0))
            assert isinstance(await read_frame(reader), spec.Connection.TuneOk)
            assert isinstance(await read_frame(reader), spec.Connection.Open)
            writer.write(amqp_frame.marshal(spec.Connection.OpenOk(), 0))
            await script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    return server, f"amqp{'s' if tls else ''}://guest:guest@127.0.0.1:{port}/?heartbeat={heartbeat}"


async def test_amqps_checks_the_server_s_certificate(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    opened: list[str] = []

    async def open_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frame = await read_frame(reader)
        opened.append(frame.name)
        writer.write(amqp_frame.marshal(spec.Channel.OpenOk(), 1))
        await reader.read()

    server, url = await serve(0, open_one, tls)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await connected(url)
        connection = await connected(f"{url}&cafile={cert}")
        await connection.channel()
        assert opened == ["Channel.Open"]
        await connection.close()
    finally:
        server.close()


async def test_a_server_gone_silent_is_dropped_after_two_heartbeats() -> None:
    heard: list[Any] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            heard.append(await read_frame(reader))

    server, url = await serve(1, silent)
    try:
        connection = await connected(url)
        reason = await asyncio.wait_for(connection.lost, 10)
        assert "heartbeats missed" in str(reason)
        assert heard and all(frame.name == "Heartbeat" for frame in heard), "it sent its own heartbeats"
    finally:
        server.close()


async def test_garbage_from_the_server_closes_the_connection_not_the_process() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert isinstance(await read_frame(reader), spec.Channel.Open)
        writer.write(amqp_frame.marshal(spec.Channel.OpenOk(), 1))
        writer.write(b"\x01\x00\x01\x00\x00\x00\x04\x00\x3c\x00\x3c\x00")  # a frame that does not end with 0xCE
        await reader.read()

    server, url = await serve(0, garbage)
    try:
        connection = await connected(url)
        channel = await connection.channel()
        reason = await asyncio.wait_for(connection.lost, 10)
        assert isinstance(reason, errors.ConnectionFrameError)
        assert channel.is_closed
    finally:
        server.close()


async def test_a_get_given_up_on_sends_its_message_back() -> None:
    settled: list[Any] = []

    async def slow_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert isinstance(await read_frame(reader), spec.Channel.Open)
        writer.write(amqp_frame.marshal(spec.Channel.OpenOk(), 1))
        assert isinstance(await read_frame(reader), spec.Basic.Get)
        await asyncio.sleep(0.3)
        writer.write(amqp_frame.marshal(spec.Basic.GetOk(7, False, "", "q", 0), 1))
        writer.write(amqp_frame.marshal(ContentHeader(body_size=1, properties=spec.Basic.Properties()), 1))
        writer.write(b"\x03\x00\x01\x00\x00\x00\x01x\xce")
        settled.append(await read_frame(reader))

    server, url = await serve(0, slow_get)
    try:
        connection = await connected(url)
        channel = await connection.channel()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(channel.basic_get("q"), 0.05)
        await eventually(lambda: settled)
        assert [(f.name, f.delivery_tag, f.requeue) for f in settled] == [("Basic.Reject", 7, True)]
        await connection.close()
    finally:
        server.close()


_short = st.text(min_size=1, max_size=40)  # pamqp leaves empty ones out
_properties = st.fixed_dictionaries({}, optional={
    **{name: _short for name in ("content_type", "content_encoding", "correlation_id", "reply_to", "expiration",
                                 "message_id", "message_type", "user_id", "app_id")},  # cluster_id: pamqp refuses any
    "headers": st.dictionaries(st.text(min_size=1, max_size=20),
                               st.one_of(st.integers(-2**31, 2**31 - 1), _short, st.booleans()), max_size=4),
    "delivery_mode": st.integers(1, 2),
    "priority": st.integers(1, 9),
    "timestamp": st.datetimes(datetime.datetime(1971, 1, 1), datetime.datetime(2100, 1, 1),
                              timezones=st.just(datetime.timezone.utc)).map(lambda t: t.replace(microsecond=0)),
})


@settings(max_examples=300, deadline=None)
@given(_properties, st.integers(0, 2**40))
def test_content_headers_decode_as_pamqp_decodes_them(fields: dict[str, Any], body_size: int) -> None:
    payload = ContentHeader(body_size=body_size, properties=spec.Basic.Properties(**fields)).marshal()
    expected = ContentHeader()
    expected.unmarshal(payload)
    size, properties = amqp_wire.content_header(payload)
    assert size == expected.body_size == body_size
    assert {name: getattr(properties, name) for name in amqp_wire.Properties.FIELDS} == \
        {name: getattr(expected.properties, name) if name in fields else None for name in amqp_wire.Properties.FIELDS}


def test_a_content_header_cut_short_is_refused() -> None:
    payload = ContentHeader(body_size=1, properties=spec.Basic.Properties(message_id="m1", app_id="pq")).marshal()
    with pytest.raises(errors.ConnectionFrameError, match="cut short"):
        amqp_wire.content_header(payload[:-2])


async def test_a_channel_number_stays_taken_until_its_late_close_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amqp_wire, "CLOSE_WAIT", 0.05)
    opened: list[int] = []
    crossed: list[int] = []
    late_close_ok = asyncio.Event()

    async def slow_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def close_ok(number: int) -> None:  # sent only when the test says so
            await late_close_ok.wait()
            writer.write(amqp_frame.marshal(spec.Basic.Deliver("gone", 1, False, "", "q"), number))
            writer.write(amqp_frame.marshal(spec.Channel.CloseOk(), number))

        async def cross(number: int) -> None:  # after pq gave up waiting for the CloseOk
            await asyncio.sleep(0.2)
            writer.write(amqp_frame.marshal(spec.Channel.Close(406, "crossed", 0, 0), number))

        closing: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks
        while True:
            number, method = await read_channel_frame(reader)
            if isinstance(method, spec.Channel.Open):
                opened.append(number)
                writer.write(amqp_frame.marshal(spec.Channel.OpenOk(), number))
            elif isinstance(method, spec.Channel.Close) and number == 2:  # then closed by the server too
                closing.add(asyncio.create_task(cross(number)))
            elif isinstance(method, spec.Channel.Close):
                closing.add(asyncio.create_task(close_ok(number)))
            elif isinstance(method, spec.Channel.CloseOk):
                crossed.append(number)
                writer.write(amqp_frame.marshal(spec.Channel.CloseOk(), number))

    server, url = await serve(0, slow_close)
    try:
        connection = await connected(url)
        first = await connection.channel()
        await first.close()
        assert first.is_closed
        second = await connection.channel()
        assert (first.number, second.number) == (1, 2), "a number still closing on the server is not reused"
        late_close_ok.set()
        await eventually(lambda: 1 not in connection.channels)
        third = await connection.channel()
        assert third.number == 1 and opened == [1, 2, 1]
        assert not connection.lost.done(), "the late frames of a closed channel are dropped, not an error"
        await second.close()
        await eventually(lambda: crossed == [2] and 2 not in connection.channels)
        assert crossed == [2] and 2 not in connection.channels, "a Close crossing pq's is answered, then the number freed"
        assert not connection.lost.done()
        await connection.close()
    finally:
        server.close()
