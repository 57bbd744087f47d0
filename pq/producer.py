"""The producer api: ``app().api()``, its ``tasks`` and events.

The api binds to the event loop running where it is first used.  Used from
a plain shell (no running loop) it runs its own loop in a background thread,
so ``api.tasks.queue(...).wait()`` works and ``on_events`` callbacks fire
while the shell waits for input.
"""
from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import socket
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Coroutine

from . import brokers, events
from .batch import Batcher
from .brokers.base import DataStore, Envelope, EventItem, MessageBroker
from .exceptions import BrokerError, ImproperlyConfigured, TaskNotAvailable
from .jobs.executors import Executors
from .jobs.registry import JobRegistry
from .manager import Manager
from .serializers import MessageCodec, get_codec
from .tasks import READY_STATES, ApiFuture, Task, running_loop

if TYPE_CHECKING:
    from .app import PulsarQueue
    from .config import Config

logger = logging.getLogger("pq.producer")

NODE_ENV = "PQ_NODE_NAME"
# A waiter re-reads the task record this often, in case an event was lost.
RECHECK_INTERVAL = 5.0
MIRROR_LIMIT = 100_000  # most tasks queued here whose records follow their events (oldest dropped)
SWEEP_SIZE = 500  # records re-read per sweep, oldest waited first
QUEUE_BATCH = 1000  # tasks queued in one store call at most


def node_name(cfg: "Config") -> str:
    """This server's node name (set by the arbiter for its actors), else this process's."""
    return os.environ.get(NODE_ENV) or f"{cfg.name}.{socket.gethostname()}.{os.getpid()}"


