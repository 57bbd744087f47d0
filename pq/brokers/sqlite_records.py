"""Task records, revocations, leased slots, locks and counters of the sqlite store.

A mixin of ``SqliteStore``: every method runs a small function on the
store's connection thread through ``_call``.  Records and leases carry an
``expires`` time: expired rows are ignored at once and deleted by the store's
periodic cleanup.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Awaitable, Callable, Sequence

from . import sqlite_schema as sql
from .sqlite_schema import write


class SqliteRecords:
    """The DataStore methods of ``SqliteStore`` other than events."""

    namespace: str
    _call: Callable[..., Awaitable[Any]]

    @staticmethod
    def _one(conn: sqlite3.Connection, statement: str, args: tuple) -> int:
        """One statement in its own transaction; the number of rows it changed."""
        return conn.execute(statement, args).rowcount

    @staticmethod
    def _many(conn: sqlite3.Connection, statement: str, rows: list[tuple]) -> int:
        """A statement for each row, in one transaction; the number of rows changed."""
        if len(rows) == 1:
            return conn.execute(statement, rows[0]).rowcount
        with write(conn):
            return conn.executemany(statement, rows).rowcount

    # task records and revocations ------------------------------------------------
    def _record(self, kind: str, key: str, value: bytes, ttl: float | None) -> tuple:
        return (self.namespace, kind, key, value, None if ttl is None else time.time() + ttl)

    async def set_task(self, task_id: str, body: bytes, ttl: float | None = None) -> None:
        await self._call(self._one, sql.UPSERT_RECORD, self._record("task", task_id, body, ttl))

    async def add_task(self, task_id: str, body: bytes, ttl: float | None = None) -> bytes | None:
        return await self._call(self._add_task, self._record("task", task_id, body, ttl))

    def _add_task(self, conn: sqlite3.Connection, record: tuple) -> bytes | None:
        with write(conn):
            row = conn.execute(sql.GET_RECORD, (*record[:3], time.time())).fetchone()
            if row is None:
                conn.execute(sql.UPSERT_RECORD, record)
        return None if row is None else row[0]

    async def get_tasks(self, task_ids: Sequence[str]) -> list[bytes | None]:
        return await self._call(self._get_records, "task", list(task_ids))

    def _get_records(
        self, conn: sqlite3.Connection, kind: str, keys: list[str]
    ) -> list[bytes | None]:
        now, ns = time.time(), self.namespace
        rows = [conn.execute(sql.GET_RECORD, (ns, kind, key, now)).fetchone() for key in keys]
        return [None if row is None else row[0] for row in rows]

    async def delete_task(self, task_id: str) -> None:
        await self._call(self._one, sql.DELETE_RECORD, (self.namespace, "task", task_id))

    async def revoke(self, task_id: str, ttl: float) -> None:
        await self._call(self._one, sql.UPSERT_RECORD, self._record("revoked", task_id, b"", ttl))

    async def revoked(self, task_ids: Sequence[str]) -> set[str]:
        ids = list(task_ids)
        found = await self._call(self._get_records, "revoked", ids)
        return {task_id for task_id, value in zip(ids, found, strict=True) if value is not None}

    # slots and locks -------------------------------------------------------------
    async def acquire_slot(self, name: str, limit: int, holder: str, lease: float) -> bool:
        return await self._call(self._acquire, "slot", name, limit, holder, lease)

    def _acquire(
        self, conn: sqlite3.Connection, kind: str, name: str, limit: int, holder: str, ttl: float
    ) -> bool:
        """Take one of ``limit`` leases of ``name`` (a lock has 1), freeing expired ones first."""
        ns, now = self.namespace, time.time()
        with write(conn):
            conn.execute(sql.PRUNE_NAME, (ns, kind, name, now))
            holders = [row[0] for row in conn.execute(sql.HOLDERS, (ns, kind, name, now))]
            if holder not in holders and len(holders) >= limit:
                return False
            conn.execute(sql.UPSERT_LEASE, (ns, kind, name, holder, now + ttl))
        return True

    async def release_slot(self, name: str, holder: str) -> None:
        await self._call(
            self._one, sql.DELETE_LEASE, (self.namespace, "slot", name, holder, float("-inf"))
        )

    async def renew_slots(self, slots: Sequence[tuple[str, str]], lease: float) -> None:
        if slots:
            now = time.time()
            rows = [
                (now + lease, self.namespace, "slot", name, holder, now) for name, holder in slots
            ]
            await self._call(self._many, sql.RENEW_LEASE, rows)

    async def slot_count(self, name: str) -> int:
        return len(await self._call(self._holders, "slot", name))

    def _holders(self, conn: sqlite3.Connection, kind: str, name: str) -> list[str]:
        return [
            row[0] for row in conn.execute(sql.HOLDERS, (self.namespace, kind, name, time.time()))
        ]

    async def acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        return await self._call(self._acquire, "lock", name, 1, holder, ttl)

    async def release_lock(self, name: str, holder: str) -> bool:
        args = (self.namespace, "lock", name, holder, time.time())
        return bool(await self._call(self._one, sql.DELETE_LEASE, args))

    async def lock_holder(self, name: str) -> str | None:
        holders = await self._call(self._holders, "lock", name)
        return holders[0] if holders else None

    # counters --------------------------------------------------------------------
    async def incr(self, key: str, amount: int = 1) -> int:
        return await self._call(self._incr, key, amount)

    def _incr(self, conn: sqlite3.Connection, key: str, amount: int) -> int:
        return conn.execute(sql.INCR, (self.namespace, key, amount)).fetchall()[0][0]

    async def get_counters(self, keys: Sequence[str]) -> dict[str, int]:
        return await self._call(self._counters, list(keys))

    async def delete_counters(self, keys: Sequence[str]) -> None:
        if keys:
            await self._call(self._delete_counters, list(keys))

    def _delete_counters(self, conn: sqlite3.Connection, keys: list[str]) -> None:
        conn.executemany(sql.DELETE_COUNTER, [(self.namespace, key) for key in keys])

    def _counters(self, conn: sqlite3.Connection, keys: list[str]) -> dict[str, int]:
        rows = {
            key: conn.execute(sql.GET_COUNTER, (self.namespace, key)).fetchone() for key in keys
        }
        return {key: 0 if row is None else row[0] for key, row in rows.items()}
