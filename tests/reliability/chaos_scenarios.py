"""The reliability scenarios, shared by the fast tests and the heavy runs (``benchmarks/chaos.py``).

Each runs a real server (``chaos_app.py``) in a subprocess on one broker
setup, abuses it (SIGKILLed consumers, a broker killed and restarted, a
long soak), then checks every task id against two witnesses: the run log
the job writes and the task records in the data store.  Each returns a
:class:`~chaos_harness.Result`, one row of the table in docs/reliability.md.
"""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from chaos_brokers import PrivateBroker
from chaos_harness import ChaosServer, Killer, Result, RunLog, Setup, outcome, queue_tasks, settle, setup_for
from e2e_helpers import wait_for


def killed_workers(setup: Setup, folder: Path, tasks: int, consumers: int = 4, interval: float = 0.5,
                   lag: float = 0.002, timeout: float = 300.0) -> Result:
    """``tasks`` through ``consumers`` consumers while one is SIGKILLed every ``interval`` seconds.

    Recovery time: the longest time from a kill until the consumer that
    replaced the dead one ran a task (see :func:`replacement_time`).
    """
    server = ChaosServer(setup, folder).start(consumers)
    api = setup.app().api()
    killer = Killer(server, interval)
    log = RunLog(server.runs)
    started = time.monotonic()
    try:
        killer.start()
        ids = queue_tasks(api, tasks, lag)
        wait_for(lambda: not log.read().missing(ids), timeout, 0.2, what="every task to run once")
        killer.stop()
        found = settle(api, log, ids, timeout)
        alive = server.process.poll() is None
        notes = f"{len(killer.kills)} consumers killed" + ("" if alive else "; SERVER EXITED")
        return outcome("killed workers", setup, ids, log, found, replacement_time(server, killer, log), started, notes)
    finally:
        killer.stop()
        api.close().wait(30)
        server.stop()


ACTOR_LINE = re.compile(r"(consumer-\d+) \(pid (\d+)\) (started|died)")


def replacement_time(server: ChaosServer, killer: Killer, log: RunLog) -> float | None:
    """The longest time from a kill until the replacement in that consumer's slot ran its first task.

    The arbiter's log names each slot's pids in order, so the pid after a
    killed one in its slot is its replacement; replacements killed before
    running anything are left out.
    """
    slots: dict[str, list[int]] = {}
    for slot, pid, what in ACTOR_LINE.findall(server.logs()):
        if what == "started":
            slots.setdefault(slot, []).append(int(pid))
    first_run: dict[int, float] = {}
    for runs in log.runs.values():
        for pid, when in runs:
            first_run[pid] = min(when, first_run.get(pid, when))
    waits = []
    for pids in slots.values():
        for killed, replacement in zip(pids, pids[1:]):
            if killed in killer.kills and replacement in first_run:
                waits.append(first_run[replacement] - killer.kills[killed])
    return max(waits, default=None)


