"""What the reliability scenarios are made of: broker setups, the server, the run log, the outcome.

A job run appends its task id to a run log (``chaos_jobs``); with the task
records in the data store it tells, for every id, whether it ran, how many
times, and how it ended.  Used by ``chaos_scenarios`` and the tests.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chaos_app
import psutil
from chaos_jobs import RUNS_ENV
from e2e_helpers import AMQP_URL, REDIS_URL, Server, wait_for

from pq.tasks import STATUS_STRINGS, SUCCESS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

APP = HERE / "chaos_app.py"
JOB = "chaos.run"
LEASE = 2.0  # seconds: the lease of a taken message, so a dead consumer's tasks come back quickly


# broker setups ---------------------------------------------------------------------------------
@dataclass
class Setup:
    """Where queues and records live: one ``data_store`` and an optional separate ``message_broker``."""

    name: str
    data_store: str
    message_broker: str | None = None
    namespace: str = field(default_factory=lambda: f"chaos-{uuid.uuid4().hex[:10]}")
    node_queues: list[str] = field(default_factory=list)  # of the servers run on it, for drop()

    def server_args(self) -> list[str]:
        args = ["--data-store", self.data_store, "--namespace", self.namespace]
        if self.message_broker:
            args += ["--message-broker", self.message_broker]
        return args

    def app(self, **settings: Any) -> Any:
        """The producer side's app, with the server's settings."""
        return chaos_app.app(data_store=self.data_store, message_broker=self.message_broker,
                             namespace=self.namespace, lease_timeout=LEASE, **settings)

    def drop(self) -> None:
        """Delete what this namespace left on the brokers (queues, records).

        RabbitMQ cannot list queues and a broker object drops those it used,
        so it first looks into the task and node queues (there is nothing left).
        """
        api = self.app().api()
        try:
            api.start().wait(30)
            if self.message_broker:
                queues = [*api.tasks.queues(), *self.node_queues]
                api.call(api.broker.fetch(queues, 1, 0.0, LEASE, "drop")).result(60)
            api.call(api.broker.drop()).result(60)
            if api.store is not api.broker:
                api.call(api.store.drop()).result(60)
        finally:
            api.close().wait(30)


def setup_for(name: str, folder: Path, redis_url: str = REDIS_URL, amqp_url: str = AMQP_URL) -> Setup:
    """``sqlite``, ``redis``, ``amqp+sqlite`` or ``amqp+redis``: a fresh namespace (and sqlite file)."""
    sqlite = f"sqlite:///{folder / 'chaos.sqlite3'}"
    stores = {"sqlite": sqlite, "redis": redis_url}
    broker, _, store = name.partition("+")
    if broker == "amqp":
        return Setup(name, stores[store], amqp_url)
    return Setup(name, stores[broker])


def shared_servers(name: str, **private: str) -> list[str]:
    """URLs of the shared servers a setup needs, leaving out those replaced by private ones."""
    wanted = (("redis", "redis_url", REDIS_URL), ("amqp", "amqp_url", AMQP_URL))
    return [url for part, key, url in wanted if part in name and key not in private]


# the server -------------------------------------------------------------------------------------
class ChaosServer(Server):
    """``chaos_app.py`` in a subprocess, writing its runs to ``runs``; consumers may die often."""

    def __init__(self, setup: Setup, folder: Path, *args: str, name: str = "server") -> None:
        self.runs = folder / "runs"
        self.runs.mkdir(exist_ok=True)
        self.setup = setup
        super().__init__(setup.data_store, folder / f"{name}.log", *setup.server_args(), "--lease-timeout",
                         str(LEASE), "--max-restarts", "1000000", *args, env={RUNS_ENV: str(self.runs)})

    def start(self, workers: int = 2) -> "ChaosServer":
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(APP), "-w", str(workers), *self.args],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )
        self.setup.node_queues.append(f"{chaos_app.app().cfg.name}.{socket.gethostname()}.{self.pid}")
        wait_for(lambda: self.process.poll() is not None or len(self.consumers()) >= workers, 60,
                 what="consumers to start")
        assert self.process.poll() is None, f"server exited {self.process.returncode}:\n{self.logs()[-3000:]}"
        return self

    def kill_tree(self) -> None:
        """SIGKILL the arbiter and every actor: a machine losing power."""
        if self.process is None or self.process.poll() is not None:
            return
        tree = [self.pid, *(p.pid for p in psutil.Process(self.pid).children(recursive=True))]
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(10)


class RunLog:
    """The lines the job wrote: runs per task id, read incrementally from every ``runs-*.log``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.counts: Counter[str] = Counter()
        self.runs: dict[str, list[tuple[int, float]]] = {}
        self._offsets: dict[Path, int] = {}
        self.total = 0

    def read(self) -> "RunLog":
        for path in sorted(self.folder.glob("runs-*.log")):
            with open(path, "rb") as fp:
                fp.seek(self._offsets.get(path, 0))
                data = fp.read()
            end = data.rfind(b"\n") + 1  # a line is complete once its newline is written
            self._offsets[path] = self._offsets.get(path, 0) + end
            for line in data[:end].decode().splitlines():
                task_id, pid, when = line.split()
                self.counts[task_id] += 1
                self.runs.setdefault(task_id, []).append((int(pid), float(when)))
                self.total += 1
        return self

    def missing(self, ids: list[str]) -> list[str]:
        return [task_id for task_id in ids if task_id not in self.counts]

    def duplicated(self, ids: list[str]) -> int:
        return sum(1 for task_id in ids if self.counts[task_id] > 1)

    def first_run_after(self, when: float) -> float | None:
        times = [t for runs in self.runs.values() for _, t in runs if t >= when]
        return min(times) if times else None


