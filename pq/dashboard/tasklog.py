"""The latest tasks and failures seen in the ``task`` events, for the dashboard.

Events from different processes may arrive out of order (a consumer's
``started`` before the producer's ``queued``), so a row only moves forward:
an event replaces it when its (time queued, retries, stage) is not older.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from .. import events
from ..tasks import FAILURE, REVOKED, Task

if TYPE_CHECKING:
    from ..producer import Producer

STAGES = {events.QUEUED: 0, events.RETRY: 0, events.STARTED: 1, events.DONE: 2}
PREVIEW = 200  # characters of arguments and results shown


def preview(value: Any) -> str | None:
    if value is None:
        return None
    text = repr(value)
    return text if len(text) <= PREVIEW else text[: PREVIEW - 1] + "…"


def summary(task: Task) -> dict[str, Any]:
    """What the dashboard shows of a task: no full arguments or results, they may be large."""
    return {
        "id": task.id, "name": task.name, "queue": task.queue, "status": task.status_string,
        "time_queued": task.time_queued, "time_started": task.time_started, "time_ended": task.time_ended,
        "worker": task.worker, "retries": task.retries, "kwargs": preview(task.kwargs),
        "result": preview(task.result), "exception": task.exception,
    }


class TaskLog:
    """Listens to one api's task events and keeps the last ``size`` tasks and ``failures`` failures."""

    def __init__(self, api: Producer, size: int = 100, failures: int = 50) -> None:
        self.api = api
        self.size = size
        self.tasks: OrderedDict[str, tuple[tuple, dict[str, Any]]] = OrderedDict()
        self.failures: deque[dict[str, Any]] = deque(maxlen=failures)
        api.on_events(events.TASK, "*", self._on_task)

    def close(self) -> None:
        self.api.remove_event_callback(events.TASK, "*", self._on_task)

    def _on_task(self, channel: str, event: str, task: Task) -> None:
        order = (task.time_queued or 0.0, task.retries, STAGES.get(event, 0))
        current = self.tasks.get(task.id)
        if current is not None and order < current[0]:
            return
        self.tasks.pop(task.id, None)
        self.tasks[task.id] = (order, summary(task))
        while len(self.tasks) > self.size:
            self.tasks.popitem(last=False)
        if event == events.DONE and task.status in (FAILURE, REVOKED):
            self.failures.appendleft({**summary(task), "stacktrace": task.stacktrace})

    def recent(self) -> list[dict[str, Any]]:
        """Tasks, the most recently changed first."""
        return [row for _, row in reversed(self.tasks.values())]
