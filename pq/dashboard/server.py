"""The dashboard the monitor serves with ``--dashboard PORT``: one page, its JSON, and ``/metrics``.

Routes:

* ``/``: the page (``page.html``, no external assets), which polls the JSON every second;
* ``/api/stats``: :func:`pq.stats.cluster_stats` (queues, servers, consumers);
* ``/api/tasks``: the latest tasks seen in the events, most recent first;
* ``/api/failures``: the latest failures, with their stack traces;
* ``/api/dead-letters``: dead letters in the broker (``?limit=N``, at most 500);
* ``/metrics``: Prometheus text format;
* ``/healthz``: ``ok``.

Broker URLs appear only through ``redact_url``.
"""
from __future__ import annotations

import asyncio
import time
from http import HTTPStatus
from importlib import resources
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from ..stats import cluster_stats
from . import metrics
from .http import HttpServer, Request, Response
from .tasklog import TaskLog, summary

if TYPE_CHECKING:
    from ..producer import Producer

STATS_CACHE = 0.5  # seconds one stats reading serves, however many pages poll
MAX_DEAD_LETTERS = 500


class Dashboard:
    """The HTTP face of a monitor: reads through the monitor's api, never blocks its loop."""

    def __init__(self, api: Producer, host: str, port: int) -> None:
        self.api = api
        self.http = HttpServer(self.handle, host, port)
        self.tasklog = TaskLog(api)
        self.page = resources.files(__package__).joinpath("page.html").read_bytes()
        self._stats: tuple[float, asyncio.Future] | None = None
        self.routes: dict[str, Callable[[Request], Awaitable[Response]]] = {
            "/": self._page,
            "/api/stats": self._stats_json,
            "/api/tasks": self._tasks,
            "/api/failures": self._failures,
            "/api/dead-letters": self._dead_letters,
            "/metrics": self._metrics,
            "/healthz": self._health,
        }

    @property
    def url(self) -> str:
        host = self.http.host if ":" not in self.http.host else f"[{self.http.host}]"
        return f"http://{host}:{self.http.port}/"

    async def start(self) -> None:
        await self.http.start()

    async def close(self) -> None:
        self.tasklog.close()
        await self.http.close()

    async def handle(self, request: Request) -> Response:
        route = self.routes.get(request.path.rstrip("/") or "/")
        if route is None:
            return Response.error(HTTPStatus.NOT_FOUND, f"no page at {request.path}; try / or /metrics")
        return await route(request)

    async def stats(self) -> dict[str, Any]:
        """The cluster's figures, shared by the requests of the last ``STATS_CACHE`` seconds."""
        now = time.monotonic()
        if self._stats is None or now - self._stats[0] > STATS_CACHE or (
                self._stats[1].done() and self._stats[1].exception() is not None):
            self._stats = (now, asyncio.ensure_future(cluster_stats(self.api, wait=0)))
        return await asyncio.shield(self._stats[1])

    async def _page(self, request: Request) -> Response:
        return Response(HTTPStatus.OK, self.page, "text/html; charset=utf-8")

    async def _stats_json(self, request: Request) -> Response:
        return Response.json({**await self.stats(), "node": self.api.node_name})

    async def _tasks(self, request: Request) -> Response:
        return Response.json({"tasks": self.tasklog.recent()})

    async def _failures(self, request: Request) -> Response:
        return Response.json({"failures": list(self.tasklog.failures)})

    async def _dead_letters(self, request: Request) -> Response:
        try:
            limit = min(max(int(request.param("limit", "50") or 50), 1), MAX_DEAD_LETTERS)
        except ValueError:
            return Response.error(HTTPStatus.BAD_REQUEST, "limit must be a whole number")
        letters = await self.api.tasks.dead_letters(request.param("queue"), limit)
        return Response.json({"dead_letters": [
            {"id": letter.id, "queue": letter.queue, "reason": letter.reason, "time": letter.time,
             "task": summary(task) if task is not None else None}
            for letter, task in letters
        ]})

    async def _metrics(self, request: Request) -> Response:
        return Response.text(metrics.render(await self.stats()), content_type=metrics.CONTENT_TYPE)

    async def _health(self, request: Request) -> Response:
        return Response.text("ok\n")