def broker_outage(setup: Setup, folder: Path, broker: PrivateBroker | None, tasks: int,
                  consumers: int = 2, lag: float = 0.002, down: float = 2.0, timeout: float = 300.0) -> Result:
    """The broker killed (SIGKILL) and restarted mid-run while a producer keeps queueing.

    ``broker`` is the private server behind ``setup``; None means sqlite, where
    the whole pq server is killed instead and started again on the same file.
    Recovery time: from the broker (or server) being back until the first
    task ran after it.  Tasks whose ``queue_many`` call raised during the
    outage were never accepted: they are reported, not counted as lost.
    """
    server = ChaosServer(setup, folder).start(consumers)
    api = setup.app().api()
    log = RunLog(server.runs)
    accepted: list[str] = []
    refused = 0
    stop = threading.Event()

    def produce() -> None:
        nonlocal refused
        index = tasks
        while not stop.is_set():
            try:
                accepted.extend(queue_tasks(api, 20, lag, start=index))
            except Exception:  # the outage: the call failed, the producer goes on
                refused += 20
            index += 20
            stop.wait(0.05)

    started = time.monotonic()
    producer = threading.Thread(target=produce, name="chaos-producer", daemon=True)
    try:
        ids = queue_tasks(api, tasks, lag)
        producer.start()
        wait_for(lambda: len(log.read().counts) >= tasks // 4, timeout, 0.1, what="a quarter of the tasks to run")
        if broker is None:
            server.kill_tree()
            time.sleep(down)
            back = time.time()  # the pq server's own start counts in the recovery
            server.start(consumers)
        else:
            broker.kill()
            time.sleep(down)
            broker.start()
            back = time.time()
        wait_for(lambda: log.read().first_run_after(back), timeout, 0.1, what="a task to run after the restart")
        recovery = log.first_run_after(back) - back
        so_far = len(accepted)
        wait_for(lambda: len(accepted) >= so_far + 100, 60, 0.1, what="the producer to be accepted again")
        stop.set()
        producer.join(60)
        ids += accepted
        found = settle(api, log, ids, timeout)
        what = "pq server (arbiter and actors) SIGKILLed" if broker is None else "broker SIGKILLed"
        notes = (f"{what}, down {down:.0f} s; a producer queueing all along had {len(accepted)} accepted, "
                 f"{refused} refused with an error")
        return outcome("broker outage", setup, ids, log, found, recovery, started, notes)
    finally:
        stop.set()
        if producer.is_alive():
            producer.join(60)
        api.close().wait(30)
        server.stop()


def soak(setup: Setup, folder: Path, tasks: int, baseline_at: int, chunk: int = 2000, backlog: int = 10000,
         timeout: float = 1800.0) -> tuple[Result, list[tuple[int, int]]]:
    """``tasks`` through one consumer; its RSS at ``baseline_at`` tasks and at the end.

    Tasks are fed so that at most ``backlog`` wait, as a steady producer
    would.  Returns the result (notes: the RSS growth) and the RSS samples
    ``(tasks run, bytes)``.
    """
    server = ChaosServer(setup, folder, "--concurrent-tasks", "10").start(1)
    api = setup.app().api()
    log = RunLog(server.runs)
    consumer = server.consumers()[0]
    samples: list[tuple[int, int]] = []
    ids: list[str] = []
    started = time.monotonic()
    step = max(baseline_at // 2, 1)
    try:
        next_sample = 0
        while len(ids) < tasks or log.read().total < tasks:
            done = log.read().total
            if len(ids) < tasks and len(ids) - done < backlog:
                ids += queue_tasks(api, min(chunk, tasks - len(ids)), 0.0, chunk, start=len(ids))
            if done >= next_sample:
                samples.append((done, consumer.memory_info().rss))
                next_sample = (done // step + 1) * step
            if time.monotonic() - started > timeout:
                break
            time.sleep(0.05)
        found = settle(api, log, ids, 120)
        samples.append((log.read().total, consumer.memory_info().rss))
        base = next(rss for done, rss in samples if done >= baseline_at)
        notes = (f"consumer RSS {base / 2**20:.1f} MiB at {baseline_at:,} tasks, "
                 f"{samples[-1][1] / 2**20:.1f} MiB at the end ({rss_growth(samples, baseline_at):+.1%})")
        return outcome("soak", setup, ids, log, found, None, started, notes), samples
    finally:
        api.close().wait(30)
        server.stop()


def rss_growth(samples: list[tuple[int, int]], baseline_at: int) -> float:
    """Growth of the RSS from the first sample at ``baseline_at`` tasks to the last."""
    base = next(rss for done, rss in samples if done >= baseline_at)
    return (samples[-1][1] - base) / base


def private_urls(name: str, broker: PrivateBroker | None) -> dict[str, str]:
    """``setup_for`` arguments putting the private server in place of the shared one (the broker's)."""
    if broker is None:
        return {}
    return {"redis_url" if name == "redis" else "amqp_url": broker.url}


def outage_setup(name: str, folder: Path, broker: PrivateBroker | None) -> Setup:
    """The setup of an outage run: the private server's URL in place of the shared one's."""
    return setup_for(name, folder, **private_urls(name, broker))
