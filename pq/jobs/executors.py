"""Where a task runs: the consumer's loop, its thread pool, or a killable child process.

CPUBOUND tasks run in a pool of child processes, one task per child at a
time.  A task cancelled (timed out or revoked) kills its child, and the pool
starts a fresh one on demand.  Children send their log records back, so a
job's logs appear in the consumer's log.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect
import logging
import multiprocessing
import os
import signal
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable

logger = logging.getLogger("pq.executors")


class RemoteError(Exception):
    """An exception raised by a job in a child process, with its traceback text."""

    def __init__(self, message: str, stacktrace: str) -> None:
        super().__init__(message)
        self.stacktrace = stacktrace


def run_callable(call: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Call a job outside the event loop; a coroutine result runs on a fresh loop."""
    result = call(**kwargs)
    if inspect.isawaitable(result):
        return asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


class _PipeHandler(logging.Handler):
    """Sends a child's log records to the consumer."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self.conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info))
            self.conn.send(("log", {
                "name": record.name, "levelno": record.levelno, "levelname": record.levelname,
                "msg": message, "created": record.created, "pathname": record.pathname,
                "lineno": record.lineno, "funcName": record.funcName, "process": record.process,
                "processName": "cpubound",
            }))
        except Exception:
            self.handleError(record)


def _child_main(conn: Connection, level: int) -> None:
    """Loop of a CPUBOUND child: run one job call at a time, send back logs and the outcome."""
    from ..tasks import Task

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    root = logging.getLogger()
    root.handlers[:] = [_PipeHandler(conn)]
    root.setLevel(level)
    while True:
        try:
            module, attr, kwargs, task = conn.recv()
        except (EOFError, OSError):
            return
        try:
            job_class = getattr(importlib.import_module(module), attr)
            job = job_class(task=Task.from_dict(task))
            conn.send(("result", run_callable(job, kwargs)))
        except BaseException as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))


class _Child:
    def __init__(self, ctx: Any, level: int) -> None:
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_child_main, args=(child_conn, level), daemon=True, name="pq-cpubound")
        self.process.start()
        child_conn.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        if self.process.is_alive():
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(5)
        self.conn.close()


class ProcessPool:
    """At most ``size`` child processes; ``run`` waits for a free one."""

    def __init__(self, size: int, preload: list[str] | None = None) -> None:
        self.size = size
        self.ctx = multiprocessing.get_context("forkserver")
        if preload:
            self.ctx.set_forkserver_preload(preload)
        self._idle: list[_Child] = []
        self._busy: set[_Child] = set()
        self._free = asyncio.Semaphore(size)

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in (*self._idle, *self._busy)]

    async def run(self, module: str, attr: str, kwargs: dict[str, Any], task: dict[str, Any]) -> Any:
        """Run ``module.attr`` in a child; cancelling this kills the child."""
        async with self._free:
            child = self._idle.pop() if self._idle else await asyncio.to_thread(_Child, self.ctx, logging.getLogger().level)
            self._busy.add(child)
            healthy = False
            try:
                child.conn.send((module, attr, kwargs, task))
                result = await self._receive(child)
                healthy = True
                return result
            except RemoteError:
                healthy = child.process.is_alive()
                raise
            finally:
                self._busy.discard(child)
                if healthy:
                    self._idle.append(child)
                else:
                    logger.warning("killing CPUBOUND child pid %s", child.pid)
                    child.kill()

    async def _receive(self, child: _Child) -> Any:
        """Read the child's messages in a thread: a pipe stays blocking, whatever their size."""
        while True:
            try:
                kind, *payload = await asyncio.to_thread(child.conn.recv)
            except (EOFError, OSError):
                raise RemoteError(
                    f"the CPUBOUND child (pid {child.pid}) died with exit code {child.process.exitcode}", ""
                ) from None
            if kind == "log":
                record = logging.makeLogRecord(payload[0])
                logging.getLogger(record.name).handle(record)
            elif kind == "result":
                return payload[0]
            else:
                raise RemoteError(payload[0], payload[1])

    def close(self) -> None:
        for child in (*self._idle, *self._busy):
            child.kill()
        self._idle.clear()
        self._busy.clear()


class Executors:
    """The thread pool and the process pool of one consumer, made on first use."""

    def __init__(self, thread_workers: int, cpu_workers: int, preload: list[str] | None = None) -> None:
        self.thread_workers = thread_workers
        self.cpu_workers = cpu_workers
        self.preload = preload
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._processes: ProcessPool | None = None

    @property
    def threads(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._threads is None:
            self._threads = concurrent.futures.ThreadPoolExecutor(self.thread_workers, thread_name_prefix="pq-thread")
        return self._threads

    @property
    def processes(self) -> ProcessPool:
        if self._processes is None:
            self._processes = ProcessPool(self.cpu_workers, self.preload)
        return self._processes

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None
        if self._processes is not None:
            self._processes.close()
            self._processes = None
