"""Tables, statements and connection set-up of the sqlite store.

Every table carries a ``namespace`` column, so many applications (or tests)
share one file.  A message is ready when its ``ready_at`` has passed: a lease
moves ``ready_at`` to the lease's end, so an expired lease is ready again
without a sweeper, and one index on ``(namespace, queue, ready_at)`` serves
fetch, delays and leases alike.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Iterator
from urllib.parse import urlsplit

from ..exceptions import ImproperlyConfigured

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS pq_messages (
    seq INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    body BLOB NOT NULL,
    ready_at REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    token INTEGER,
    consumer TEXT
);
CREATE INDEX IF NOT EXISTS pq_messages_ready ON pq_messages (namespace, queue, ready_at);
CREATE TABLE IF NOT EXISTS pq_dead (
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (namespace, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pq_dead_time ON pq_dead (namespace, time);
CREATE TABLE IF NOT EXISTS pq_records (
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    expires REAL,
    PRIMARY KEY (namespace, kind, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pq_records_expires ON pq_records (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS pq_leases (
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    holder TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (namespace, kind, name, holder)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pq_counters (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pq_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    channel TEXT NOT NULL,
    event TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""

TABLES = ("pq_messages", "pq_dead", "pq_records", "pq_leases", "pq_counters", "pq_events")

# queues
INSERT_MESSAGE = (
    "INSERT INTO pq_messages (namespace, queue, id, body, ready_at) VALUES (?, ?, ?, ?, ?)"
)
NEXT_READY = "SELECT min(ready_at) FROM pq_messages WHERE namespace = ? AND queue = ?"
SELECT_READY = (
    "SELECT seq, id, body, deliveries FROM pq_messages "
    "WHERE namespace = ? AND queue = ? AND ready_at <= ? ORDER BY ready_at, seq LIMIT ?"
)
CLAIM = (
    "UPDATE pq_messages SET token = ?, consumer = ?, ready_at = ?, deliveries = deliveries + 1 "
    "WHERE seq = ?"
)
RENEW = "UPDATE pq_messages SET ready_at = ? WHERE seq = ? AND token = ?"
ACK = "DELETE FROM pq_messages WHERE seq = ? AND token = ?"
REQUEUE = (
    "UPDATE pq_messages SET body = coalesce(?, body), ready_at = ?, token = NULL, consumer = NULL, "
    "deliveries = 0 WHERE seq = ? AND token = ?"
)
TAKE = "DELETE FROM pq_messages WHERE seq = ? AND token = ? RETURNING id, queue, body"
PURGE = (
    "DELETE FROM pq_messages WHERE namespace = ? AND queue = ? AND (token IS NULL OR ready_at <= ?)"
)
COUNT_READY = "SELECT count(*) FROM pq_messages WHERE namespace = ? AND queue = ? AND ready_at <= ?"
COUNT_LATER = (
    "SELECT count(*) - count(token), count(token) FROM pq_messages "
    "WHERE namespace = ? AND queue = ? AND ready_at > ?"
)
RECOVER = (
    "UPDATE pq_messages SET token = NULL, consumer = NULL "
    "WHERE namespace = ? AND token IS NOT NULL AND ready_at <= ?"
)

# dead letters
INSERT_DEAD = (
    "INSERT OR REPLACE INTO pq_dead (namespace, id, queue, body, reason, time) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
COUNT_DEAD = "SELECT queue, count(*) FROM pq_dead WHERE namespace = ? GROUP BY queue"

# events
INSERT_EVENT = "INSERT INTO pq_events (namespace, channel, event, payload) VALUES (?, ?, ?, ?)"
LAST_EVENT = "SELECT coalesce(max(id), 0) FROM pq_events"
# New events of a namespace, plus the newest row of any namespace so the cursor
# moves past other namespaces' events in the same snapshot.
NEW_EVENTS = (
    "SELECT id, namespace = ?, channel, event, payload FROM pq_events WHERE id > ? "
    "AND (namespace = ? OR id = (SELECT max(id) FROM pq_events)) ORDER BY id"
)
PRUNE_EVENTS = "DELETE FROM pq_events WHERE id <= ?"

# records, leases, counters
UPSERT_RECORD = (
    "INSERT OR REPLACE INTO pq_records (namespace, kind, key, value, expires) "
    "VALUES (?, ?, ?, ?, ?)"
)
GET_RECORD = (
    "SELECT value FROM pq_records WHERE namespace = ? AND kind = ? AND key = ? "
    "AND (expires IS NULL OR expires > ?)"
)
DELETE_RECORD = "DELETE FROM pq_records WHERE namespace = ? AND kind = ? AND key = ?"
PRUNE_RECORDS = "DELETE FROM pq_records WHERE expires IS NOT NULL AND expires <= ?"
PRUNE_NAME = "DELETE FROM pq_leases WHERE namespace = ? AND kind = ? AND name = ? AND expires <= ?"
HOLDERS = (
    "SELECT holder FROM pq_leases WHERE namespace = ? AND kind = ? AND name = ? AND expires > ?"
)
UPSERT_LEASE = (
    "INSERT OR REPLACE INTO pq_leases (namespace, kind, name, holder, expires) "
    "VALUES (?, ?, ?, ?, ?)"
)
RENEW_LEASE = (
    "UPDATE pq_leases SET expires = ? WHERE namespace = ? AND kind = ? AND name = ? AND holder = ? "
    "AND expires > ?"
)
DELETE_LEASE = (
    "DELETE FROM pq_leases WHERE namespace = ? AND kind = ? AND name = ? AND holder = ? "
    "AND expires > ?"
)
PRUNE_LEASES = "DELETE FROM pq_leases WHERE expires <= ?"
INCR = (
    "INSERT INTO pq_counters (namespace, key, value) VALUES (?, ?, ?) "
    "ON CONFLICT (namespace, key) DO UPDATE SET value = value + excluded.value RETURNING value"
)
GET_COUNTER = "SELECT value FROM pq_counters WHERE namespace = ? AND key = ?"
DELETE_COUNTER = "DELETE FROM pq_counters WHERE namespace = ? AND key = ?"


def database_path(url: str) -> str:
    """The absolute file path of ``sqlite:///relative.db`` or ``sqlite:////abs/path.db``."""
    parts = urlsplit(url)
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if parts.netloc or not path or path == ":memory:":
        raise ImproperlyConfigured(
            f"bad sqlite URL {url!r}: use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db "
            "(a file every process can open; for an in-process store use memory://)"
        )
    return os.path.abspath(path)


def open_database(path: str, busy_timeout: float, synchronous: str) -> sqlite3.Connection:
    """A connection in WAL mode with the schema in place; SQLITE_BUSY is the caller's to retry."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    conn = sqlite3.connect(
        path,
        timeout=busy_timeout,
        isolation_level=None,
        check_same_thread=False,
        cached_statements=256,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA temp_store = MEMORY")
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            with write(conn):
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction taken at once (BEGIN IMMEDIATE), so it never fails half-way on a lock.

    Inside a transaction already (a group commit) it adds nothing: the group's
    savepoint undoes a failure.
    """
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise


@contextlib.contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Several reads that see one state of the database."""
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")
