"""pulsar-queue's example jobs: concurrency limits, locks, queueing from a task, thread IO."""
import asyncio
import os
import time

from pq import api


class MaxConcurrency(api.Job):
    """At most two of these run at once, across every consumer of every server."""

    max_concurrency = 2

    async def __call__(self, lag=1):
        start = time.time()
        await asyncio.sleep(lag)
        return {"start": start, "end": time.time()}


class NotOverlap(api.Job):
    """Runs never overlap: each holds the job's lock while it sleeps."""

    async def __call__(self, lag=1):
        async with self.lock():
            start = time.time()
            await asyncio.sleep(lag)
            return {"start": start, "end": time.time()}


@api.job()
async def queue_from_task(self):
    """Queue ``asynchronous`` from this task and return its outcome."""
    task = await self.queue("asynchronous", lag=0.1)
    return {"id": task.id, "from_task": task.from_task, "status": task.status_string}


@api.job()
def workerinfo(self):
    """Where this task runs."""
    return {"worker": self.task.worker, "node": self.backend.node_name, "pid": os.getpid()}


@api.job(concurrency=api.THREAD_IO)
def read_text(self, input=None):
    """Read a text file on the consumer's thread pool."""
    assert input, "input is required"
    with open(input) as fp:
        return fp.read()


@api.job()
async def testlocalqueue(self, lag=0.1):
    """Queue ``workerinfo`` on this server's node queue and return where both ran."""
    task = await self.queue_local("workerinfo")
    return {"queue": task.queue, "node": self.backend.node_name, "local": task.result}
