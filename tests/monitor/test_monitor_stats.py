"""``api.tasks.stats()`` and the monitor actor, against real servers on sqlite."""
from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, Callable

import pytest
from monitor_helpers import Server, make_api, wait_for

from pq.actors.monitor import MonitorActor
from pq.app import PulsarQueue
from pq.brokers.base import Envelope
from pq.stats import Throughput, counter_key, minute_of, throughput


@pytest.fixture(scope="module")
def server(launch: Callable[..., Server]) -> Server:
    return launch("--task-queues", "default,stats-q,stats-fresh")


def test_stats_counts_queues_throughput_servers_and_consumers(server: Server) -> None:
    api = make_api(server.store)
    try:
        futures = [api.tasks.queue("addition", a=i, b=1, queue="stats-q") for i in range(4)]
        futures.append(api.tasks.queue("cpubound", error=True, queue="stats-q"))
        assert [f.wait(60).status_string for f in futures] == ["SUCCESS"] * 4 + ["FAILURE"]
        api.tasks.queue("addition", queue="stats-parked", callback=False).wait(10)
        api.tasks.queue("addition", queue="stats-q", delay=600, callback=False).wait(10)

        def settled() -> Any:
            stats = api.tasks.stats(queues=["stats-q", "stats-parked"]).wait(10)
            return stats if stats["queues"][0]["totals"]["success"] == 4 else None

        stats = wait_for(settled, 15, what="the consumers to flush their counters")
        row, parked = stats["queues"]
        assert row["name"] == "stats-q"
        assert row["totals"] == {"success": 4, "failure": 1, "revoked": 0, "retry": 0}
        assert (row["ready"], row["delayed"], row["inflight"], row["dead"]) == (0, 1, 0, 1)
        assert row["last_minute"]["success"] >= 3 and row["done_last_minute"] >= row["failed_last_minute"] >= 1
        assert (parked["name"], parked["ready"]) == ("stats-parked", 1)
        assert stats["totals"]["ready"] == 1 and stats["totals"]["dead"] == 1

        [report] = stats["servers"]
        assert report["pid"] == server.pid and report["broker"] == server.store
        kinds = sorted(actor["kind"] for actor in report["actors"])
        assert kinds == ["arbiter", "consumer", "consumer", "monitor", "scheduler"]
        consumers = stats["consumers"]
        assert sorted(c["pid"] for c in consumers) == sorted(server.consumer_pids())
        for consumer in consumers:
            assert consumer["rss"] > 1024 * 1024 and consumer["open_files"] >= 0 and consumer["cpu_percent"] >= 0
            assert consumer["state"] == "running" and consumer["server"] == report["node"]
        wait_for(lambda: sum(c["processed"] for c in api.tasks.stats().wait(10)["consumers"]) >= 5, 10,
                 what="the consumers' task counts in the reports")
    finally:
        api.close().wait(10)


def test_a_fresh_api_hears_every_server_of_the_cluster_at_once(server: Server, launch: Callable[..., Server]) -> None:
    other = Server(server.store, server.log.with_name("other.log"), "--task-queues", "stats-fresh")
    try:
        other.start(1)
        api = make_api(server.store)
        began = time.monotonic()
        stats = api.tasks.stats().wait(10)
        assert time.monotonic() - began < 2.5  # a ping makes each monitor report now
        assert sorted(s["pid"] for s in stats["servers"]) == sorted([server.pid, other.pid])
        assert len(stats["consumers"]) == 3
        nodes = {s["node"] for s in stats["servers"]}  # each server's node queue is listed too
        assert {q["name"] for q in stats["queues"]} == {"default", "stats-q", "stats-fresh"} | nodes
        api.close().wait(10)
    finally:
        other.stop()


def test_the_monitor_replaces_a_consumer_past_max_memory(launch: Callable[..., Server]) -> None:
    server = launch("--max-memory", "1", workers=1)
    first = set(server.consumer_pids())
    try:
        wait_for(lambda: "consumer-1 replaced: pid" in server.logs(), 30, what="the monitor to replace consumer-1")
        assert "past max_memory=1 MiB; replacing it" in server.logs()
        wait_for(lambda: set(server.consumer_pids()) - first, 10, what="a new consumer process")
    finally:
        assert server.stop() == 0


async def test_the_monitor_sweeps_expired_leases() -> None:
    app = PulsarQueue(data_store="memory://monitor-sweep", lease_timeout=1)
    ours, theirs = socket.socketpair()
    monitor = MonitorActor(app, "monitor", theirs)
    monitor.api = app.api()
    await monitor.api.start()
    broker = monitor.api.broker
    try:
        await broker.enqueue([Envelope("t1", "sweep", b"{}")])
        await broker.fetch(["sweep"], 1, 0.1, 0.2, "a consumer that dies")
        assert (await broker.sizes(["sweep"]))["sweep"].inflight == 1
        deadline = time.monotonic() + 5
        while not monitor.recovered and time.monotonic() < deadline:  # until the lease expires
            await monitor._recover()
            await asyncio.sleep(0.05)
        assert monitor.recovered == 1
        assert (await broker.sizes(["sweep"]))["sweep"].ready == 1
    finally:
        await monitor.api.close()
        ours.close()
        theirs.close()


async def test_throughput_counters_are_batched_and_windowed() -> None:
    app = PulsarQueue(data_store="memory://monitor-counters")
    api = app.api()
    await api.start()
    store = api.store
    calls: list[str] = []
    incr = store.incr

    async def counting(key: str, amount: int = 1) -> int:
        calls.append(key)
        return await incr(key, amount)

    store.incr = counting
    try:
        counts = Throughput()
        for _ in range(50):
            counts.record("q", "success")
        counts.record("q", "failure")
        await counts.flush(store)
        assert len(calls) <= 6  # per queue, outcome and minute, plus the totals: not per task
        await counts.flush(store)
        assert len(calls) <= 6
        now = time.time()
        figures = (await throughput(store, ["q"], now))["q"]
        assert figures["totals"]["success"] == 50 and figures["last_minute"]["success"] == 50
        previous = minute_of(now) - 1
        await store.incr(counter_key("r", "success", previous), 60)
        at_half = previous * 60 + 90  # half of the previous minute is still within the last 60 s
        assert (await throughput(store, ["r"], at_half))["r"]["last_minute"]["success"] == 30
    finally:
        await api.close()


async def test_minute_counters_are_deleted_once_nobody_reads_them() -> None:
    app = PulsarQueue(data_store="memory://monitor-counter-sweep")
    api = app.api()
    await api.start()
    store = api.store
    try:
        if time.time() % 60 > 58:  # the test reads the clock twice: both in one minute
            await asyncio.sleep(60.1 - time.time() % 60)
        minute = minute_of(time.time())
        old = [counter_key("q", "success", minute - age) for age in (90, 59, 4, 3)]
        kept = [counter_key("q", "success", minute - age) for age in (2, 1, 0)] + [counter_key("q", "success")]
        for key in old + kept:
            await store.incr(key)
        counts = Throughput()
        counts.record("q", "success")
        await counts.flush(store)
        values = await store.get_counters(old + kept)
        assert [values[key] for key in old] == [1, 0, 0, 0], "up to an hour back, older ones are out of reach"
        assert [values[key] for key in kept] == [1, 1, 2, 2]
        counts.record("q", "failure")
        await counts.flush(store)
        assert (await store.get_counters([counter_key("q", "success")]))[counter_key("q", "success")] == 2
    finally:
        await api.close()