class Killer(threading.Thread):
    """SIGKILLs a random consumer of ``server`` every ``interval`` seconds until stopped."""

    def __init__(self, server: ChaosServer, interval: float) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.server, self.interval = server, interval
        self.kills: dict[int, float] = {}  # pid -> when it was killed
        self._stop_event = threading.Event()

    def run(self) -> None:
        rng = random.Random(7)
        while not self._stop_event.wait(self.interval):
            consumers = self.server.consumers()
            if not consumers:
                continue
            victim = rng.choice(consumers)
            try:
                victim.send_signal(signal.SIGKILL)
                self.kills[victim.pid] = time.time()
            except psutil.NoSuchProcess:
                continue

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


# reading the outcome ----------------------------------------------------------------------------
def queue_tasks(api: Any, count: int, lag: float = 0.0, chunk: int = 1000, start: int = 0) -> list[str]:
    """Queue ``count`` chaos runs with queue_many, ``chunk`` per round trip; their ids."""
    ids: list[str] = []
    for first in range(start, start + count, chunk):
        size = min(chunk, start + count - first)
        ids += api.tasks.queue_many(JOB, [{"lag": lag, "n": first + i} for i in range(size)]).wait(120)
    return ids


def statuses(api: Any, ids: list[str], chunk: int = 500) -> Counter[str]:
    """How many of ``ids`` have a record in each state (``MISSING`` for none)."""
    found: Counter[str] = Counter()
    for first in range(0, len(ids), chunk):
        bodies = api.call(api.store.get_tasks(ids[first:first + chunk])).result(60)
        for body in bodies:
            found[STATUS_STRINGS.get(api.decode_task(body).status, "?") if body else "MISSING"] += 1
    return found


def pending(api: Any) -> int:
    """Messages still ready, delayed or leased on the application's queues (as far as the broker can tell)."""
    sizes = api.tasks.sizes().wait(60)
    return sum(size.ready + size.delayed + size.inflight for size in sizes.values())


def settle(api: Any, log: RunLog, ids: list[str], timeout: float) -> Counter[str]:
    """Wait until every id ran, no message is left, and every record is final; the record states.

    A task whose consumer died after its run but before its ack runs again
    once its lease ends, so the check holds for a lease and a half of quiet.
    """
    deadline = time.monotonic() + timeout
    wait_for(lambda: not log.read().missing(ids), timeout, 0.2, what="every task to run")
    while True:
        wait_for(lambda: pending(api) == 0, max(1.0, deadline - time.monotonic()), 0.2, what="queues to drain")
        runs = log.read().total
        found = statuses(api, ids)
        time.sleep(LEASE * 1.5)
        if found[STATUS_STRINGS[SUCCESS]] == len(ids) and log.read().total == runs and pending(api) == 0:
            return found
        if time.monotonic() > deadline:
            return statuses(api, ids)


@dataclass
class Result:
    """One row of docs/reliability.md."""

    scenario: str
    broker: str
    tasks: int
    lost: int
    duplicated: int
    recovery: float | None
    elapsed: float
    states: dict[str, int] = field(default_factory=dict)
    notes: str = ""

    @property
    def stuck(self) -> int:
        """Tasks whose record is not SUCCESS (STARTED, QUEUED, FAILURE or missing)."""
        return self.tasks - self.states.get("SUCCESS", 0)

    def row(self) -> str:
        recovery = "-" if self.recovery is None else f"{self.recovery:.1f} s"
        notes = self.notes + (f"; NOT ALL SUCCESS: {self.states}" if self.stuck else "")
        return (f"| {self.scenario} | {self.broker} | {self.tasks:,} | {self.lost} | {self.duplicated} | "
                f"{recovery} | {self.elapsed:.0f} s | {notes} |")


def outcome(scenario: str, setup: Setup, ids: list[str], log: RunLog, found: Counter[str],
            recovery: float | None, started: float, notes: str = "") -> Result:
    return Result(scenario, setup.name, len(ids), len(log.missing(ids)), log.duplicated(ids), recovery,
                  time.monotonic() - started, dict(found), notes)
