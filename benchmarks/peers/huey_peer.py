"""huey: ``huey_consumer huey_peer.huey -w 2 -k process`` (SqliteHuey or RedisHuey).

Jobs return 1 so that huey stores a result, as pq does: on sqlite the
suite counts those results to know when the run is done.
"""
from __future__ import annotations

from huey import RedisHuey, SqliteHuey
from huey.storage import SqliteStorage

from _common import BROKER, COUNTER, QUEUE, REDIS_URL, SQLITE_PATH, sync_redis



class NormalSyncStorage(SqliteStorage):
    """WAL with ``synchronous=NORMAL``, as pq's sqlite store: huey's default is FULL."""

    def _create_connection(self):  # type: ignore[no-untyped-def]
        conn = super()._create_connection()
        conn.execute("pragma synchronous=1")
        return conn


if BROKER == "sqlite":
    huey = SqliteHuey(name=QUEUE, filename=SQLITE_PATH, storage_class=NormalSyncStorage)
else:
    huey = RedisHuey(name=QUEUE, url=REDIS_URL)


@huey.task()
def incr() -> int:
    sync_redis().incr(COUNTER)
    return 1


@huey.task()
def noop() -> int:
    return 1


@huey.task()
def mark(key: str) -> int:
    sync_redis().rpush(key, 1)
    return 1


JOBS = {"incr": incr, "noop": noop}


def worker_commands(bin_dir: str) -> list[list[str]]:
    return [[f"{bin_dir}/huey_consumer", "huey_peer.huey", "-w", "2", "-k", "process", "-q"]]


def setup() -> None:
    pass


def teardown() -> None:
    pass


def enqueue(job: str) -> None:
    JOBS[job]()


def enqueue_mark(key: str) -> None:
    mark(key)
