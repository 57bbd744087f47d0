"""Cluster figures: task throughput counters, the servers' reports and ``api.tasks.stats()``.

Throughput: each consumer counts the tasks it finishes per queue and outcome
in memory and adds them to per-minute counters of the data store every few
seconds, one ``incr`` per queue, outcome and minute rather than one per task,
plus a running total for Prometheus. The last minute's figure is a sliding
window: the current minute plus the share of the previous one still within
60 seconds. A minute's counters are read for two minutes; each consumer's
flush then deletes those of its queues older than that (up to an hour back
at its first flush), so the store holds a few minutes of them, not all.

Servers: each server's monitor publishes a ``stats`` report on the
``monitor`` channel every few seconds, and at once when a ``ping`` event asks.
A ``ClusterView`` keeps the reports heard recently. Events reach every data
store, where listing keys would not, and a server that stops reporting drops
out after ``REPORT_MAX_AGE`` seconds.
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

from .brokers import redact_url

if TYPE_CHECKING:
    from .brokers.base import DataStore
    from .producer import Producer

logger = logging.getLogger("pq.stats")

MONITOR = "monitor"  # channel of the monitors' reports
REPORT = "stats"  # a server's report, every REPORT_INTERVAL seconds
PING = "ping"  # asks every monitor to report now
REPORT_INTERVAL = 2.0
REPORT_MAX_AGE = 4 * REPORT_INTERVAL
REPLY_GRACE = 0.3  # seconds to wait for more servers after the first one answers a ping
OUTCOMES = ("success", "failure", "revoked", "retry")
FAILED = ("failure", "revoked")


def minute_of(when: float) -> int:
    return int(when // 60)


def counter_key(queue: str, outcome: str, minute: int | None = None) -> str:
    """``stats:<outcome>:<queue>:<minute>``, or ``...:total`` for the running total."""
    return f"stats:{outcome}:{queue}:{'total' if minute is None else minute}"


KEEP_MINUTES = 3  # minute counters younger than this are kept: the current, the previous, clock skew
SWEEP_BACK = 60  # how many minutes back a consumer's first flush deletes forgotten counters


def stale_counters(queue: str, since: int, until: int) -> list[str]:
    """The minute counters of ``queue`` from minute ``since`` (excluded) to ``until`` (included)."""
    return [counter_key(queue, o, m) for m in range(since + 1, until + 1) for o in OUTCOMES]


class Throughput:
    """Finished tasks counted in memory and added to the data store's counters in batches."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str, int]] = Counter()
        self._swept: dict[str, int] = {}  # queue -> last minute whose counters were deleted

    def record(self, queue: str, outcome: str) -> None:
        self._counts[(queue, outcome, minute_of(time.time()))] += 1

    async def flush(self, store: DataStore) -> None:
        """Add the counts so far; stats are best effort, so a failed flush is logged and dropped."""
        counts, self._counts = self._counts, Counter()
        if not counts:
            return
        totals: Counter[tuple[str, str]] = Counter()
        for (queue, outcome, _), count in counts.items():
            totals[(queue, outcome)] += count
        until = minute_of(time.time()) - KEEP_MINUTES
        stale: list[str] = []
        for queue in {q for q, _ in totals}:
            since = self._swept.get(queue, until - SWEEP_BACK)
            if since < until:
                stale += stale_counters(queue, since, until)
                self._swept[queue] = until
        try:
            await asyncio.gather(
                *(store.incr(counter_key(q, o, m), n) for (q, o, m), n in counts.items()),
                *(store.incr(counter_key(q, o), n) for (q, o), n in totals.items()),
                store.delete_counters(stale),
            )
        except Exception as exc:
            logger.warning("cannot add %d finished task(s) to the stats counters: %s", sum(totals.values()), exc)


async def throughput(store: DataStore, queues: Sequence[str], now: float | None = None) -> dict[str, dict[str, Any]]:
    """Per queue: tasks of each outcome over the last minute, and the running totals."""
    now = time.time() if now is None else now
    minute = minute_of(now)
    previous_weight = 1.0 - (now % 60) / 60
    keys = [counter_key(q, o, m) for q in queues for o in OUTCOMES for m in (minute, minute - 1, None)]
    values = await store.get_counters(keys) if keys else {}
    figures: dict[str, dict[str, Any]] = {}
    for queue in queues:
        now_count = {o: values[counter_key(queue, o, minute)] for o in OUTCOMES}
        before = {o: values[counter_key(queue, o, minute - 1)] for o in OUTCOMES}
        last = {o: round(now_count[o] + previous_weight * before[o]) for o in OUTCOMES}
        figures[queue] = {"last_minute": last, "totals": {o: values[counter_key(queue, o)] for o in OUTCOMES}}
    return figures


