"""A real server: the arbiter, its actors as processes, signals and supervision."""
from __future__ import annotations

import os
import signal
import socket
import time

import psutil
import pytest

from pq.actors.mailbox import HEADER
from pq.exceptions import ActorNotFound

from actor_harness import gone, wait_for


async def test_every_actor_runs_and_answers_ping_through_the_arbiter(start_server) -> None:
    server = await start_server("-w", "4")
    pids = await server.wait_running(4)
    assert sorted(pids) == ["consumer-1", "consumer-2", "consumer-3", "consumer-4", "monitor", "scheduler"]
    assert sorted(server.children()) == sorted(pids.values())
    for name in ["arbiter", *pids]:
        best = min([await _round_trip(server, name) for _ in range(3)])
        assert best < 0.1, f"{name} took {best * 1000:.0f} ms to answer ping"
    assert psutil.Process(pids["consumer-2"]).name() == "pq-consumer-2"
    assert (await server.send("consumer-3", "info"))["pid"] == pids["consumer-3"]
    assert await server.send("consumer", "ping") == "pong"
    with pytest.raises(ActorNotFound, match="'consumer-9' does not exist"):
        await server.send("consumer-9", "ping")
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(server.control)
        raw.sendall(HEADER.pack(4) + b"\xc1\xc1\xc1\xc1")

    async def dropped() -> bool:
        return "dropped a frame that is not msgpack" in server.log

    await wait_for(dropped, 10, "the arbiter to drop the bad frame")
    assert await server.send("arbiter", "ping") == "pong"


async def _round_trip(server, name: str) -> float:
    start = time.perf_counter()
    assert await server.send(name, "ping") == "pong"
    return time.perf_counter() - start


async def test_an_actor_asks_another_through_the_arbiter(start_server) -> None:
    server = await start_server("-w", "1")
    pids = await server.wait_running(1)
    info = await server.send("consumer-1", "relay", "monitor", "info")
    assert info["name"] == "monitor" and info["pid"] == pids["monitor"]
    with pytest.raises(ActorNotFound, match="'ghost' does not exist"):
        await server.send("consumer-1", "relay", "ghost", "ping")


async def test_killed_actors_are_restarted_and_the_others_untouched(start_server) -> None:
    server = await start_server("-w", "2")
    before = await server.wait_running(2)
    for name in ["consumer-2", "scheduler", "monitor"]:
        os.kill(before[name], signal.SIGKILL)

        async def replaced() -> dict[str, int] | None:
            pids = await server.pids()
            return pids if len(pids) == 4 and pids[name] != before[name] else None

        after = await wait_for(replaced, 2.0, f"{name} to be replaced")
        assert {n: p for n, p in after.items() if n != name} == {n: p for n, p in before.items() if n != name}
        assert gone(before[name])
        assert f"{name} (pid {before[name]}) died with exit code -9 (SIGKILL); restarting" in server.log
        assert await server.send(name, "ping") == "pong"
        before = after


async def test_an_actor_with_a_blocked_loop_is_killed_and_replaced(start_server) -> None:
    server = await start_server("-w", "1", "--heartbeat-timeout", "1.5")
    before = await server.wait_running(1)
    await server.tell("consumer-1", "block", 120)

    async def replaced() -> dict[str, int] | None:
        pids = await server.pids()
        return pids if pids.get("consumer-1", before["consumer-1"]) != before["consumer-1"] else None

    after = await wait_for(replaced, 15, "the blocked consumer to be replaced")
    assert gone(before["consumer-1"])
    assert after["monitor"] == before["monitor"] and after["scheduler"] == before["scheduler"]
    assert f"consumer-1 (pid {before['consumer-1']}): no heartbeat for" in server.log
    assert "its event loop is blocked; restarting" in server.log


async def test_sigterm_stops_everything_and_exits_zero(start_server) -> None:
    server = await start_server("-w", "2", env={"PQ_TEST_PLAIN": "1"})
    pids = await server.wait_running(2)
    server.signal(signal.SIGTERM)
    assert await server.wait_exit(20) == 0
    assert not any(psutil.pid_exists(pid) for pid in pids.values())
    for name, pid in pids.items():
        assert f"{name} (pid {pid}) stopped (server stopping): exited with code 0" in server.log
    assert "stopped with exit code 0" in server.log
    assert not os.path.exists(server.control)


async def test_graceful_stop_waits_for_on_stop_up_to_the_graceful_timeout(start_server) -> None:
    server = await start_server("-w", "2", "--graceful-timeout", "2")
    pids = await server.wait_running(2)
    await server.send("consumer-1", "set_drain", 0.5)
    await server.send("consumer-2", "set_drain", 60)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert await server.wait_exit(20) == 0
    assert time.monotonic() - started >= 1.9
    for name in ("consumer-1", "consumer-2"):
        assert f"{name} (pid {pids[name]}) stopped (server stopping): exited with code 0" in server.log
    assert f"consumer-2 (pid {pids['consumer-2']}): on_stop did not finish within 2.0 s" in server.log


