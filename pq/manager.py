"""Manager: the hooks an application overrides to extend pq (pulsar-queue's Manager)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:
    from .config import Config
    from .jobs.job import Job
    from .producer import Producer
    from .tasks import Task
    from .worker import Worker


class Manager:
    """Subclass and pass it to ``PulsarQueue(Manager, ...)``.

    Made once per backend: in each consumer, in the scheduler and in each
    producer api.
    """

    def __init__(self, backend: "Producer") -> None:
        self.backend = backend

    @property
    def cfg(self) -> "Config":
        return self.backend.cfg

    def queues(self) -> list[str]:
        """Queue names the consumers take tasks from: the node queue, then ``task_queues``."""
        return [self.backend.node_name, *self.cfg.task_queues]

    async def store_message(self, message: "Task") -> None:
        """Called for every lifecycle event of a task (queued, started, retry, done)."""

    async def start(self) -> None:
        """Called when the backend starts (connected to its brokers)."""

    async def close(self) -> None:
        """Called when the backend closes."""

    async def on_worker_init(self, worker: "Worker") -> None:
        """Called in each consumer before it takes its first task."""

    async def on_worker_close(self, worker: "Worker") -> None:
        """Called in each consumer after its last task."""

    async def execute(self, job: "Job", task: "Task", run: Callable[[], Awaitable[Any]]) -> Any:
        """Wraps every task run: override to add context, tracing or error reporting (e.g. Sentry)."""
        return await run()
