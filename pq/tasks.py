"""The Task message and its states, as pulsar-queue defines them.

A task is the record of one job run: it travels through the broker encoded
by the message codec, and is stored in the data store as it changes state.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import math
import operator
import os
import time
from typing import Any, Callable

from .exceptions import MessageError
from .jobs.job import META_OVERRIDES

SUCCESS = 1
FAILURE = 2
REVOKED = 3
RETRY = 4
STARTED = 5
QUEUED = 6

STATUS_STRINGS: dict[int, str] = {
    SUCCESS: "SUCCESS",
    FAILURE: "FAILURE",
    REVOKED: "REVOKED",
    RETRY: "RETRY",
    STARTED: "STARTED",
    QUEUED: "QUEUED",
}
STATUS_CODES: dict[str, int] = {v: k for k, v in STATUS_STRINGS.items()}

FULL_RUN_STATES = frozenset((FAILURE, SUCCESS))
READY_STATES = frozenset((REVOKED, FAILURE, SUCCESS))

# Fields of the wire format, in order; see docs/protocol.md.
FIELDS = (
    "id", "name", "queue", "kwargs", "status", "time_queued", "time_started", "time_ended",
    "eta", "timeout", "meta", "from_task", "result", "exception", "stacktrace", "worker",
    "retries", "attempts",
)
_values = operator.attrgetter(*FIELDS)
_FIELD_SET = frozenset(FIELDS)
_STRINGS = ("queue", "from_task", "exception", "stacktrace", "worker")
_TIMES = ("time_queued", "time_started", "time_ended", "eta", "timeout")


def _is_number(value: Any) -> bool:
    """An int, or a finite float; not a bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def new_task_id() -> str:
    """128 random bits as 32 hex digits, prefixed so that ids are readable in logs (pulsar-queue style).

    Not a ``uuid4``: as random (more, 128 bits against 122) at a quarter of the cost, paid per queued task.
    """
    return "i" + os.urandom(16).hex()