async def test_a_second_signal_stops_at_once(start_server) -> None:
    server = await start_server("-w", "1", "--graceful-timeout", "60")
    pids = await server.wait_running(1)
    await server.send("consumer-1", "set_drain", 60)
    server.signal(signal.SIGINT)

    async def others_stopped() -> bool:
        return gone(pids["monitor"]) and gone(pids["scheduler"])

    await wait_for(others_stopped, 10, "the scheduler and monitor to stop")
    assert not gone(pids["consumer-1"]) and server.proc.poll() is None
    server.signal(signal.SIGTERM)
    assert await server.wait_exit(10) == 0
    assert not psutil.pid_exists(pids["consumer-1"])
    assert "arbiter (pid %d) stopping: received SIGINT" % server.pid in server.log
    assert "received SIGTERM while stopping; stopping at once" in server.log


async def test_sigttin_and_sigttou_change_the_number_of_consumers(start_server) -> None:
    server = await start_server("-w", "2")
    before = await server.wait_running(2)
    server.signal(signal.SIGTTIN)
    after = await server.wait_running(3)
    assert after["consumer-1"] == before["consumer-1"] and after["consumer-2"] == before["consumer-2"]
    server.signal(signal.SIGTTOU)
    await server.wait_running(2)
    server.signal(signal.SIGTTOU)
    after = await server.wait_running(1)
    assert after["consumer-1"] == before["consumer-1"]
    assert "consumer-2 (pid %d) stopped (removed by SIGTTOU)" % before["consumer-2"] in server.log


async def test_sighup_replaces_every_consumer_while_the_server_answers(start_server) -> None:
    server = await start_server("-w", "3")
    before = await server.wait_running(3)
    server.signal(signal.SIGHUP)
    answers = 0

    async def all_replaced() -> dict[str, int] | None:
        nonlocal answers
        for name in ("arbiter", "consumer-1", "consumer-2", "consumer-3"):
            assert await server.send(name, "ping") == "pong"
            answers += 1
        pids = await server.pids()
        consumers = [name for name in pids if name.startswith("consumer-")]
        if len(consumers) == 3 and all(pids[name] != before[name] for name in consumers):
            return pids
        return None

    after = await wait_for(all_replaced, 20, "every consumer to be replaced")
    assert answers >= 4
    assert after["monitor"] == before["monitor"] and after["scheduler"] == before["scheduler"]
    await server.wait_running(3)
    lines = [f"{name} (pid {before[name]}) stopped (replaced by pid {after[name]})"
             for name in ("consumer-1", "consumer-2", "consumer-3")]

    async def all_logged() -> bool:
        log = server.log
        return all(line in log for line in lines)

    await wait_for(all_logged, 10, "the arbiter to log each replaced consumer stopping")
    assert all(gone(before[name]) for name in ("consumer-1", "consumer-2", "consumer-3"))


async def test_replace_starts_the_new_actor_before_stopping_the_old(start_server) -> None:
    server = await start_server("-w", "1")
    before = await server.wait_running(1)
    for name in ("consumer-1", "monitor"):
        result = await server.send("arbiter", "replace", name)
        new, old = result["pid"], before[name]
        assert result == {"name": name, "pid": new, "replaced": old} and new != old
        assert (await server.send(name, "info"))["pid"] == new

        async def old_gone() -> bool:
            return gone(old)

        await wait_for(old_gone, 10, f"the old {name} to exit")
        stopped_line = f"{name} (pid {old}) stopped (replaced by pid {new})"

        async def logged() -> bool:
            return stopped_line in server.log

        await wait_for(logged, 10, f"the arbiter to log that the old {name} stopped")
        log = server.log
        assert log.index(f"{name} (pid {new}) started") < log.index(stopped_line)
    with pytest.raises(ActorNotFound, match="no actor named 'consumer-7' to replace"):
        await server.send("arbiter", "replace", "consumer-7")


async def test_an_actor_that_keeps_dying_stops_the_server(start_server) -> None:
    server = await start_server("-w", "1", "--max-restarts", "2", wait=False,
                                env={"PQ_TEST_CRASH": "monitor"})
    assert await server.wait_exit(30) == 1
    why = "after 2 restarts in the last 60.0 s (max_restarts 2, restart_period 60.0 s); stopping the server"
    assert why in server.log
    assert server.log.count("monitor (pid") >= 3
    assert not server.children()


async def test_no_orphans_when_the_arbiter_is_killed(start_server) -> None:
    server = await start_server("-w", "2")
    pids = await server.wait_running(2)
    server.signal(signal.SIGKILL)
    server.proc.wait(10)

    async def all_gone() -> bool:
        return all(gone(pid) for pid in pids.values())

    await wait_for(all_gone, 15, "every actor to exit after the arbiter was killed")
