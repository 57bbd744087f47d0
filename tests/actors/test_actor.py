"""An actor in this process, with the test playing its arbiter over a socketpair."""
from __future__ import annotations

import asyncio
import os
import socket
from typing import Any, AsyncIterator

import pytest

from pq.actors import Actor, ConsumerActor, command
from pq.actors.mailbox import HEADER, Mailbox
from pq.app import PulsarQueue
from pq.exceptions import ActorNotFound, MailboxError


class Kind(ConsumerActor):
    on_stop_takes = 0.0

    async def on_start(self) -> None:
        self.events = ["start"]

    async def on_stop(self) -> None:
        self.events.append("stop requested" if self.stop_requested.is_set() else "stop")
        await asyncio.sleep(self.on_stop_takes)
        self.events.append("drained")

    def extra_info(self) -> dict[str, Any]:
        return {"in_flight": 3}

    @command
    async def add(self, a: int, b: int = 0) -> int:
        await asyncio.sleep(0)
        return a + b

    @command
    def boom(self) -> None:
        raise ValueError("boom")

    @command
    async def ask(self, target: str, cmd: str) -> Any:
        return await self.send(target, cmd, timeout=5)

    def ping(self) -> str:  # overridden without the decorator: still the ping command
        return "PONG"


class FakeArbiter:
    """The arbiter's end: collects what the actor sends, answers what it asks."""

    def __init__(self) -> None:
        self.notes: asyncio.Queue[dict] = asyncio.Queue()

    def on_request(self, mailbox: Mailbox, frame: dict) -> None:
        if frame["id"] is None:
            self.notes.put_nowait(frame)
        elif frame["dst"] == "monitor":
            mailbox.reply(frame["id"], {"from": frame["src"], "cmd": frame["cmd"]})
        else:
            mailbox.reply_error(frame["id"], ActorNotFound(f"actor {frame['dst']!r} does not exist"))

    async def wait_note(self, cmd: str, timeout: float = 5.0) -> dict:
        while True:
            frame = await asyncio.wait_for(self.notes.get(), timeout)
            if frame["cmd"] == cmd:
                return frame


@pytest.fixture
async def running() -> AsyncIterator[tuple[Kind, Mailbox, FakeArbiter, asyncio.Task]]:
    app = PulsarQueue(data_store="memory://", heartbeat=0.05, graceful_timeout=5)
    ours, theirs = socket.socketpair()
    actor = Kind(app, "consumer-1", theirs)
    arbiter = FakeArbiter()
    _, mailbox = await asyncio.get_running_loop().create_unix_connection(
        lambda: Mailbox("arbiter", arbiter.on_request), sock=ours
    )
    task = asyncio.ensure_future(actor.main())
    await arbiter.wait_note("ready")
    yield actor, mailbox, arbiter, task
    if not task.done():
        actor.begin_stop(0, "test over")
        await asyncio.wait_for(task, 10)
    mailbox.close()


def test_command_table_collects_decorated_methods_of_the_class_and_its_bases() -> None:
    assert set(Actor.commands) == {"ping", "info", "stop"}
    assert set(Kind.commands) == {"ping", "info", "stop", "add", "boom", "ask"}


async def test_commands_and_errors(running) -> None:
    actor, mailbox, _, _ = running
    assert await mailbox.request("consumer-1", "ping") == "PONG"
    assert await mailbox.request("consumer-1", "add", [2], {"b": 3}) == 5
    with pytest.raises(MailboxError, match="consumer-1: command 'boom' failed: ValueError: boom"):
        await mailbox.request("consumer-1", "boom")
    with pytest.raises(MailboxError, match="has no command 'nope'"):
        await mailbox.request("consumer-1", "nope")
    with pytest.raises(MailboxError, match="TypeError"):
        await mailbox.request("consumer-1", "add", [1, 2, 3])
    assert actor.events == ["start"]


