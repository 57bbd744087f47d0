"""Running one task: its job on the right executor, under its timeout.

Shared by the consumer's worker and by ``api.tasks.execute`` so a task runs
the same way whether it came from a queue or not.
"""
from __future__ import annotations

import asyncio
import inspect
import time
import traceback
from typing import TYPE_CHECKING, Any

from .exceptions import PQError
from .jobs.executors import RemoteError, run_callable
from .jobs.job import CPUBOUND, THREAD_IO, Job
from .tasks import FAILURE, REVOKED, STARTED, SUCCESS, Task

if TYPE_CHECKING:
    from .producer import Producer


# Argument name sets remembered per job as accepted: a queue_many of one shape binds once.
ACCEPTED_MAX = 64


class BadArguments(PQError):
    """The task's keyword arguments do not fit the job's signature."""


def check_runnable(job_class: type[Job], kwargs: dict[str, Any], cfg: Any = None) -> None:
    """Refuse arguments the job cannot take and, given the running ``cfg``, a job it disables."""
    if cfg is not None and job_class.enabled_by and not getattr(cfg, job_class.enabled_by):
        raise PQError(
            f"job {job_class.name!r} is disabled; start the server with "
            f"--{job_class.enabled_by.replace('_', '-')} to allow it"
        )
    accepted = job_class.__dict__.get("_accepted")
    if accepted is None:
        accepted = job_class._accepted = set()  # type: ignore[attr-defined]
    names = frozenset(kwargs) if isinstance(kwargs, dict) else None
    if names in accepted:  # binding depends on the argument names only
        return
    signature = job_class.__dict__.get("_signature")
    if signature is None:
        signature = inspect.signature(job_class.__call__)
        job_class._signature = signature  # type: ignore[attr-defined]
    try:
        signature.bind(None, **kwargs)
    except TypeError as exc:
        raise BadArguments(f"job {job_class.name!r} cannot take these arguments: {exc}") from None
    if names is not None and len(accepted) < ACCEPTED_MAX:
        accepted.add(names)


def describe_exception(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _call_job(api: "Producer", job: Job, task: Task) -> Any:
    job_class = type(job)
    if job_class.concurrency == CPUBOUND:
        return await api.executors.processes.run(job_class.__module__, job_class.__qualname__, task.kwargs, task.to_dict())
    if job_class.concurrency == THREAD_IO:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(api.executors.threads, run_callable, job, task.kwargs)
    result = job(**task.kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


async def run_task(api: "Producer", job_class: type[Job], task: Task) -> Task:
    """Run ``task`` and fill in its outcome: SUCCESS, FAILURE, or REVOKED on timeout.

    A cancellation (revoke, forced stop) propagates after the job is cancelled;
    the caller decides what it means.
    """
    job = job_class(api, task)
    task.status = STARTED
    if task.time_started is None:
        task.time_started = time.time()
    timeout = task.timeout
    execution = api.manager.execute(job, task, lambda: _call_job(api, job, task))
    try:
        result = await (execution if timeout is None else asyncio.wait_for(execution, timeout))
    except asyncio.TimeoutError as error:
        exc: BaseException | None = error
        if timeout is not None and time.time() - task.time_started >= timeout:
            task.time_ended = time.time()
            task.status = REVOKED
            task.exception = (
                f"TaskTimeout: ran past its timeout of {timeout:g} s "
                f"(elapsed {task.time_ended - task.time_started:.3f} s)"
            )
            return task
    except Exception as error:
        exc = error
    else:
        exc = None
    task.time_ended = time.time()
    if exc is None:
        task.status = SUCCESS
        task.result = result
        task.exception = task.stacktrace = None
    else:
        task.status = FAILURE
        task.exception = describe_exception(exc) if not isinstance(exc, RemoteError) else str(exc)
        task.stacktrace = exc.stacktrace if isinstance(exc, RemoteError) else "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)
        )
    return task