class ClusterView:
    """The reports of the servers heard recently, kept up to date by one api's events."""

    def __init__(self, api: Producer) -> None:
        self.api = api
        self.reports: dict[str, tuple[float, dict[str, Any]]] = {}  # node -> (monotonic time heard, report)
        self.since = time.monotonic()
        self._heard = asyncio.Event()
        api.on_events(MONITOR, REPORT, self._on_report)

    def _on_report(self, channel: str, event: str, report: Any) -> None:
        if isinstance(report, dict) and isinstance(report.get("node"), str):
            self.reports[report["node"]] = (time.monotonic(), report)
            self._heard.set()

    async def refresh(self, wait: float) -> None:
        """Make sure every live server was heard: ask them to report when this view is younger
        than a report interval, then wait for the first answer (and a short grace), at most ``wait`` s."""
        if time.monotonic() - self.since > REPORT_INTERVAL * 1.5 or wait <= 0:
            return
        self._heard.clear()
        await self.api.publish(MONITOR, PING, {"from": self.api.node_name})
        deadline = time.monotonic() + wait
        try:
            await asyncio.wait_for(self._heard.wait(), wait)
        except asyncio.TimeoutError:
            return
        await asyncio.sleep(max(0.0, min(REPLY_GRACE, deadline - time.monotonic())))

    def servers(self) -> list[dict[str, Any]]:
        """Live servers' reports, oldest server first; stale ones are forgotten."""
        now = time.monotonic()
        for node, (heard, _) in list(self.reports.items()):
            if now - heard > REPORT_MAX_AGE:
                del self.reports[node]
        reports = [report for _, report in self.reports.values()]
        return sorted(reports, key=lambda r: (r.get("started") or 0, r["node"]))


_views: weakref.WeakKeyDictionary[Producer, ClusterView] = weakref.WeakKeyDictionary()


def cluster_view(api: Producer) -> ClusterView:
    """The api's one ClusterView, made (and listening) on first use."""
    view = _views.get(api)
    if view is None:
        view = _views[api] = ClusterView(api)
    return view


def _queue_names(api: Producer, servers: list[dict[str, Any]], queues: Sequence[str] | None) -> list[str]:
    if queues:
        return list(dict.fromkeys(queues))
    names = list(api.cfg.task_queues)
    for server in servers:
        names.extend(server.get("queues") or ())
    return list(dict.fromkeys(names))


async def cluster_stats(api: Producer, queues: Sequence[str] | None = None, wait: float = 1.0) -> dict[str, Any]:
    """Queues (sizes and throughput), servers and consumers: what ``api.tasks.stats()`` returns.

    ``queues`` defaults to the ``task_queues`` and the node queues of the live
    servers; ``wait`` bounds how long a fresh api waits for the servers to report.
    """
    await api._started()
    assert api.broker is not None and api.store is not None
    view = cluster_view(api)
    await view.refresh(wait)
    servers = view.servers()
    names = _queue_names(api, servers, queues)
    sizes, rates = await asyncio.gather(api.broker.sizes(names), throughput(api.store, names))
    queue_rows = []
    for name in names:
        row: dict[str, Any] = {"name": name, **sizes[name].as_dict(), **rates[name]}
        last = row["last_minute"]
        row["done_last_minute"] = sum(last[o] for o in OUTCOMES if o != "retry")
        row["failed_last_minute"] = sum(last[o] for o in FAILED)
        queue_rows.append(row)
    totals = {key: sum(row[key] for row in queue_rows)
              for key in ("ready", "delayed", "inflight", "dead", "done_last_minute", "failed_last_minute")}
    consumers = [
        {**actor, "server": server["node"]}
        for server in servers for actor in server.get("actors", []) if actor.get("kind") == "consumer"
    ]
    cfg = api.cfg
    return {
        "time": time.time(),
        "app": cfg.name,
        "namespace": cfg.namespace,
        "broker": redact_url(cfg.broker_url),
        "data_store": redact_url(cfg.data_store),
        "queues": queue_rows,
        "totals": totals,
        "servers": servers,
        "consumers": consumers,
    }


__all__ = [
    "MONITOR", "OUTCOMES", "PING", "REPORT", "REPORT_INTERVAL", "ClusterView", "Throughput",
    "cluster_stats", "cluster_view", "counter_key", "throughput",
]
