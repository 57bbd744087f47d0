"""Job: the factory of tasks, written as a class or with the ``job`` decorator.

A job's attributes (concurrency, timeout, retries, ...) are class
attributes; a task may override some through ``meta_params``.  An instance
is made for each run, with ``self.task``, ``self.backend`` and
``self.logger`` set, so job code reads like pulsar-queue's.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable

from ..exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from ..producer import Producer
    from ..tasks import Task

ASYNC_IO = "asyncio"
THREAD_IO = "thread"
CPUBOUND = "process"
CONCURRENCY = (ASYNC_IO, THREAD_IO, CPUBOUND)

# Attributes a task may override through meta_params.
META_OVERRIDES = ("max_retries", "retry_delay", "max_concurrency", "retry_backoff", "max_retry_delay")


def slugify(name: str) -> str:
    """pulsar-queue's job names: lower case, ``_`` becomes ``.`` (``bla_foo`` -> ``bla.foo``)."""
    return ".".join(part for part in name.lower().split("_") if part)


def _seconds(value: Any, attr: str, job: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ImproperlyConfigured(f"job {job!r}: {attr} must be a number of seconds >= 0, got {value!r}")
    return float(value)


class Job:
    """Subclass and implement ``__call__(self, **kwargs)`` (sync or ``async``)."""

    abstract = True
    name: str = ""
    concurrency: str = ASYNC_IO
    timeout: float | None = None
    max_retries: int = 0
    retry_delay: float = 5.0
    retry_backoff: float = 2.0
    max_retry_delay: float = 3600.0
    max_concurrency: int | None = None
    default_queue: str | None = None
    doc_syntax: str = "markdown"
    # periodic jobs (the scheduler actor): every N seconds, or a cron expression
    run_every: float | None = None
    anchor: Any = None
    cron: str | None = None
    catch_up: bool = False
    # what a final failure does to the message (oxalis's policies): "reject" puts it in
    # the dead letters, "ack_always" drops it, "reject_requeue" queues it again
    ack_policy: str = "reject"
    # a boolean setting that must be on for this job to run (dangerous built-ins)
    enabled_by: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "abstract" not in cls.__dict__:
            cls.abstract = False
        if cls.abstract:
            return
        if not cls.__dict__.get("name"):
            cls.name = slugify(cls.__name__)
        cls._check()

    @classmethod
    def _check(cls) -> None:
        name = cls.name
        if cls.concurrency not in CONCURRENCY:
            raise ImproperlyConfigured(
                f"job {name!r}: concurrency must be ASYNC_IO, THREAD_IO or CPUBOUND, got {cls.concurrency!r}"
            )
        cls.timeout = _seconds(cls.timeout, "timeout", name)
        cls.retry_delay = _seconds(cls.retry_delay, "retry_delay", name) or 0.0
        cls.run_every = _seconds(cls.run_every, "run_every", name)
        if not isinstance(cls.max_retries, int) or cls.max_retries < 0:
            raise ImproperlyConfigured(f"job {name!r}: max_retries must be a whole number >= 0")
        if cls.max_concurrency is not None and (not isinstance(cls.max_concurrency, int) or cls.max_concurrency < 1):
            raise ImproperlyConfigured(f"job {name!r}: max_concurrency must be a whole number >= 1 or None")
        if cls.ack_policy not in ("reject", "ack_always", "reject_requeue"):
            raise ImproperlyConfigured(f"job {name!r}: ack_policy must be reject, ack_always or reject_requeue")
        if cls.cron is not None:
            from .periodic import check_cron

            check_cron(cls.cron, name)
        if not callable(getattr(cls, "__call__", None)) or cls.__call__ is Job.__call__:
            raise ImproperlyConfigured(f"job {name!r} must implement __call__(self, **kwargs)")

    def __init__(self, backend: "Producer | None" = None, task: "Task | None" = None) -> None:
        self.backend = backend
        self.task = task

    @functools.cached_property
    def logger(self) -> logging.Logger:
        """``<app name>.<job name>``, looked up on first use: most runs never log."""
        prefix = self.backend.cfg.name if self.backend is not None else "pq"
        return logging.getLogger(f"{prefix}.{self.name}")

    def __call__(self, **kwargs: Any) -> Any:
        raise NotImplementedError

    # introspection --------------------------------------------------------
    @classmethod
    def is_async(cls) -> bool:
        return inspect.iscoroutinefunction(cls.__call__)

    @classmethod
    def is_periodic(cls) -> bool:
        return cls.run_every is not None or cls.cron is not None

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The job's description for ``job_list``."""
        info: dict[str, Any] = {
            "type": "periodic" if cls.is_periodic() else "regular",
            "concurrency": cls.concurrency,
            "doc_syntax": cls.doc_syntax,
            "doc": inspect.cleandoc(cls.__doc__ or ""),
            "timeout": cls.timeout,
            "max_retries": cls.max_retries,
            "max_concurrency": cls.max_concurrency,
            "default_queue": cls.default_queue,
        }
        if cls.run_every is not None:
            info["run_every"] = cls.run_every
        if cls.cron is not None:
            info["cron"] = cls.cron
        return info

    def get(self, attr: str) -> Any:
        """A job attribute, overridden by the task's meta_params where allowed."""
        if self.task is not None and attr in META_OVERRIDES and attr in self.task.meta:
            return self.task.meta[attr]
        return getattr(self, attr)

    # helpers for job code ---------------------------------------------------
    def _producer(self) -> "Producer":
        if self.backend is None:
            raise RuntimeError(f"job {self.name!r} has no backend: it was not run by pq")
        return self.backend

    def queue(self, jobname: str, **kwargs: Any) -> Any:
        """Queue another task from this run; the new task records ``from_task``."""
        if self.task is not None:
            meta = dict(kwargs.pop("meta_params", None) or {})
            meta.setdefault("from_task", self.task.id)
            kwargs["meta_params"] = meta
        return self._producer().tasks.queue(jobname, **kwargs)

    def queue_local(self, jobname: str, **kwargs: Any) -> Any:
        """Queue a task on this server's own node queue."""
        return self.queue(jobname, queue=self._producer().tasks.node_name, **kwargs)

    async def run_in_executor(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking callable on the consumer's thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self._producer().thread_pool(), func, *args)

    async def shell(self, command: str, **kwargs: Any) -> str:
        """Run a shell command and return its stdout; a non-zero exit raises with stderr."""
        process = await asyncio.create_subprocess_shell(
            command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, **kwargs
        )
        stdout, stderr = await process.communicate()
        if process.returncode:
            raise RuntimeError(
                f"command {command!r} exited with {process.returncode}: {stderr.decode(errors='replace').strip()}"
            )
        return stdout.decode(errors="replace")

    def lock(self, name: str | None = None, timeout: float = 60.0, blocking: float | bool = True) -> Any:
        """A lock shared by every consumer of every server: ``async with self.lock(): ...``."""
        from ..locks import Lock

        holder = self.task.id if self.task is not None else None
        return Lock(self._producer().store, name or f"job:{self.name}", timeout=timeout, blocking=blocking, holder=holder)


def job(name: str | None = None, **attrs: Any) -> Callable[[Callable[..., Any]], type[Job]]:
    """Make a Job class from a function ``def f(self, **kwargs)`` (sync or async)."""

    def decorator(func: Callable[..., Any]) -> type[Job]:
        namespace: dict[str, Any] = {
            "__call__": func,
            "__doc__": func.__doc__,
            "__module__": func.__module__,
            "__qualname__": func.__qualname__,
            "name": name or slugify(func.__name__),
        }
        unknown = [key for key in attrs if not hasattr(Job, key)]
        if unknown:
            raise ImproperlyConfigured(f"job {namespace['name']!r}: unknown attribute(s) {', '.join(unknown)}")
        namespace.update(attrs)
        return type(func.__name__, (Job,), namespace)

    return decorator
