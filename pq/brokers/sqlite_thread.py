"""The one thread that owns a sqlite store's connection.

sqlite3 calls block, so a store never makes them on the event loop: each
store has one connection and one thread that runs its calls in order (several
queued calls in one transaction) and hands results back with
``call_soon_threadsafe``.

While someone waits (a blocked fetch, a subscription) the thread also looks at
``PRAGMA data_version``, which changes whenever *another* connection commits
(another process, or another store object).  It looks when told that the
``-wal`` file was written (inotify, see ``sqlite_watch``) or that a store of
this process committed, then again after ``poll``, doubling up to
``poll_max``, because a commit becomes visible just after its write.  Then,
with inotify, it sleeps until the next write (looking once a second all the
same); without, it keeps looking every ``poll_max``.

SQLITE_BUSY never reaches the caller before ``retry_for`` seconds of retries
with backoff on top of sqlite's own ``busy_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from typing import Any, Callable

from ..exceptions import BrokerError
from .sqlite_schema import open_database
from .sqlite_watch import WalWatcher, watch_file

logger = logging.getLogger("pq.brokers.sqlite")

Job = Callable[..., Any]
_NUDGE = object()
MAX_GROUP = 64
QUIET_LOOK = 1.0
_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    return "locked" in str(exc) or "busy" in str(exc)


def _settle(fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(result)
    else:
        fut.set_exception(error)


class SqliteThread:
    """Runs ``fn(conn, *args)`` calls on its own thread and connection, one at a time."""

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float,
        synchronous: str,
        retry_for: float,
        poll: float,
        poll_max: float,
        cleanup_every: float,
        watching: Callable[[], bool],
        on_change: Callable[[sqlite3.Connection], None],
        cleanup: Callable[[sqlite3.Connection], None],
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        self.retry_for = retry_for
        self.poll = poll
        self.poll_max = poll_max
        self.cleanup_every = cleanup_every
        self._watching = watching
        self._on_change = on_change
        self._cleanup = cleanup
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._main, name=f"pq-sqlite:{os.path.basename(path)}", daemon=True
        )
        self._thread.start()

    def call(self, fn: Job, *args: Any, then: Job | None = None) -> asyncio.Future:
        """Run ``fn(conn, *args)`` on the thread, then ``then(conn)`` if given (to wake waiters)."""
        fut = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, args, fut, then))
        return fut

    def nudge(self) -> None:
        """Look at ``data_version`` now: another store in this process has just committed."""
        self._jobs.put(_NUDGE)

    async def stop(self) -> None:
        """Finish queued calls, close the connection and end the thread."""
        await self.call(self._close)

    def _close(self, conn: sqlite3.Connection | None) -> None:
        self._stopping = True
        if conn is not None:
            conn.close()

    def _main(self) -> None:
        conn: sqlite3.Connection | None = None
        failure: BaseException | None = None
        version, watcher = None, None
        try:
            conn = self._retrying(
                lambda _: open_database(self.path, self.busy_timeout, self.synchronous), None
            )
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            fd = watch_file(self.path + "-wal")
            if fd is not None:
                watcher = WalWatcher(fd, self.nudge, self._watching, self.poll)
        except BaseException as exc:
            failure = exc
        poll, pending, last_look, last_cleanup = self.poll, False, 0.0, time.monotonic()
        watching = False
        try:
            while not self._stopping:
                was_watching, watching = watching, conn is not None and self._watching()
                # Starting to watch counts as a write heard: one just before may land just after.
                pending |= watching and not was_watching
                since = time.monotonic() - last_look
                if not watching:
                    timeout = self.cleanup_every
                elif pending:
                    timeout = self.poll - since
                elif watcher is not None and poll >= self.poll_max:
                    timeout = QUIET_LOOK
                else:
                    timeout = poll - since
                try:
                    item = self._jobs.get(timeout=max(timeout, 0.0))
                except queue.Empty:
                    item = None
                nudged, jobs = self._drain(item)
                pending |= nudged
                if jobs:
                    self._execute(conn, failure, jobs)
                    if self._stopping or conn is None:
                        continue
                now = time.monotonic()
                if not watching:
                    poll, pending = self.poll, False
                elif now - last_look >= (self.poll if pending else poll):
                    last_look = now
                    seen = self._guard(
                        conn, lambda c: c.execute("PRAGMA data_version").fetchone()[0]
                    )
                    if seen is not None and seen != version:
                        version, poll = seen, self.poll
                        self._guard(conn, self._on_change)
                    else:
                        poll = self.poll if pending else min(poll * 2, self.poll_max)
                    pending = False
                if conn is not None and now - last_cleanup >= self.cleanup_every:
                    last_cleanup = now
                    self._guard(conn, self._cleanup)
        finally:
            if watcher is not None:
                watcher.stop()
            self._fail_queued()

    def _drain(self, item: Any) -> tuple[bool, list[tuple]]:
        """The call just taken and those queued behind it (up to MAX_GROUP); was there a nudge."""
        nudged = item is _NUDGE
        jobs = [item] if isinstance(item, tuple) else []
        while len(jobs) < MAX_GROUP:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is _NUDGE:
                nudged = True
            else:
                jobs.append(item)
        return nudged, jobs

    def _fail_queued(self) -> None:
        """Calls that came in while the thread was stopping: they fail rather than wait for ever."""
        closed = BrokerError(f"sqlite store on {self.path!r} is closed")
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return
            if item is not _NUDGE:
                try:
                    item[2].get_loop().call_soon_threadsafe(_settle, item[2], None, closed)
                except RuntimeError:
                    pass

    def _execute(
        self, conn: sqlite3.Connection | None, failure: BaseException | None, jobs: list[tuple]
    ) -> None:
        """Run jobs (several in one transaction), each ``then`` once, and hand back results."""
        jobs = [job for job in jobs if not job[2].cancelled()]
        closing = [job for job in jobs if job[0] == self._close]
        work = [job for job in jobs if job[0] != self._close]
        if conn is None:
            error = BrokerError(f"cannot open sqlite database {self.path!r}: {failure}")
            outcomes: list[tuple[Any, BaseException | None]] = [(None, error)] * len(work)
        elif len(work) > 1:
            outcomes = self._grouped(conn, work) or [self._attempt(conn, job) for job in work]
        else:
            outcomes = [self._attempt(conn, job) for job in work]
        if conn is not None:
            for then in dict.fromkeys(
                job[3]
                for job, (_, error) in zip(work, outcomes, strict=True)
                if job[3] and not error
            ):
                self._guard(conn, then)
        for job in closing:
            outcomes.append(self._attempt(conn, job))
        for (_, _, fut, _), (result, error) in zip(work + closing, outcomes, strict=True):
            try:
                fut.get_loop().call_soon_threadsafe(_settle, fut, result, error)
            except RuntimeError:
                pass  # the caller's loop is closed: nobody is waiting for this result

    def _attempt(
        self, conn: sqlite3.Connection | None, job: tuple
    ) -> tuple[Any, BaseException | None]:
        fn, args = job[0], job[1]
        try:
            return self._retrying(fn, conn, *args), None
        except BaseException as exc:
            return None, exc

    def _grouped(
        self, conn: sqlite3.Connection, jobs: list[tuple]
    ) -> list[tuple[Any, BaseException | None]] | None:
        """Jobs in one transaction, each in a savepoint so a failure undoes only itself.

        One commit instead of one per job.  None when the database was busy (or
        the transaction itself failed): it is rolled back and the caller runs the
        jobs one by one, with retries, so jobs must be safe to run again.
        """
        try:
            conn.execute("BEGIN IMMEDIATE")
            outcomes: list[tuple[Any, BaseException | None]] = []
            for fn, args, _, _ in jobs:
                conn.execute("SAVEPOINT job")
                try:
                    outcomes.append((fn(conn, *args), None))
                except sqlite3.OperationalError as exc:
                    if _is_busy(exc):
                        raise
                    conn.execute("ROLLBACK TO job")
                    outcomes.append((None, BrokerError(f"sqlite database {self.path!r}: {exc}")))
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    error = (
                        BrokerError(f"sqlite database {self.path!r}: {exc}")
                        if isinstance(exc, sqlite3.Error)
                        else exc
                    )
                    outcomes.append((None, error))
                conn.execute("RELEASE job")
            conn.execute("COMMIT")
            return outcomes
        except sqlite3.OperationalError:
            if conn.in_transaction:
                conn.rollback()
            return None

    def _retrying(self, fn: Job, conn: sqlite3.Connection | None, *args: Any) -> Any:
        """``fn(conn, *args)``, retried with backoff while the database is locked."""
        deadline = time.monotonic() + self.retry_for
        delay = 0.002
        while True:
            try:
                return fn(conn, *args)
            except sqlite3.OperationalError as exc:
                if conn is not None and conn.in_transaction:
                    conn.rollback()
                if not _is_busy(exc) or time.monotonic() + delay > deadline:
                    raise BrokerError(f"sqlite database {self.path!r}: {exc}") from exc
                logger.debug("sqlite database %s busy, retrying in %.3fs", self.path, delay)
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
            except sqlite3.Error as exc:
                if conn is not None and conn.in_transaction:
                    conn.rollback()
                raise BrokerError(f"sqlite database {self.path!r}: {exc}") from exc

    def _guard(self, conn: sqlite3.Connection, fn: Job) -> Any:
        """Background work (watching, cleanup): a failure is logged, never raised."""
        try:
            return self._retrying(fn, conn)
        except Exception:
            logger.exception("sqlite store background work failed on %s", self.path)
            return None