class Producer:
    """The api of an application: queue tasks, read them back, listen to events."""

    def __init__(self, app: "PulsarQueue") -> None:
        self.app = app
        self.cfg = app.cfg
        self.codec = MessageCodec(get_codec(self.cfg.message_serializer), self.cfg.secret, self.cfg.max_message_size)
        self.registry = JobRegistry(self.cfg.task_paths)
        self.node_name = node_name(self.cfg)
        self.manager: Manager = (app.manager_class or Manager)(self)
        self.callbacks = events.EventCallbacks()
        preload = [path.removesuffix(".*") for path in self.cfg.task_paths]
        self.executors = Executors(self.cfg.thread_workers, self.cfg.cpu_workers, preload)
        self.broker: MessageBroker | None = None
        self.store: DataStore | None = None
        self.bus: Any = None  # carries events: the store, or a broker reaching further (carries_events)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._starting: asyncio.Future | None = None
        self._listening: dict[str, asyncio.Future] = {}
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._mirrored: OrderedDict[str, None] = OrderedDict()  # ids whose events update records here
        self._sweeper: asyncio.Future | None = None
        self._events: Batcher[tuple[EventItem, Task | None]] = Batcher(self._write_events)
        self._queued: Batcher[tuple[Task, bytes]] = Batcher(self._write_queued, QUEUE_BATCH)
        from .taskapi import TasksApi

        self.tasks = TasksApi(self)

    def __repr__(self) -> str:
        return f"<pq api {self.cfg.name} broker={brokers.redact_url(self.cfg.broker_url)}>"

    # loop binding ---------------------------------------------------------------
    def call(self, coro: Coroutine[Any, Any, Any]) -> "asyncio.Future[Any] | Any":
        """Run ``coro`` on the api's loop; an asyncio task there, a concurrent future elsewhere."""
        running = running_loop()
        if self._loop is None or self._loop.is_closed():
            self._loop = running or self._background_loop()
        if running is self._loop:
            return self._loop.create_task(coro)
        if not self._loop.is_running():
            coro.close()
            raise RuntimeError("the api's event loop has stopped; make a new api with app().api()")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def future(self, coro: Coroutine[Any, Any, Any]) -> ApiFuture:
        return ApiFuture(self.call(coro))

    def _background_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="pq-api-loop", daemon=True)
        self._thread.start()
        ready.wait()
        return loop

    # lifecycle ------------------------------------------------------------------
    def start(self) -> ApiFuture:
        """Connect to the broker and data store and listen to events: ``api = await api.start()``."""
        return self.future(self._started())

    async def _started(self) -> "Producer":
        if self._starting is None or (self._starting.done() and self._starting.exception() is not None):
            self._starting = asyncio.ensure_future(self._connect())
        await asyncio.shield(self._starting)
        return self

    async def start_retrying(self, who: str) -> "Producer":
        """Connect, retrying with backoff while the broker or store cannot be reached (in actors)."""
        pause = 0.5
        while True:
            try:
                return await self._started()
            except BrokerError as exc:
                logger.warning("%s cannot connect (%s); retrying in %.1f s", who, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)

    async def _connect(self) -> None:
        cfg = self.cfg
        store = brokers.create(cfg.data_store, namespace=cfg.namespace)
        if not isinstance(store, DataStore):
            raise ImproperlyConfigured(
                f"data_store {brokers.redact_url(cfg.data_store)!r} cannot hold events and results; "
                "use sqlite://, memory:// or redis://"
            )
        if cfg.message_broker and cfg.message_broker != cfg.data_store:
            broker = brokers.create(cfg.message_broker, namespace=cfg.namespace)
        else:
            broker = store  # type: ignore[assignment]
        if not isinstance(broker, MessageBroker):
            raise ImproperlyConfigured(f"{brokers.redact_url(cfg.broker_url)!r} cannot hold task queues")
        store.node = broker.node = self.node_name
        await store.connect()
        if broker is not store:
            await broker.connect()
        self.store, self.broker = store, broker
        self.bus = broker if broker is not store and broker.carries_events and store.one_machine else store
        await self.manager.start()

    def close(self) -> ApiFuture:
        """Stop listening and close connections."""
        return self.future(self._close())

    async def _close(self) -> None:
        if self._starting is None:
            return
        self._starting = None
        await self.manager.close()
        listening, self._listening = self._listening, {}
        for subscribing in listening.values():
            if subscribing.done() and subscribing.exception() is None:
                await subscribing.result().close()
        if self.broker is not None and self.broker is not self.store:
            await self.broker.close()
        if self.store is not None:
            await self.store.close()
        self.executors.close()
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.cancel()
        self._waiters.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()

    def thread_pool(self) -> Any:
        return self.executors.threads

    # events ---------------------------------------------------------------------
    def on_events(self, channel: str, event: str, callback: Callable[[str, str, Any], Any]) -> None:
        """Call ``callback(channel, event, message)`` for each matching event (glob patterns)."""
        self.callbacks.add(channel, event, callback)
        if channel not in self._listening:
            self.call(self.listen(channel))

    async def listen(self, channel: str) -> None:
        """Receive the events of ``channel`` from now on (subscribing once per channel)."""
        await self._started()
        subscribing = self._listening.get(channel)
        if subscribing is None or (subscribing.done() and subscribing.exception() is not None):
            subscribing = asyncio.ensure_future(self.bus.subscribe(self._on_event, [channel]))
            self._listening[channel] = subscribing
        await asyncio.shield(subscribing)

    def remove_event_callback(self, channel: str, event: str, callback: Callable[[str, str, Any], Any]) -> None:
        self.callbacks.remove(channel, event, callback)

    async def _on_event(self, channel: str, event: str, payload: bytes) -> None:
        if channel == events.TASK and not self.callbacks.wants(channel) and \
                (event != events.DONE or not (self._waiters or self._mirrored)):
            return  # only done events resolve waiters: without callbacks the rest need no decoding
        try:
            if channel == events.TASK:
                task = self.decode_task(payload)
                if event == events.DONE:
                    if task.id in self._mirrored:
                        await self._mirror(task, payload)
                    self._resolve(task)
                message: Any = task
            else:
                message = self.codec.decode(payload)
        except Exception as exc:
            logger.warning("dropped an event %s.%s that cannot be decoded: %s", channel, event, exc)
            return
        self.callbacks.fire(channel, event, message)

    async def publish(self, channel: str, event: str, data: dict[str, Any]) -> None:
        """Publish a non-task event (consumer status, control)."""
        await self.bus.publish(channel, event, self.codec.encode(data))

    def task_event(
        self, event: str, task: Task, body: bytes | None = None, ttl: float | None = None
    ) -> Coroutine[Any, Any, bytes]:
        """Record a task's new state, publish its event and tell the Manager; returns the body.

        The write is asked for when this is called, with the task as it is then, not when
        the result is awaited, and never lands after an event asked for later (pq/batch.py).
        """
        body = body if body is not None else self.encode_task(task)
        return self._written(self.submit_task_event(event, task, body, ttl), body)

    def submit_task_event(
        self, event: str, task: Task, body: bytes, ttl: float | None = None, delay: float = 0.0
    ) -> "asyncio.Future[None]":
        """``task_event`` for a caller that needs no result: the future of the write itself,
        without a coroutine (a worker asks for one ``started`` per task).  The write may wait
        ``delay`` seconds for other events to share it."""
        return self._events.submit([((task.id, body, ttl, event), self._snapshot(task))], delay)

    def task_events(
        self, event: str, tasks: list[tuple[Task, bytes]], ttl: float | None = None
    ) -> Coroutine[Any, Any, bytes | None]:
        """``task_event`` for many tasks; concurrent calls share one store round trip."""
        entries = [((task.id, body, ttl, event), self._snapshot(task)) for task, body in tasks]
        return self._written(self._events.submit(entries) if entries else None, None)

    @property
    def _manager_listens(self) -> bool:
        """Whether the Manager overrides ``store_message`` (else nobody reads the task objects)."""
        return type(self.manager).store_message is not Manager.store_message

    def _snapshot(self, task: Task) -> Task | None:
        """The task as it is now, for the Manager; None when nobody reads it."""
        return task.copy() if self._manager_listens else None

    @staticmethod
    async def _written(written: "asyncio.Future[None] | None", result: bytes | None) -> bytes | None:
        if written is not None:
            await asyncio.shield(written)
        return result

    async def _write_events(
        self, entries: list[tuple[EventItem, Task | None]], envelopes: list[Envelope] | None = None
    ) -> None:
        """One batch of task events: records and events written (by the store, or records here
        and events on the broker that reaches every machine), then the Manager told, in order.
        ``envelopes`` (the store being the broker too) go in the same call, after the records."""
        assert self.store is not None
        items = [item for item, _ in entries]
        if self.bus is self.store:
            await self.store.task_events(items, envelopes or ())
        else:
            await asyncio.gather(*(self.store.set_task(task_id, body, ttl) for task_id, body, ttl, _ in items))
            await self.bus.publish_events(events.TASK, [(event, body) for _, body, _, event in items])
        await self._tell_manager([task for _, task in entries])

    async def _tell_manager(self, tasks: list[Task | None]) -> None:
        """``Manager.store_message`` for each new state, in order; a hook that fails is logged,
        not the write's failure."""
        for task in tasks:
            if task is not None:
                try:
                    await self.manager.store_message(task)
                except Exception:
                    logger.exception("Manager.store_message failed for %r", task)

    async def enqueue_tasks(self, tasks: list[tuple[Task, bytes]]) -> None:
        """Put new tasks on their queues, record them and publish ``queued``; bursts share round trips."""
        await self._queued.add(tasks)

    def queue_now(self, task: Task, body: bytes) -> "asyncio.Future[Task] | None":
        """Queue a new task without a coroutine of its own, when called on the api's loop once
        started (else None: take the coroutine path).

        The future resolves in ``task`` once it is queued: a single ``queue()`` costs the
        caller one write shared with the loop turn's other calls.
        """
        loop, starting = self._loop, self._starting
        if loop is None or starting is None or not _succeeded(starting) or running_loop() is not loop:
            return None
        queued: asyncio.Future[Task] = loop.create_future()
        self._queued.submit([(task, body)]).add_done_callback(functools.partial(_settle, queued, task))
        return queued

    async def _write_queued(self, tasks: list[tuple[Task, bytes]]) -> None:
        """Record first, then enqueue: a consumer may finish a task at once, and a QUEUED
        record written after its SUCCESS would leave it QUEUED for good.  When one store is
        both, it does the two in one round trip."""
        assert self.broker is not None
        envelopes = [Envelope(task.id, task.queue, body, task.eta) for task, body in tasks]
        if self.broker is self.store:  # records, events and messages in one call, records first
            await self._write_events(
                [((task.id, body, None, events.QUEUED), self._snapshot(task)) for task, body in tasks], envelopes)
        else:
            if self.bus is not self.store:
                await self._mirror_results(tasks)
            await self.task_events(events.QUEUED, tasks)
            await self.broker.enqueue(envelopes)

    async def _mirror_results(self, tasks: list[tuple[Task, bytes]]) -> None:
        """Where events are the only way back (a one-machine store, a broker carrying events),
        the ``done`` events of the tasks queued here update their records here, so
        ``get_task`` and ``wait_for_result`` work on this machine even after the task ended."""
        await self.listen(events.TASK)
        for task, _ in tasks:
            self._mirrored[task.id] = None
        while len(self._mirrored) > MIRROR_LIMIT:
            self._mirrored.popitem(last=False)

    async def _mirror(self, task: Task, payload: bytes) -> None:
        """Record the outcome of a task queued here.  Only ``done``: it is final, so a late
        event can never put an older state over a newer record."""
        del self._mirrored[task.id]
        assert self.store is not None
        try:
            await self.store.set_task(task.id, payload, self.cfg.result_ttl or None)
        except Exception as exc:
            logger.warning("cannot record the outcome of task %s: %s", task.id, exc)

    # waiting for tasks ----------------------------------------------------------
    def _resolve(self, task: Task) -> None:
        for waiter in self._waiters.pop(task.id, ()):
            if not waiter.done():
                waiter.set_result(task)

    def waiter(self, task_id: str) -> "asyncio.Future[Task]":
        """A future of the api loop resolved by the ``done`` event of ``task_id``."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, []).append(waiter)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep())
        return waiter

    async def wait_done(self, task_id: str, waiter: "asyncio.Future[Task]", timeout: float | None = None) -> Task:
        """Wait for the waiter of ``task_id``; TimeoutError after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"task {task_id} not done within {timeout} seconds") from None
        finally:
            if not waiter.done():
                self.drop_waiter(task_id, waiter)

    def drop_waiter(self, task_id: str, waiter: "asyncio.Future[Task]") -> None:
        """Forget a waiter nobody awaits any more."""
        waiters = self._waiters.get(task_id)
        if waiters and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[task_id]

    async def _sweep(self) -> None:
        """Now and then read the records of the oldest waited tasks, in case a done event was lost."""
        assert self.store is not None
        while self._waiters:
            await asyncio.sleep(RECHECK_INTERVAL)
            ids = list(itertools.islice(self._waiters, SWEEP_SIZE))
            try:
                records = await self.store.get_tasks(ids)
            except Exception as exc:
                logger.warning("cannot re-read waited tasks: %s", exc)
                continue
            for body in records:
                if body is not None:
                    task = self.decode_task(body)
                    if task.status in READY_STATES:
                        self._resolve(task)

    # codec ----------------------------------------------------------------------
    def encode_task(self, task: Task) -> bytes:
        return self.codec.encode(task.to_message())

    def decode_task(self, body: bytes) -> Task:
        return Task.from_dict(self.codec.decode(body))

    def job(self, name: str) -> Any:
        """The job class of ``name``; when no task_paths are loaded any name is accepted (None)."""
        if not self.registry:
            return None
        if name not in self.registry:
            raise TaskNotAvailable(name, list(self.registry))
        return self.registry[name]

    @property
    def consumers(self) -> list[Any]:
        return [self.tasks]


def _settle(future: "asyncio.Future[Any]", result: Any, written: "asyncio.Future[None]") -> None:
    """Resolve ``future`` in ``result`` as ``written`` ended (its error, its cancellation)."""
    if future.done():
        return
    if written.cancelled():
        future.cancel()
    elif written.exception() is not None:
        future.set_exception(written.exception())  # type: ignore[arg-type]
    else:
        future.set_result(result)


def _succeeded(future: asyncio.Future) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None
