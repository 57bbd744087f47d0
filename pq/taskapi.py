"""``api.tasks``: queue tasks and read them back (pulsar-queue's tasks producer)."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from . import events
from .exceptions import PQError, SerializationError
from .runner import check_runnable, run_task
from .stats import cluster_stats
from .tasks import (
    QUEUED, READY_STATES, REVOKED, STARTED, SUCCESS, ApiFuture, DeferredTaskFuture, Task, TaskFuture, new_task_id,
)

if TYPE_CHECKING:
    from .producer import Producer

logger = logging.getLogger("pq.tasks")

RESERVED = ("callback", "delay", "queue", "timeout", "meta_params", "eta", "task_id")
CLAIM_TTL = 30.0
"""Seconds a custom task_id's first record lives until queueing rewrites it for good: a
caller that failed to queue and died leaves the id free again after that."""


class TasksApi:
    """Queue, execute, revoke and read tasks; every method works awaited or with ``.wait()``."""

    def __init__(self, api: "Producer") -> None:
        self.api = api

    @property
    def node_name(self) -> str:
        return self.api.node_name

    # queueing --------------------------------------------------------------------
    def queue(
        self,
        jobname: str,
        callback: bool = True,
        delay: float | None = None,
        queue: str | bool | None = None,
        timeout: float | None = None,
        meta_params: dict[str, Any] | None = None,
        eta: float | None = None,
        task_id: str | None = None,
        **kwargs: Any,
    ) -> TaskFuture:
        """Queue a task; the future resolves once it is done (or queued, with ``callback=False``)."""
        if queue is False:
            return self.execute(jobname, **kwargs)
        ((task, body),) = self._make(jobname, (kwargs,), queue, delay, eta, timeout, meta_params, task_id)
        if not callback:
            task.done_callback = self._done_future(task.id)
            if task_id is None:
                queued = self.api.queue_now(task, body)
                if queued is not None:
                    return TaskFuture(task.id, queued)
        return TaskFuture(task.id, self.api.call(self._queue(task, body, callback, task_id is not None)))

    def queue_local(self, jobname: str, **kwargs: Any) -> TaskFuture:
        """Queue a task on this server's node queue: only this server runs it."""
        kwargs["queue"] = self.node_name
        return self.queue(jobname, **kwargs)

    def queue_many(
        self, jobname: str, kwargs_list: Iterable[dict[str, Any]], queue: str | None = None,
        delay: float | None = None, meta_params: dict[str, Any] | None = None,
    ) -> ApiFuture:
        """Queue many tasks of one job in one broker round trip; resolves in their ids once queued."""
        made = self._make(jobname, kwargs_list, queue, delay, None, None, meta_params, None)
        return self.api.future(self._queue_many(made))

    def _make(
        self, jobname: str, kwargs_list: Iterable[dict[str, Any]], queue: Any, delay: float | None,
        eta: float | None, timeout: float | None, meta_params: dict[str, Any] | None, task_id: str | None,
    ) -> list[tuple[Task, bytes]]:
        """Check and encode tasks of one job: what they share is worked out once."""
        api, cfg = self.api, self.api.cfg
        job = api.job(jobname)
        kwargs_list = list(kwargs_list)
        if job is not None:
            for kwargs in kwargs_list:
                check_runnable(job, kwargs)
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise PQError(f"queue must be a non-empty queue name, got {queue!r}")
        now = time.time()
        if delay is not None:
            if not isinstance(delay, (int, float)) or delay < 0:
                raise PQError(f"delay must be a number of seconds >= 0, got {delay!r}")
            eta = now + delay
        meta = dict(meta_params or {})
        from_task = meta.pop("from_task", None)
        if timeout is None:
            timeout = (job.timeout if job is not None else None) or cfg.default_task_timeout
        if task_id is not None and (not isinstance(task_id, str) or not task_id):
            raise PQError(f"task_id must be a non-empty string, got {task_id!r}")
        queue = queue or (job.default_queue if job is not None else None) or cfg.default_queue
        encode, made = api.encode_task, []
        for kwargs in kwargs_list:
            task = Task(
                id=task_id or new_task_id(), name=jobname, queue=queue, kwargs=kwargs, time_queued=now,
                eta=eta, timeout=timeout, meta=dict(meta) if meta else {}, from_task=from_task,
            )
            try:
                made.append((task, encode(task)))
            except SerializationError as exc:
                raise SerializationError(f"task {jobname!r} arguments cannot be queued: {exc}") from None
        return made

    async def _queue(self, task: Task, body: bytes, callback: bool, custom_id: bool) -> Task:
        """Record the task, then enqueue it (``Producer.enqueue_tasks`` keeps that order); with
        ``callback`` wait for it, listening to task events from before it is queued."""
        api = self.api
        waiter = None
        if callback:
            await api.listen(events.TASK)
            waiter = api.waiter(task.id)
        else:
            await api._started()
        assert api.store is not None and api.broker is not None
        claimed = False
        try:
            current = None
            if custom_id:  # claimed for a while only: queueing rewrites the record for good
                existing = await api.store.add_task(task.id, body, ttl=CLAIM_TTL)
                # Our own body back: a call retried after its reply was lost had stored it.
                claimed = existing is None or existing == body
                current = api.decode_task(existing) if not claimed else None
            if current is not None and current.status not in READY_STATES:  # the live task of that id
                current.done_callback = task.done_callback
                task = current
            else:
                await api.enqueue_tasks([(task, body)])
        except BaseException:
            if waiter is not None:
                api.drop_waiter(task.id, waiter)
            if claimed:
                await self._unclaim(task.id)
            raise
        return task if waiter is None else await api.wait_done(task.id, waiter)

    async def _unclaim(self, task_id: str) -> None:
        """A custom id whose queueing failed must not look queued to the caller's retry;
        if even this fails, the claim expires after CLAIM_TTL seconds."""
        try:
            await self.api.store.delete_task(task_id)  # type: ignore[union-attr]
        except Exception as exc:
            logger.warning("task %s was not queued; its id stays taken for %.0f s: %s", task_id, CLAIM_TTL, exc)

    def _done_future(self, task_id: str) -> TaskFuture:
        """``done_callback`` of a task queued without waiting: it listens and waits only once used."""
        return DeferredTaskFuture(task_id, lambda: self.api.call(self._wait(task_id, None)))

    async def _wait(self, task_id: str, timeout: float | None) -> Task:
        """Listen first, then read the record: a task done before we listened is seen there."""
        await self.api.listen(events.TASK)
        waiter = self.api.waiter(task_id)
        task = await self._get(task_id)
        if task is not None and task.status in READY_STATES:
            self.api._resolve(task)
        return await self.api.wait_done(task_id, waiter, timeout)

    async def _queue_many(self, made: list[tuple[Task, bytes]]) -> list[str]:
        api = self.api
        await api._started()
        assert api.store is not None and api.broker is not None
        await api.enqueue_tasks(made)
        return [task.id for task, _ in made]

    def execute(self, jobname: str, **kwargs: Any) -> TaskFuture:
        """Run a task now, in this process, without queueing it (for tests and debugging)."""
        job = self.api.registry.job(jobname)
        check_runnable(job, kwargs, self.api.cfg)
        task = Task(name=jobname, queue=None, kwargs=kwargs, timeout=job.timeout)
        return TaskFuture(task.id, self.api.call(run_task(self.api, job, task)))

    # reading -----------------------------------------------------------------------
    def queues(self) -> list[str]:
        """Queue names the consumers of this application take tasks from."""
        return self.api.manager.queues()

    def job_list(self, jobname: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """``(name, description)`` of every job, or of one."""
        registry = self.api.registry
        names = [jobname] if jobname else sorted(registry)
        return [(name, registry.job(name).describe()) for name in names]

    def next_scheduled(self, jobnames: Sequence[str] | None = None) -> dict[str, Any]:
        """When each periodic job (or each of ``jobnames``) runs next."""
        from .scheduler import next_scheduled

        return next_scheduled(self.api, jobnames)

    async def _get(self, task_id: str) -> Task | None:
        api = self.api
        await api._started()
        assert api.store is not None
        body = (await api.store.get_tasks([task_id]))[0]
        return api.decode_task(body) if body is not None else None

    def get_task(self, task_id: str) -> ApiFuture:
        """The task's record now (None when unknown or expired)."""
        return self.api.future(self._get(task_id))

    def get_result(self, task_id: str) -> ApiFuture:
        """The task's result if it ended in SUCCESS, else None."""
        async def result() -> Any:
            task = await self._get(task_id)
            return task.result if task is not None and task.status == SUCCESS else None

        return self.api.future(result())

    def wait_for_result(self, task_id: str, timeout: float | None = None) -> ApiFuture:
        """The task once done; TimeoutError after ``timeout`` seconds."""
        return self.api.future(self._wait(task_id, timeout))

    def revoke(self, task_id: str) -> ApiFuture:
        """Revoke a task: a queued one never runs, a running one is cancelled (its process killed)."""
        return self.api.future(self._revoke(task_id))

    async def _revoke(self, task_id: str) -> bool:
        api = self.api
        await api._started()
        assert api.store is not None
        await api.store.revoke(task_id, max(api.cfg.result_ttl, 3600.0))
        await api.publish(events.CONTROL, "revoke", {"id": task_id})
        task = await self._get(task_id)
        if task is None or task.status in READY_STATES:
            return False
        if task.status != STARTED:
            task.status = REVOKED
            task.time_ended = time.time()
            task.exception = "revoked before it ran"
            await api.task_event(events.DONE, task, ttl=api.cfg.result_ttl or None)
        return True

    # queues and dead letters -------------------------------------------------------------
    def sizes(self, queues: Sequence[str] | None = None) -> ApiFuture:
        """``{queue: QueueSize}`` of these queues (default: the application's queues)."""
        async def sizes() -> dict[str, Any]:
            await self.api._started()
            assert self.api.broker is not None
            return await self.api.broker.sizes(list(queues or self.queues()))

        return self.api.future(sizes())

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> ApiFuture:
        """Dead letters as ``(DeadLetter, Task or None)`` pairs; None where the body is not a task."""
        async def listing() -> list[tuple[Any, Task | None]]:
            await self.api._started()
            assert self.api.broker is not None
            letters = await self.api.broker.dead_letters(queue, limit)
            return [(letter, self._try_decode(letter.body)) for letter in letters]

        return self.api.future(listing())

    def _try_decode(self, body: bytes) -> Task | None:
        try:
            return self.api.decode_task(body)
        except PQError:
            return None

    def retry_dead_letters(self, ids: Sequence[str] | None = None) -> ApiFuture:
        """Queue dead letters (these ids, or all) again as fresh tasks (QUEUED, retries reset); how many."""
        return self.api.future(self._retry_dead_letters(ids))

    async def _retry_dead_letters(self, ids: Sequence[str] | None) -> int:
        api = self.api
        await api._started()
        assert api.broker is not None
        wanted = set(ids) if ids is not None else None
        letters = [
            letter for letter in await api.broker.dead_letters(None, 1_000_000)
            if wanted is None or letter.id in wanted
        ]
        fresh, raw = [], []
        for letter in letters:
            task = self._try_decode(letter.body)
            if task is None:
                raw.append(letter.id)
                continue
            task.status, task.retries, task.eta, task.time_queued = QUEUED, 0, None, time.time()
            task.result = task.exception = task.stacktrace = task.time_started = task.time_ended = None
            fresh.append((task, api.encode_task(task)))
        if fresh:
            await api.enqueue_tasks(fresh)
            await api.broker.purge_dead_letters([task.id for task, _ in fresh])
        retried = await api.broker.retry_dead_letters(raw) if raw else 0
        return len(fresh) + retried

    def purge_dead_letters(self, ids: Sequence[str] | None = None) -> ApiFuture:
        async def purge() -> int:
            await self.api._started()
            assert self.api.broker is not None
            return await self.api.broker.purge_dead_letters(ids)

        return self.api.future(purge())

    def stats(self, queues: Sequence[str] | None = None, wait: float = 1.0) -> ApiFuture:
        """Queues (sizes, last-minute throughput), live servers and consumers with their figures.

        See :func:`pq.stats.cluster_stats`; ``wait`` bounds the wait for the servers' reports.
        """
        return self.api.future(cluster_stats(self.api, queues, wait))

    def purge(self, queue: str) -> ApiFuture:
        """Delete the waiting tasks of a queue; how many."""
        async def purge() -> int:
            await self.api._started()
            assert self.api.broker is not None
            return await self.api.broker.purge(queue)

        return self.api.future(purge())
