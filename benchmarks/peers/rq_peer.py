"""rq: two ``rq worker --worker-class rq.worker.SimpleWorker`` processes.

SimpleWorker runs jobs in the worker process; rq's default Worker forks a
child per job, which caps it near a hundred jobs a second.
"""
from __future__ import annotations

from typing import Any

from redis import Redis
from rq import Queue

from _common import COUNTER, QUEUE, REDIS_URL, sync_redis

QUEUE_OBJ: Any = None


def incr() -> None:
    sync_redis().incr(COUNTER)


def noop() -> None:
    pass


def mark(key: str) -> None:
    sync_redis().rpush(key, 1)


JOBS = {"incr": incr, "noop": noop}


def worker_commands(bin_dir: str) -> list[list[str]]:
    return [[f"{bin_dir}/rq", "worker", "--url", REDIS_URL, "--worker-class", "rq.worker.SimpleWorker",
             "--quiet", QUEUE] for _ in range(2)]


def setup() -> None:
    global QUEUE_OBJ
    QUEUE_OBJ = Queue(QUEUE, connection=Redis.from_url(REDIS_URL))


def teardown() -> None:
    QUEUE_OBJ.connection.close()


def enqueue(job: str) -> None:
    QUEUE_OBJ.enqueue(JOBS[job])


def enqueue_batch(job: str, n: int) -> None:
    QUEUE_OBJ.enqueue_many([Queue.prepare_data(JOBS[job]) for _ in range(n)])


def enqueue_mark(key: str) -> None:
    QUEUE_OBJ.enqueue(mark, key)
