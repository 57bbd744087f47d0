"""Periodic jobs on real servers: once per slot, one active scheduler per store, failover."""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import psutil
from e2e_helpers import wait_for

SCHEDULING = ("--schedule-periodic", "--scheduler-lease", "1")


def record_slots(api: Any) -> list[tuple[str, float]]:
    queued: list[tuple[str, float]] = []
    lock = threading.Lock()

    def on_queued(channel: str, event: str, task: Any) -> None:
        if task.name == "testperiodic":
            with lock:
                queued.append((task.id, task.time_queued))

    api.on_events("task", "queued", on_queued)
    return queued


def test_every_second_job_runs_once_per_slot(make_server: Any, app: Any) -> None:
    make_server(*SCHEDULING).start(1)
    api = app.api()
    queued = record_slots(api)
    wait_for(lambda: len(queued) >= 1, 15, what="first periodic task")
    time.sleep(3.2)
    ids = [task_id for task_id, _ in queued]
    assert len(ids) == len(set(ids))
    assert 3 <= len(ids) <= 5
    done = api.tasks.wait_for_result(ids[0], timeout=10).wait(15)
    assert (done.status_string, done.result) == ("SUCCESS", "OK")
    next_run = api.tasks.next_scheduled(["testperiodic"])["testperiodic"].timestamp()
    assert 0 < next_run - time.time() <= 1.01
    api.close().wait(10)


def test_two_schedulers_queue_each_slot_once_and_fail_over(make_server: Any, app: Any) -> None:
    servers = [make_server(*SCHEDULING).start(1), make_server(*SCHEDULING).start(1)]
    api = app.api()
    queued = record_slots(api)
    wait_for(lambda: len(queued) >= 1, 15, what="first periodic task")
    time.sleep(2.5)
    ids = [task_id for task_id, _ in queued]
    assert len(ids) == len(set(ids)) and 2 <= len(ids) <= 4

    holder = api.call(api.store.lock_holder("scheduler")).result(10)
    active = next(s for s in servers if f".{s.pid}:" in holder)  # the holder names its node
    other = servers[1 - servers.index(active)]
    tree = [active.pid, *(p.pid for p in psutil.Process(active.pid).children(recursive=True))]
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    before = len(queued)
    wait_for(lambda: len(queued) > before + 1, 15, what="the other scheduler to take over")
    takeover = queued[before + 1][1] - killed_at
    assert takeover < 5, f"took {takeover:.1f} s"
    ids = [task_id for task_id, _ in queued]
    assert len(ids) == len(set(ids))
    assert other.process.poll() is None
    api.close().wait(10)
