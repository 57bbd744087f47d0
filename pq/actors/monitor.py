"""The monitor actor: figures of every actor, memory recycling, lease recovery and the dashboard.

Every ``REPORT_INTERVAL`` seconds it asks the arbiter for its actors and each
actor for its ``info`` (psutil figures, plus the worker's for consumers),
replaces a consumer whose resident memory is past ``max_memory`` MiB, and
publishes the server's report on the ``monitor`` channel, where
``api.tasks.stats()``, the ``pq`` command and every dashboard of the cluster
read it. A ``ping`` on that channel gets the latest report at once. Every
half ``lease_timeout`` it calls ``broker.recover()`` so the tasks of a dead
consumer go back to their queues on brokers that need a sweep.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import psutil

from ..brokers import redact_url
from ..dashboard import Dashboard
from ..exceptions import MailboxError
from ..stats import MONITOR, PING, REPORT, REPORT_INTERVAL, cluster_view
from .actor import Actor

if TYPE_CHECKING:
    from ..producer import Producer

logger = logging.getLogger("pq.monitor")

MIB = 1024 * 1024
INFO_TIMEOUT = 2.0  # seconds an actor has to answer ``info``
REPLACE_TIMEOUT = 60.0  # seconds a replacement consumer has to start
FIGURES = ("cpu_percent", "rss", "open_files", "fds", "threads", "uptime")
KIND_FIGURES = {
    "consumer": ("processed", "inflight", "concurrent_tasks", "queues"),
    "scheduler": ("schedule_periodic", "active", "queued"),
    "monitor": ("dashboard",),
}


def merge(record: dict[str, Any], info: Any) -> dict[str, Any]:
    """An actor's row: the arbiter's record, with the figures of its own ``info`` when it answered."""
    row = dict(record)
    if isinstance(info, BaseException):
        row["error"] = str(info) or type(info).__name__
    elif isinstance(info, dict) and info.get("pid") == record["pid"]:
        row.update((key, info[key]) for key in FIGURES + KIND_FIGURES.get(record["kind"], ()) if key in info)
    return row


class MonitorActor(Actor):
    """Watches the server; named ``monitor``."""

    kind = "monitor"
    dashboard: Dashboard | None = None
    report: dict[str, Any] | None = None
    recovered = 0  # tasks of dead consumers returned to their queues
    api: Producer
    _runner: asyncio.Future | None = None

    async def on_start(self) -> None:
        self.api = self.app.api()
        await self.api.start_retrying(self.name)
        self.cluster = cluster_view(self.api)
        self.host = socket.gethostname()
        self._arbiter = psutil.Process(os.getppid())
        self._arbiter.cpu_percent()
        self._replacing: set[str] = set()
        self._answering: asyncio.Future | None = None
        if self.cfg.dashboard:
            await self._serve_dashboard()
        self.api.on_events(MONITOR, PING, self._on_ping)
        self._runner = asyncio.ensure_future(self._run())
        self._tasks.add(self._runner)

    async def _serve_dashboard(self) -> None:
        dashboard = Dashboard(self.api, self.cfg.dashboard_host, self.cfg.dashboard)
        try:
            await dashboard.start()
        except OSError as exc:
            await dashboard.close()
            logger.error("cannot serve the dashboard on %s:%s (%s); running without it: "
                         "pick a free port with --dashboard", self.cfg.dashboard_host, self.cfg.dashboard, exc)
            return
        self.dashboard = dashboard
        logger.info("dashboard at %s", dashboard.url)

    async def on_stop(self) -> None:
        """Stop reporting and serving; ``on_start`` may have been cut short by an early stop."""
        if self._runner is not None:
            self._runner.cancel()
        if self.dashboard is not None:
            await self.dashboard.close()
        if hasattr(self, "api"):
            self.api.remove_event_callback(MONITOR, PING, self._on_ping)
            await self.api.close()

    def extra_info(self) -> dict[str, Any]:
        return {"dashboard": self.dashboard.url if self.dashboard is not None else None,
                "recovered": self.recovered}

    # the loop

    async def _run(self) -> None:
        next_recovery = 0.0
        while not self.stop_requested.is_set():
            began = time.monotonic()
            try:
                self.report = await self.collect()
                self._check_memory(self.report["actors"])
                await self.api.publish(MONITOR, REPORT, self.report)
            except Exception as exc:
                logger.warning("monitor cannot report the server's figures: %s", exc)
            if began >= next_recovery:
                next_recovery = began + self.cfg.lease_timeout / 2
                await self._recover()
            await asyncio.sleep(max(0.05, REPORT_INTERVAL - (time.monotonic() - began)))

    async def collect(self) -> dict[str, Any]:
        """This server's report: the arbiter and every actor, with their figures."""
        arbiter = await self.send("arbiter", "info")
        records = arbiter["actors"]
        asked = {r["name"]: r for r in records if r["state"] == "running" and r["name"] != self.name}
        replies = await asyncio.gather(
            *(self.send(name, "info", timeout=INFO_TIMEOUT) for name in asked), return_exceptions=True
        )
        answers: dict[str, Any] = dict(zip(asked, replies))
        answers[self.name] = self.info()
        actors = [self._arbiter_row(arbiter["arbiter"])]
        actors += [merge(r, answers.get(r["name"]) if r["state"] == "running" else None) for r in records]
        cfg = self.cfg
        return {
            "node": self.api.node_name, "name": cfg.name, "host": self.host,
            "pid": arbiter["arbiter"]["pid"], "started": arbiter["arbiter"]["started"], "time": time.time(),
            "broker": redact_url(cfg.broker_url), "data_store": redact_url(cfg.data_store),
            "queues": self.api.manager.queues(), "workers": cfg.workers, "max_memory": cfg.max_memory,
            "dashboard": self.dashboard.url if self.dashboard is not None else None,
            "actors": actors,
        }

    def _arbiter_row(self, arbiter: dict[str, Any]) -> dict[str, Any]:
        row = {"name": "arbiter", "kind": "arbiter", "pid": arbiter["pid"], "started": arbiter["started"],
               "uptime": arbiter["uptime"], "state": "stopping" if arbiter["stopping"] else "running"}
        process = self._arbiter
        try:
            with process.oneshot():
                row.update(cpu_percent=process.cpu_percent(), rss=process.memory_info().rss,
                           open_files=len(process.open_files()), fds=process.num_fds(),
                           threads=process.num_threads())
        except psutil.Error as exc:
            row["error"] = str(exc)
        return row

    def _check_memory(self, actors: list[dict[str, Any]]) -> None:
        """Replace the consumers past ``max_memory`` MiB, one replacement per consumer at a time."""
        limit = self.cfg.max_memory * MIB
        if not limit:
            return
        for actor in actors:
            name, rss = actor["name"], actor.get("rss")
            if actor["kind"] != "consumer" or actor["state"] != "running" or not rss or rss <= limit:
                continue
            if name in self._replacing:
                continue
            logger.warning("%s (pid %d) uses %.0f MiB, past max_memory=%d MiB; replacing it",
                           name, actor["pid"], rss / MIB, self.cfg.max_memory)
            self._replacing.add(name)
            self._tasks.add(asyncio.ensure_future(self._replace(name)))

    async def _replace(self, name: str) -> None:
        try:
            reply = await self.send("arbiter", "replace", name, timeout=REPLACE_TIMEOUT)
            logger.info("%s replaced: pid %s took over from pid %s", name, reply["pid"], reply["replaced"])
        except MailboxError as exc:
            logger.warning("cannot replace %s: %s", name, exc)
        finally:
            self._replacing.discard(name)

    async def _recover(self) -> None:
        assert self.api.broker is not None
        try:
            recovered = await self.api.broker.recover()
        except Exception as exc:
            logger.warning("cannot recover expired leases from %s: %s", self.api.broker.safe_url, exc)
            return
        if recovered:
            self.recovered += recovered
            logger.info("returned %d task(s) of dead consumers to their queues", recovered)

    # pings

    def _on_ping(self, channel: str, event: str, message: Any) -> None:
        """Answer with the latest report; pings arriving while an answer is on its way share it."""
        if self.report is None or (self._answering is not None and not self._answering.done()):
            return
        report = {**self.report, "time": time.time()}
        self._answering = asyncio.ensure_future(self.api.publish(MONITOR, REPORT, report))
        self._tasks.add(self._answering)
        self._answering.add_done_callback(self._answered_ping)

    def _answered_ping(self, task: asyncio.Future) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("cannot answer a stats ping: %s", task.exception())
