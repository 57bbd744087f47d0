"""sqlite only: URLs, durability, real processes sharing one file, locks held elsewhere, cleanup."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import AsyncIterator

import pytest

from pq.brokers import Envelope, create, sqlite_thread
from pq.brokers.sqlite import SqliteStore
from pq.exceptions import BrokerError, ImproperlyConfigured

from .helpers import Recorder, envelopes

CHILD = r"""
import asyncio, json, sys, time
from pq.brokers import Envelope, create

async def main(url, namespace, action):
    store = create(url, namespace=namespace)
    await store.connect()
    print("ready", flush=True)
    if action == "enqueue":
        await store.enqueue([Envelope("x", "q", b"from child")])
    elif action == "publish":
        await store.publish("c", "hello", b"from child")
    elif action == "consume":
        seen = []
        while got := await store.fetch(["q"], 10, 1.5, 10, "child"):
            seen.extend(d.id for d in got)
            for d in got:
                await store.publish("c", "acked", d.id.encode())
            await store.ack(got)
            await store.incr("acked", len(got))
        print(json.dumps(seen, separators=(",", ":")), flush=True)
    print(time.time(), flush=True)
    await store.close()

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=["inotify", "polling"])
async def store(
    request: pytest.FixtureRequest, url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SqliteStore]:
    """A store in this process; ``polling`` is how it runs where inotify is missing."""
    if request.param == "polling":
        monkeypatch.setattr(sqlite_thread, "watch_file", lambda path: None)
    store = SqliteStore(url, namespace="main")
    await store.connect()
    yield store
    await store.close()


async def child(url: str, action: str) -> asyncio.subprocess.Process:
    """A Python process using the same file; returns once it has connected."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        url,
        "main",
        action,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    if line.strip() != b"ready":
        _, err = await proc.communicate()
        pytest.fail(f"child failed: {err.decode()}")
    return proc


async def output(proc: asyncio.subprocess.Process) -> list[str]:
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert b"locked" not in err and b"Traceback" not in err, err.decode()
    return out.decode().split()


def test_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert SqliteStore("sqlite:///data/pq.db").path == str(tmp_path / "data" / "pq.db")
    assert SqliteStore("sqlite:////var/lib/pq.db").path == "/var/lib/pq.db"
    assert isinstance(create("sqlite:///pq.db"), SqliteStore)
    for bad in ("sqlite://", "sqlite:///", "sqlite://host/pq.db", "sqlite:///:memory:"):
        with pytest.raises(ImproperlyConfigured, match="sqlite:///"):
            SqliteStore(bad)
    with pytest.raises(ImproperlyConfigured, match="synchronous"):
        SqliteStore("sqlite:///pq.db", synchronous="sometimes")


async def test_durable_in_wal_mode(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'dir' / 'pq.db'}"
    first = SqliteStore(url, namespace="main")
    await first.enqueue(envelopes("q", 3))
    await first.set_task("t", b"record")
    await first.close()
    second = SqliteStore(url, namespace="main")
    assert [d.id for d in await second.fetch(["q"], 10, 0, 5, "c")] == ["m0", "m1", "m2"]
    assert await second.get_tasks(["t"]) == [b"record"]
    await second.close()
    with sqlite3.connect(tmp_path / "new" / "dir" / "pq.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_fetch_wakes_on_enqueue_by_another_process(url: str, store: SqliteStore) -> None:
    fetching = asyncio.create_task(store.fetch(["q"], 5, 20, 5, "c"))
    proc = await child(url, "enqueue")
    got = await asyncio.wait_for(fetching, 20)
    woke = time.time()
    sent = float((await output(proc))[-1])
    assert [(d.id, d.body) for d in got] == [("x", b"from child")]
    assert woke - sent < 0.5


async def test_events_reach_another_process(url: str, store: SqliteStore) -> None:
    got = Recorder()
    await store.subscribe(got)
    proc = await child(url, "publish")
    await got.wait(1, timeout=20)
    arrived = time.time()
    sent = float((await output(proc))[-1])
    assert got.events == [("c", "hello", b"from child")]
    assert arrived - sent < 0.5


async def test_several_processes_consume_each_message_once(url: str, store: SqliteStore) -> None:
    acked = Recorder()
    await store.subscribe(acked)
    consumers = [await child(url, "consume") for _ in range(3)]
    for batch in range(30):
        await store.enqueue(envelopes("q", 10, prefix=f"b{batch}-"))
    results = [await output(proc) for proc in consumers]
    seen = [i for words in results for i in json.loads(words[0])]
    expected = sorted(f"b{batch}-{i}" for batch in range(30) for i in range(10))
    assert sorted(seen) == expected, "every message once: none lost, none twice"
    assert await store.get_counters(["acked"]) == {"acked": 300}
    assert sorted(p.decode() for _, _, p in await acked.wait(300, timeout=10)) == expected
    assert (await store.sizes(["q"]))["q"].as_dict() == {
        "ready": 0,
        "delayed": 0,
        "inflight": 0,
        "dead": 0,
    }


async def test_a_write_lock_held_elsewhere_is_waited_out(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    store = SqliteStore(f"sqlite:///{path}", namespace="main", busy_timeout=0.02)
    await store.connect()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    writing = asyncio.create_task(store.enqueue(envelopes("q", 1)))
    lag = 0.0
    for _ in range(25):
        tick = time.monotonic()
        await asyncio.sleep(0.02)
        lag = max(lag, time.monotonic() - tick - 0.02)
    assert not writing.done()
    blocker.execute("COMMIT")
    blocker.close()
    await asyncio.wait_for(writing, 5)
    assert lag < 0.1, "sqlite calls must not block the event loop"
    assert (await store.sizes(["q"]))["q"].ready == 1
    await store.close()


async def test_a_lock_held_too_long_is_a_broker_error(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    store = SqliteStore(f"sqlite:///{path}", namespace="main", busy_timeout=0.01, retry_for=0.2)
    await store.connect()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BrokerError, match="busy.db"):
            await store.enqueue(envelopes("q", 1))
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await store.enqueue(envelopes("q", 1))
    await store.close()


async def test_cleanup_prunes_expired_rows_and_old_events(tmp_path: Path) -> None:
    path = tmp_path / "clean.db"
    store = SqliteStore(f"sqlite:///{path}", namespace="main", event_ttl=0)
    keep = SqliteStore(f"sqlite:///{path}", namespace="keep")
    await store.set_task("t", b"x", ttl=0.01)
    await store.revoke("t", 0.01)
    await store.acquire_lock("l", "a", 0.01)
    await store.acquire_slot("s", 1, "a", 0.01)
    await keep.set_task("t", b"kept")
    for i in range(3):
        await store.publish("c", "e", b"%d" % i)
    await asyncio.sleep(0.05)
    await store.cleanup()
    with sqlite3.connect(path) as raw:
        counts = {
            t: raw.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("pq_records", "pq_leases", "pq_events")
        }
    assert counts == {"pq_records": 1, "pq_leases": 0, "pq_events": 0}
    assert await keep.get_tasks(["t"]) == [b"kept"]
    await store.close()
    await keep.close()


async def test_closing_wakes_a_blocked_fetch(store: SqliteStore) -> None:
    fetching = asyncio.create_task(store.fetch(["q"], 1, 20, 5, "c"))
    await asyncio.sleep(0.05)
    await store.close()
    assert await asyncio.wait_for(fetching, 2) == []
    assert os.path.exists(store.path)
    await store.enqueue([Envelope("after", "q", b"")])
    assert (await store.sizes(["q"]))["q"].ready == 1