class Task:
    """A job run: its input, its state and, once done, its outcome."""

    type = "task"
    __slots__ = FIELDS + ("done_callback", "__weakref__")

    def __init__(
        self,
        id: str | None = None,
        name: str = "",
        queue: str | None = None,
        kwargs: dict[str, Any] | None = None,
        status: int = QUEUED,
        time_queued: float | None = None,
        time_started: float | None = None,
        time_ended: float | None = None,
        eta: float | None = None,
        timeout: float | None = None,
        meta: dict[str, Any] | None = None,
        from_task: str | None = None,
        result: Any = None,
        exception: str | None = None,
        stacktrace: str | None = None,
        worker: str | None = None,
        retries: int = 0,
        attempts: int = 0,
    ) -> None:
        self.id = id or new_task_id()
        self.name = name
        self.queue = queue
        self.kwargs = kwargs if kwargs is not None else {}
        self.status = status
        self.time_queued = time_queued if time_queued is not None else time.time()
        self.time_started = time_started
        self.time_ended = time_ended
        self.eta = eta
        self.timeout = timeout
        self.meta = meta if meta is not None else {}
        self.from_task = from_task
        self.result = result
        self.exception = exception
        self.stacktrace = stacktrace
        self.worker = worker
        self.retries = retries
        self.attempts = attempts
        self.done_callback: TaskFuture | None = None

    @property
    def status_string(self) -> str:
        return STATUS_STRINGS.get(self.status, "UNKNOWN")

    def done(self) -> bool:
        """True once the task is in one of the READY_STATES."""
        return self.status in READY_STATES

    @property
    def elapsed(self) -> float | None:
        """Seconds the last run took, when it has started and ended."""
        if self.time_started is None or self.time_ended is None:
            return None
        return self.time_ended - self.time_started

    def copy(self) -> "Task":
        """A snapshot of the task as it is now."""
        return Task(**self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return dict(zip(FIELDS, _values(self)))

    def to_message(self) -> dict[str, Any]:
        """The wire form: ``to_dict`` without the fields that are None, their default when
        decoded, so a new task's message is half the size to encode, store and send."""
        return {name: value for name, value in zip(FIELDS, _values(self)) if value is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Task":
        """Build a task from a decoded message, refusing one of the wrong shape."""
        if not isinstance(data, dict):
            raise MessageError(f"a task message must be a map, got {type(data).__name__}")
        if not _FIELD_SET.issuperset(data):
            unknown = set(data) - _FIELD_SET
            raise MessageError(f"task message has unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        name, task_id, kwargs = data.get("name"), data.get("id"), data.get("kwargs", {})
        if not isinstance(task_id, str) or not task_id:
            raise MessageError("task message has no 'id' string")
        if not isinstance(name, str) or not name:
            raise MessageError("task message has no 'name' string")
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise MessageError("task 'kwargs' must be a map with string keys")
        status = data.get("status", QUEUED)
        if not _is_number(status) or status not in STATUS_STRINGS:
            raise MessageError(f"task 'status' {status!r} is not a known state")
        for key in _STRINGS:
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise MessageError(f"task {key!r} must be a string, got {type(value).__name__}")
        meta = data.get("meta")
        if meta:
            if not isinstance(meta, dict):
                raise MessageError("task 'meta' must be a map")
            for key in META_OVERRIDES:  # the worker computes with these: a bad one must not reach it
                value = meta.get(key)
                if value is not None and not (_is_number(value) and value >= 0):
                    raise MessageError(f"task meta {key!r} must be a finite number >= 0, got {value!r}")
        elif meta is not None and meta != {}:
            raise MessageError("task 'meta' must be a map")
        for key in _TIMES:
            value = data.get(key)
            if value is not None and not _is_number(value):
                raise MessageError(f"task {key!r} must be a finite number, got {value!r}")
        for key in ("retries", "attempts"):
            value = data.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise MessageError(f"task {key!r} must be a whole number, got {value!r}")
        return cls(**data)

    def __repr__(self) -> str:
        return f"task.{self.name}<{self.id}><{self.status_string}>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other.to_dict() == self.to_dict()

    __hash__ = None  # type: ignore[assignment]


async def _result(future: "asyncio.Future[Any]") -> Any:
    return await asyncio.shield(future)


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop running in this thread, or None (a plain shell)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class ApiFuture:
    """The outcome of an api call: ``await`` it in a coroutine, or ``.wait()`` in a plain shell.

    It wraps an asyncio future of the api's loop, or a concurrent future when
    the api runs its loop in a background thread (no loop in the caller).
    """

    def __init__(self, future: "asyncio.Future[Any] | concurrent.futures.Future[Any]") -> None:
        self._future = future

    def __await__(self) -> Any:
        future = self._future
        if isinstance(future, concurrent.futures.Future):
            return asyncio.wrap_future(future).__await__()
        if future.get_loop() is running_loop():
            return future.__await__()
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_result(future), future.get_loop())).__await__()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until done; only where no event loop runs in this thread."""
        future = self._future
        if not isinstance(future, concurrent.futures.Future):
            loop = future.get_loop()
            if loop is running_loop():
                raise RuntimeError("wait() cannot be used while the event loop runs: use 'await' instead")
            if not loop.is_running():
                return loop.run_until_complete(asyncio.wait_for(asyncio.shield(future), timeout))
            future = asyncio.run_coroutine_threadsafe(_result(future), loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"not done within {timeout} seconds") from None

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> Any:
        return self._future.result()


class TaskFuture(ApiFuture):
    """A task's future: resolves in the ``Task`` once done (or queued, with ``callback=False``)."""

    def __init__(self, task_id: str, future: "asyncio.Future[Any] | concurrent.futures.Future[Any]") -> None:
        super().__init__(future)
        self.task_id = task_id

    @property
    def id(self) -> str:
        return self.task_id

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<TaskFuture {state} ID={self.task_id}>"


class DeferredTaskFuture(TaskFuture):
    """A task's future that starts waiting when first used (awaited, ``wait()``, ``done()``).

    The ``done_callback`` of a task queued without waiting: a producer that never
    looks at it neither listens to task events nor keeps a waiter per task.
    """

    def __init__(
        self, task_id: str, start: Callable[[], "asyncio.Future[Any] | concurrent.futures.Future[Any]"]
    ) -> None:
        self.task_id = task_id
        self._start = start
        self._started: "asyncio.Future[Any] | concurrent.futures.Future[Any] | None" = None

    @property  # type: ignore[override]
    def _future(self) -> "asyncio.Future[Any] | concurrent.futures.Future[Any]":
        if self._started is None:
            self._started = self._start()
        return self._started

    def __repr__(self) -> str:
        if self._started is None:  # repr must not start the wait
            return f"<TaskFuture not awaited ID={self.task_id}>"
        return super().__repr__()
