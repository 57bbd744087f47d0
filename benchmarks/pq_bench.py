"""pq in the benchmarks: the server entry point and the producer hooks of driver.py.

    python benchmarks/pq_bench.py -w 2 --data-store redis://... [--message-broker amqp://...]

Every setting also comes from ``PQ_*`` environment variables, which is how
the suites give the server and the driver the same stores, namespace and queue.
"""
from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pq.api import PulsarQueue  # noqa: E402

task_paths = ["pq_jobs"]

API: Any = None


def app() -> PulsarQueue:
    return PulsarQueue(config=__file__)


async def setup() -> None:
    global API
    API = await app().api().start()


async def teardown() -> None:
    await API.close()


async def enqueue(job: str) -> None:
    await API.tasks.queue(job, callback=False)


async def enqueue_batch(job: str, n: int) -> None:
    await API.tasks.queue_many(job, [{} for _ in range(n)])


async def enqueue_mark(key: str) -> None:
    await API.tasks.queue("mark", callback=False, key=key)


if __name__ == "__main__":
    app().start()
