"""The worker: the task-consuming engine of a consumer actor.

It fetches in batches up to its free slots (blocking in the broker, never
busy-polling), runs each task under a lease it renews, records and publishes
each state change, retries with backoff, dead-letters what cannot succeed,
and acknowledges in batches.  A bad message is dead-lettered with its
reason; nothing a message holds can stop the worker.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
from typing import TYPE_CHECKING, Any

from . import events
from .brokers.base import Delivery
from .exceptions import PQError, SerializationError
from .runner import check_runnable, describe_exception, run_task
from .stats import Throughput
from .tasks import FAILURE, QUEUED, RETRY, REVOKED, STARTED, Task

if TYPE_CHECKING:
    from .producer import Producer

logger = logging.getLogger("pq.worker")

STATUS_INTERVAL = 2.0  # seconds between status events on the consumer channel
SLOT_WAIT = (0.05, 0.25)  # requeue delay range of a task waiting for a max_concurrency slot
REFILL_WAIT = 0.005  # with a backlog, how long to wait for half the slots before fetching
STARTED_DELAY = 0.1  # how long a started event may wait to share its write with others (or the outcome's)


def retry_delay(base: float, backoff: float, retries: int, cap: float) -> float:
    """Exponential backoff with jitter: about base * backoff**(retries-1), within [50%, 100%]."""
    delay = min(cap, base * backoff ** max(retries - 1, 0))
    return delay * (0.5 + random.random() / 2)


class Worker:
    """Takes tasks from ``queues`` and runs up to ``concurrent_tasks`` at once."""

    def __init__(
        self, api: "Producer", name: str, queues: list[str] | None = None, concurrent_tasks: int | None = None,
    ) -> None:
        self.api = api
        self.cfg = api.cfg
        self.name = name
        self.queues = queues or api.manager.queues()
        self.concurrent_tasks = concurrent_tasks or self.cfg.concurrent_tasks
        self.processed = 0
        self.started_at = time.time()
        self.exhausted = asyncio.Event()  # set once max_requests tasks have been taken
        self._inflight: dict[str, tuple[Delivery, Task | None, asyncio.Task]] = {}
        self._slots: dict[str, str] = {}  # task id -> max_concurrency counter name
        self._revoking: set[str] = set()
        self._slot_free = asyncio.Event()
        self._wake_at = 1  # free slots that wake the fetch loop: half of them while a backlog waits
        self._stopping = False
        self._loops: list[asyncio.Task] = []
        self._to_ack: list[Delivery] = []
        self._ack_flush: asyncio.Task | None = None
        self._unrecorded: dict[int, Delivery] = {}  # finished tasks whose ack waits for their outcome's write
        self._recording: set[asyncio.Future] = set()  # outcome writes whose acks wait, and requeues of failed ones
        self._taken = 0
        self._backlog = False  # the last fetch filled every free slot: more is likely waiting
        self.throughput = Throughput()  # finished tasks, flushed to the store's stats counters

    # lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self.api._started()
        self.api.on_events(events.CONTROL, "revoke", self._on_revoke)
        await self.api.listen(events.CONTROL)
        await self.api.manager.on_worker_init(self)
        self._loops = [asyncio.create_task(coro) for coro in (self._fetch_loop(), self._renew_loop(), self._status_loop())]
        logger.info("%s consuming queues %s, %d at once", self.name, ", ".join(self.queues), self.concurrent_tasks)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop taking tasks, let in-flight ones finish within ``timeout``, return the rest to their queues."""
        if self._stopping:
            return
        self._stopping = True
        self._slot_free.set()
        fetch_loop, *others = self._loops or [None]
        if fetch_loop is not None:
            await asyncio.gather(fetch_loop, return_exceptions=True)
        running = [entry[2] for entry in self._inflight.values()]
        if running:
            logger.info("%s waiting for %d task(s) to finish", self.name, len(running))
            await asyncio.wait(running, timeout=timeout)
        leftover = list(self._inflight.values())
        for _, _, run in leftover:
            run.cancel()
        if leftover:
            await asyncio.gather(*(entry[2] for entry in leftover), return_exceptions=True)
        for loop in others:
            loop.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self._wait_recorded(timeout)
        await self._flush_acks()
        await self.throughput.flush(self.api.store)  # type: ignore[arg-type]
        self.api.remove_event_callback(events.CONTROL, "revoke", self._on_revoke)
        await self.api.manager.on_worker_close(self)
        logger.info("%s stopped after %d task(s)", self.name, self.processed)

    async def _wait_recorded(self, timeout: float | None) -> None:
        """Let the outcome writes still pending end, so their acks (or requeues) go out; a
        write still retrying after ``timeout`` leaves its task unacked, to run again."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._recording:
            left = None if deadline is None else max(deadline - loop.time(), 0)
            done, _ = await asyncio.wait(set(self._recording), timeout=left)
            if not done:
                logger.warning("%s stops with %d outcome write(s) unfinished: those tasks run again",
                               self.name, len(self._recording))
                return

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name, "node": self.api.node_name, "queues": self.queues,
            "concurrent_tasks": self.concurrent_tasks, "inflight": len(self._inflight),
            "processed": self.processed, "started": self.started_at, "time": time.time(),
        }

    # loops -------------------------------------------------------------------------------
    async def _fetch_loop(self) -> None:
        broker, cfg = self.api.broker, self.cfg
        assert broker is not None
        pause = 0.0
        while not self._stopping:
            free = self._free()
            if cfg.max_requests:
                free = min(free, cfg.max_requests - self._taken)
                if free <= 0 and not self._inflight and self._taken >= cfg.max_requests:
                    self.exhausted.set()
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            if self._backlog and free < self.concurrent_tasks / 2:
                # Work is waiting: let half the slots free up and take them in one round trip.
                self._wake_at = math.ceil(self.concurrent_tasks / 2)
                self._slot_free.clear()
                try:
                    await asyncio.wait_for(self._slot_free.wait(), REFILL_WAIT)
                except asyncio.TimeoutError:
                    pass
                finally:
                    self._wake_at = 1
                self._backlog = False
                continue
            try:
                deliveries = await broker.fetch(self.queues, free, cfg.task_pool_timeout, cfg.lease_timeout, self.name)
            except Exception as exc:
                pause = min(max(pause * 2, 0.1), 5.0)
                logger.warning("%s cannot fetch from %s (%s); retrying in %.1f s", self.name, broker.safe_url, exc, pause)
                await asyncio.sleep(pause)
                continue
            pause = 0.0
            self._backlog = len(deliveries) == free
            if deliveries:
                await self._start_batch(deliveries)

    def _free(self) -> int:
        """Slots free: running tasks take one each, and so do finished ones whose outcome is not
        written yet, all of them if the broker counts them (``unacked_take_slots``), else those
        past ``concurrent_tasks``: a store slower than the tasks slows the worker down, rather
        than have finished tasks pile up unacked."""
        waiting = len(self._unrecorded)
        if not self.api.broker.unacked_take_slots:  # type: ignore[union-attr]
            waiting = max(waiting - self.concurrent_tasks, 0)
        return self.concurrent_tasks - len(self._inflight) - waiting

    async def _start_batch(self, deliveries: list[Delivery]) -> None:
        broker, store = self.api.broker, self.api.store
        assert broker is not None and store is not None
        revoked: set[str] = set()
        if not (broker is store and broker.skips_revoked):  # else fetch already dropped them
            try:
                revoked = await store.revoked([d.id for d in deliveries])
            except Exception:
                logger.exception("%s cannot read revocations; running the batch", self.name)
        for delivery in deliveries:
            if delivery.id in revoked:
                self._ack(delivery)
                continue
            self._taken += 1
            run = asyncio.create_task(self._handle(delivery))
            self._inflight[delivery.id] = (delivery, None, run)

    async def _renew_loop(self) -> None:
        broker, store, lease = self.api.broker, self.api.store, self.cfg.lease_timeout
        assert broker is not None and store is not None
        while True:
            await asyncio.sleep(lease / 3)
            deliveries = [entry[0] for entry in self._inflight.values()] + list(self._unrecorded.values())
            slots = [(name, task_id) for task_id, name in self._slots.items()]
            try:
                if deliveries:
                    await broker.renew(deliveries, lease)
                if slots:
                    await store.renew_slots(slots, lease)
            except Exception as exc:
                logger.warning("%s cannot renew leases: %s", self.name, exc)

    async def _status_loop(self) -> None:
        while True:
            try:
                await self.api.publish(events.CONSUMER, "status", self.info())
            except Exception as exc:
                logger.warning("%s cannot publish its status: %s", self.name, exc)
            await self.throughput.flush(self.api.store)  # type: ignore[arg-type]
            await asyncio.sleep(STATUS_INTERVAL)

    # one task ------------------------------------------------------------------------------
    async def _handle(self, delivery: Delivery) -> None:
        try:
            await self._process(delivery)
        except asyncio.CancelledError:
            await self._cancelled(delivery)
        except Exception:
            logger.exception("%s failed handling message %s; returning it to its queue", self.name, delivery.id)
            await self._safely(self.api.broker.requeue(delivery, delay=1.0))  # type: ignore[union-attr]
        finally:
            self._inflight.pop(delivery.id, None)
            slot = self._slots.pop(delivery.id, None)
            if slot is not None:
                await self._safely(self.api.store.release_slot(slot, delivery.id))  # type: ignore[union-attr]
            if self._free() >= self._wake_at:
                self._slot_free.set()

    async def _process(self, delivery: Delivery) -> None:
        api = self.api
        broker, store = api.broker, api.store
        assert broker is not None and store is not None
        try:
            task = api.decode_task(delivery.body)
        except PQError as exc:
            logger.error("%s dead-lettered message %s: %s", self.name, delivery.id, exc)
            await broker.dead_letter(delivery, f"bad message: {exc}")
            return
        self._inflight[delivery.id] = (delivery, task, self._inflight[delivery.id][2])
        try:
            job = api.registry.job(task.name)
            check_runnable(job, task.kwargs, self.cfg)
        except PQError as exc:
            await self._fail(delivery, task, exc)
            return
        limit = task.meta.get("max_concurrency", job.max_concurrency)
        if limit:
            if not await store.acquire_slot(job.name, int(limit), task.id, self.cfg.lease_timeout):
                await broker.requeue(delivery, delay=random.uniform(*SLOT_WAIT))
                return
            self._slots[task.id] = job.name
        self.processed += 1
        task.status, task.time_started, task.time_ended = STARTED, time.time(), None
        task.worker, task.attempts = self.name, task.attempts + delivery.deliveries
        task.result = task.exception = task.stacktrace = None
        # Written with the outcome when the job ends within STARTED_DELAY; never after it.
        started = api.submit_task_event(events.STARTED, task, api.encode_task(task), delay=STARTED_DELAY)
        started.add_done_callback(functools.partial(self._started_written, task))
        try:
            await run_task(api, job, task)
        except BaseException:
            if not started.done():  # its record lands before whatever comes of this
                await asyncio.wait({started})
            raise
        await self._finish(delivery, task, job)

    def _started_written(self, task: Task, written: "asyncio.Future[None]") -> None:
        if not written.cancelled() and written.exception() is not None:
            logger.warning("%s could not record that %r started: %s", self.name, task, written.exception())

    async def _finish(self, delivery: Delivery, task: Task, job: Any) -> None:
        api, broker = self.api, self.api.broker
        assert broker is not None
        max_retries = task.meta.get("max_retries", job.max_retries)
        if task.status in (FAILURE, REVOKED) and task.retries < max_retries:
            task.retries += 1
            task.status = RETRY
            delay = retry_delay(
                task.meta.get("retry_delay", job.retry_delay), job.retry_backoff, task.retries, job.max_retry_delay
            )
            logger.info("%s retrying %r in %.2f s (%d/%d): %s", self.name, task, delay, task.retries, max_retries, task.exception)
            body = await api.task_event(events.RETRY, task)
            await broker.requeue(delivery, body, delay)
            self.throughput.record(delivery.queue, "retry")
            return
        try:
            body = api.encode_task(task)
        except SerializationError as exc:
            task.status, task.result = FAILURE, None
            task.exception = f"SerializationError: the result cannot be stored: {exc}"
            body = api.encode_task(task)
        written = api.submit_task_event(events.DONE, task, body, ttl=self.cfg.result_ttl or None)
        self.throughput.record(delivery.queue, task.status_string.lower())
        if task.status != FAILURE or job.ack_policy == "ack_always":
            self._ack_when_written(delivery, written)
            return
        await asyncio.shield(written)
        if job.ack_policy == "reject_requeue":
            delay = retry_delay(task.meta.get("retry_delay", job.retry_delay), 1.0, 1, job.max_retry_delay)
            await broker.requeue(delivery, None, delay)
        else:
            await broker.dead_letter(delivery, task.exception or "failed", body)

    async def _fail(self, delivery: Delivery, task: Task, exc: Exception) -> None:
        """A task that cannot run at all: FAILURE, done event, dead letter."""
        logger.error("%s cannot run %r: %s", self.name, task, exc)
        task.status, task.time_ended, task.worker = FAILURE, time.time(), self.name
        task.exception = describe_exception(exc)
        body = await self.api.task_event(events.DONE, task, ttl=self.cfg.result_ttl or None)
        self.throughput.record(delivery.queue, "failure")
        await self.api.broker.dead_letter(delivery, task.exception, body)  # type: ignore[union-attr]

    async def _cancelled(self, delivery: Delivery) -> None:
        """A run cancelled by a revoke ends REVOKED; by a stop it goes back to its queue, QUEUED."""
        api, broker = self.api, self.api.broker
        assert broker is not None
        task = self._inflight.get(delivery.id, (None, None))[1]
        if delivery.id in self._revoking:
            self._revoking.discard(delivery.id)
            if task is not None:
                task.status, task.time_ended, task.exception = REVOKED, time.time(), "revoked while running"
                await self._safely(api.task_event(events.DONE, task, ttl=self.cfg.result_ttl or None))
                self.throughput.record(delivery.queue, "revoked")
            self._ack(delivery)
            return
        body = None
        if task is not None:
            task.status, task.time_started, task.worker = QUEUED, None, None
            body = await self._safely(api.task_event(events.QUEUED, task))
        await self._safely(broker.requeue(delivery, body))

    def _on_revoke(self, channel: str, event: str, message: Any) -> None:
        task_id = message.get("id") if isinstance(message, dict) else None
        entry = self._inflight.get(task_id) if task_id else None
        if entry is not None:
            logger.info("%s revoking running task %s", self.name, task_id)
            self._revoking.add(task_id)
            entry[2].cancel()

    # acknowledgements --------------------------------------------------------------------------
    def _ack_when_written(self, delivery: Delivery, written: "asyncio.Future[None]") -> None:
        """Ack once the outcome is recorded, never before (a crash in between runs the task
        again); meanwhile its lease is renewed, and its slot may be free (see ``_free``).  An
        outcome that cannot be recorded sends the task back to its queue."""
        if written.done():
            self._recorded(delivery, written)
            return
        if written not in self._recording:
            self._recording.add(written)
            written.add_done_callback(self._recording.discard)
        self._unrecorded[id(delivery)] = delivery
        written.add_done_callback(functools.partial(self._written, delivery))

    def _written(self, delivery: Delivery, written: "asyncio.Future[None]") -> None:
        del self._unrecorded[id(delivery)]
        self._recorded(delivery, written)
        if self._free() >= self._wake_at:
            self._slot_free.set()

    def _recorded(self, delivery: Delivery, written: "asyncio.Future[None]") -> None:
        error = "the write was cancelled" if written.cancelled() else written.exception()
        if error is None:
            self._ack(delivery)
            return
        logger.warning("%s cannot record the outcome of %s (%s); returning it to its queue", self.name, delivery.id, error)
        requeue = asyncio.ensure_future(self._safely(self.api.broker.requeue(delivery, delay=1.0)))  # type: ignore[union-attr]
        self._recording.add(requeue)
        requeue.add_done_callback(self._recording.discard)

    def _ack(self, delivery: Delivery) -> None:
        self._to_ack.append(delivery)
        if self._ack_flush is None:
            self._ack_flush = asyncio.create_task(self._flush_acks())

    async def _flush_acks(self) -> None:
        """The acks of every task that ended in the loop turn before this one; they leave with
        whatever else that turn sends (on Redis, the next FETCH) in one write."""
        self._ack_flush = None
        batch, self._to_ack = self._to_ack, []
        if batch:
            await self._safely(self.api.broker.ack(batch))  # type: ignore[union-attr]

    async def _safely(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except Exception as exc:
            logger.warning("%s: %s", self.name, exc)
            return None