async def test_info_merges_process_figures_and_extra_info(running) -> None:
    _, mailbox, _, _ = running
    info = await mailbox.request("consumer-1", "info")
    assert info["pid"] == os.getpid() and info["name"] == "consumer-1" and info["kind"] == "consumer"
    assert info["rss"] > 0 and info["uptime"] >= 0 and info["open_files"] >= 0
    assert isinstance(info["cpu_percent"], float) and info["in_flight"] == 3


async def test_heartbeats_reach_the_arbiter(running) -> None:
    _, _, arbiter, _ = running
    for _ in range(3):
        assert (await arbiter.wait_note("heartbeat"))["src"] == "consumer-1"


async def test_send_goes_through_the_arbiter(running) -> None:
    _, mailbox, _, _ = running
    reply = await mailbox.request("consumer-1", "ask", ["monitor", "info"])
    assert reply == {"from": "consumer-1", "cmd": "info"}
    with pytest.raises(ActorNotFound, match="'ghost' does not exist"):
        await mailbox.request("consumer-1", "ask", ["ghost", "ping"])


async def test_a_bad_frame_does_not_kill_the_actor(running) -> None:
    _, mailbox, _, task = running
    garbage = b"\xc1not msgpack"
    mailbox.transport.write(HEADER.pack(len(garbage)) + garbage)  # type: ignore[union-attr]
    mailbox.write({"id": 99, "dst": "consumer-1", "cmd": "ping", "args": {"bad": "args"}})
    assert await mailbox.request("consumer-1", "ping") == "PONG"
    assert not task.done()


async def test_stop_runs_on_stop_and_exits_zero(running) -> None:
    actor, mailbox, _, task = running
    assert await mailbox.request("consumer-1", "stop", [2.5]) is True
    assert await asyncio.wait_for(task, 10) == 0
    assert actor.events == ["start", "stop requested", "drained"]
    assert actor.stop_timeout == 2.5


async def test_on_stop_is_cut_at_the_graceful_timeout(running, caplog: pytest.LogCaptureFixture) -> None:
    actor, mailbox, _, task = running
    actor.on_stop_takes = 60
    mailbox.notify("consumer-1", "stop", [0.2])
    assert await asyncio.wait_for(task, 10) == 0
    assert actor.events == ["start", "stop requested"]
    assert "on_stop did not finish within 0.2 s" in caplog.text


async def test_the_actor_stops_when_the_arbiter_goes_away(running) -> None:
    actor, mailbox, _, task = running
    mailbox.close()
    assert await asyncio.wait_for(task, 10) == 0
    assert actor.events[-1] == "drained"


async def start_alone(actor_class: type[Actor]) -> tuple[Actor, Mailbox, asyncio.Task]:
    app = PulsarQueue(data_store="memory://", heartbeat=0.05)
    ours, theirs = socket.socketpair()
    arbiter = FakeArbiter()
    _, mailbox = await asyncio.get_running_loop().create_unix_connection(
        lambda: Mailbox("arbiter", arbiter.on_request), sock=ours
    )
    actor = actor_class(app, "monitor", theirs)
    return actor, mailbox, asyncio.ensure_future(actor.main())


async def test_a_failing_on_start_exits_one(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Actor):
        async def on_start(self) -> None:
            raise RuntimeError("no broker")

    _, mailbox, task = await start_alone(Broken)
    assert await asyncio.wait_for(task, 10) == 1
    assert "monitor (pid %d) failed to start" % os.getpid() in caplog.text
    mailbox.close()


async def test_a_stop_while_starting_cancels_on_start_then_runs_on_stop() -> None:
    class Slow(Actor):
        events: list[str] = []

        async def on_start(self) -> None:
            self.events.append("starting")
            await asyncio.sleep(60)

        async def on_stop(self) -> None:
            self.events.append("stop")

    actor, mailbox, task = await start_alone(Slow)
    assert await mailbox.request("monitor", "ping") == "pong"
    assert await mailbox.request("monitor", "stop", [5]) is True
    assert await asyncio.wait_for(task, 10) == 0
    assert Slow.events == ["starting", "stop"]
    mailbox.close()
