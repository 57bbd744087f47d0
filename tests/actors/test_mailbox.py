"""The mailbox on its own: framing, request/reply, timeouts, errors, bad frames."""
from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable

import msgpack
import pytest

from pq.actors.mailbox import HEADER, MAX_FRAME, Mailbox, encode
from pq.exceptions import ActorNotFound, MailboxError


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


def frames_in(data: bytes) -> list[dict]:
    frames, start = [], 0
    while start < len(data):
        (size,) = HEADER.unpack_from(data, start)
        frames.append(msgpack.unpackb(data[start + HEADER.size:start + HEADER.size + size]))
        start += HEADER.size + size
    return frames


def request(cmd: str = "ping", *args: Any, id: int | None = 1, **kw: Any) -> dict:
    return {"id": id, "src": "test", "dst": "actor", "cmd": cmd, "args": list(args), "kw": kw}


def echo(mailbox: Mailbox, frame: dict) -> None:
    mailbox.reply(frame["id"], [frame["cmd"], frame["args"], frame["kw"]])


async def pair(handler: Callable[[Mailbox, dict], None] = echo) -> tuple[Mailbox, Mailbox]:
    """Two mailboxes over a real socketpair: (asker, answerer running ``handler``)."""
    loop = asyncio.get_running_loop()
    left, right = socket.socketpair()
    _, asker = await loop.create_unix_connection(lambda: Mailbox("asker", echo), sock=left)
    _, answerer = await loop.create_unix_connection(lambda: Mailbox("answerer", handler), sock=right)
    return asker, answerer


async def test_frames_split_at_every_byte_are_reassembled() -> None:
    received: list[dict] = []
    mailbox = Mailbox("test", lambda mb, frame: received.append(frame))
    mailbox.connection_made(FakeTransport())
    data = b"".join(encode(frame) for frame in
                    (request("one", 1), request("two", "x" * 1000, flag=True), request("three")))
    for i in range(len(data)):
        mailbox.data_received(data[i:i + 1])
    assert [f["cmd"] for f in received] == ["one", "two", "three"]
    assert received[1]["args"] == ["x" * 1000] and received[1]["kw"] == {"flag": True}


async def test_many_frames_in_one_read() -> None:
    received: list[dict] = []
    mailbox = Mailbox("test", lambda mb, frame: received.append(frame))
    mailbox.connection_made(FakeTransport())
    mailbox.data_received(b"".join(encode(request("n", n)) for n in range(500)))
    assert [f["args"][0] for f in received] == list(range(500))


async def test_request_and_reply() -> None:
    asker, answerer = await pair()
    reply = await asker.request("actor", "hello", [1, "two"], {"three": 3.0})
    assert reply == ["hello", [1, "two"], {"three": 3.0}]
    await asker.aclose()


async def test_large_frames_both_ways() -> None:
    asker, answerer = await pair()
    blob = bytes(range(256)) * (8 * 1024 * 1024 // 256)
    result = await asker.request("actor", "big", [blob], timeout=30)
    assert result[1][0] == blob
    await asker.aclose()


async def test_concurrent_requests_get_their_own_replies() -> None:
    async def later(mailbox: Mailbox, frame: dict) -> None:
        await asyncio.sleep(0.001 * (50 - frame["args"][0]))
        mailbox.reply(frame["id"], frame["args"][0] * 2)

    tasks: set[asyncio.Task] = set()
    asker, _ = await pair(lambda mb, frame: tasks.add(asyncio.ensure_future(later(mb, frame))))
    results = await asyncio.gather(*(asker.request("actor", "double", [n]) for n in range(50)))
    assert results == [n * 2 for n in range(50)]
    await asker.aclose()


async def test_timeout_raises_and_a_late_reply_is_dropped() -> None:
    held: list[dict] = []
    asker, answerer = await pair(
        lambda mb, frame: held.append(frame) if frame["cmd"] == "slow" else echo(mb, frame)
    )
    with pytest.raises(MailboxError, match="no reply from actor to 'slow' within 0.1 s"):
        await asker.request("actor", "slow", timeout=0.1)
    assert asker._pending == {}
    answerer.reply(held[0]["id"], "too late")
    assert await asker.request("actor", "ping", timeout=5) == ["ping", [], {}]
    await asker.aclose()


async def test_error_replies_raise_mailbox_error_or_actor_not_found() -> None:
    def fail(mailbox: Mailbox, frame: dict) -> None:
        error = ActorNotFound("no actor 'ghost'") if frame["dst"] == "ghost" else MailboxError("it broke")
        mailbox.reply_error(frame["id"], error)

    asker, _ = await pair(fail)
    with pytest.raises(ActorNotFound, match="no actor 'ghost'"):
        await asker.request("ghost", "ping")
    with pytest.raises(MailboxError, match="it broke") as info:
        await asker.request("actor", "ping")
    assert not isinstance(info.value, ActorNotFound)
    await asker.aclose()


async def test_fire_and_forget_gets_no_reply() -> None:
    seen: asyncio.Queue = asyncio.Queue()
    asker, _ = await pair(lambda mb, frame: (seen.put_nowait(frame), mb.reply(frame["id"], "ignored")))
    asker.notify("actor", "note", [1])
    frame = await asyncio.wait_for(seen.get(), 5)
    assert frame["id"] is None and frame["cmd"] == "note"
    assert asker._pending == {}
    await asker.aclose()


async def test_bad_frames_are_dropped_and_the_mailbox_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    received: list[dict] = []
    transport = FakeTransport()
    mailbox = Mailbox("test", lambda mb, frame: received.append(frame))
    mailbox.connection_made(transport)
    garbage = b"\xc1\xc1\xc1"  # 0xc1 is never valid msgpack
    mailbox.data_received(HEADER.pack(len(garbage)) + garbage)
    mailbox.data_received(encode(["not", "a", "map"]))  # type: ignore[arg-type]
    mailbox.data_received(encode({"id": 7, "dst": "actor", "cmd": "x", "args": "not a list"}))
    mailbox.data_received(encode({"id": 8, "dst": "actor", "cmd": 5}))
    mailbox.data_received(encode(request("fine")))
    assert [f["cmd"] for f in received] == ["fine"]
    errors = {f["id"]: f["error"]["message"] for f in frames_in(bytes(transport.written))}
    assert errors == {7: "bad request: args must be a list", 8: "bad request: cmd must be a string"}
    assert "not msgpack" in caplog.text and "not a map" in caplog.text
    assert not transport.closing


async def test_an_oversized_length_closes_the_connection_and_fails_pending_requests() -> None:
    asker, answerer = await pair(lambda mb, frame: None)
    future = asker.request_future("actor", "ping")
    answerer.transport.write(HEADER.pack(MAX_FRAME + 1))  # type: ignore[union-attr]
    with pytest.raises(MailboxError, match="closed before the reply"):
        await asyncio.wait_for(future, 5)
    assert not asker.is_open


async def test_unencodable_arguments_and_results() -> None:
    asker, _ = await pair(lambda mb, frame: mb.reply(frame["id"], object()))
    with pytest.raises(MailboxError, match="cannot encode"):
        await asker.request("actor", "x", [object()])
    with pytest.raises(MailboxError, match="cannot encode"):
        await asker.request("actor", "x")
    await asker.aclose()


async def test_frames_written_before_the_connection_wait_for_it() -> None:
    loop = asyncio.get_running_loop()
    left, right = socket.socketpair()
    asker = Mailbox("asker", echo)
    future = asker.request_future("actor", "early")
    await loop.create_unix_connection(lambda: Mailbox("answerer", echo), sock=right)
    await loop.create_unix_connection(lambda: asker, sock=left)
    assert await asyncio.wait_for(future, 5) == ["early", [], {}]
    await asker.aclose()
    with pytest.raises(MailboxError, match="closed"):
        asker.notify("actor", "late")
