"""CPUBOUND jobs: they run in child processes of the consumer."""
import asyncio
import os

from pq import api


class CpuBoundError(RuntimeError):
    pass


class CpuBound(api.Job):
    """Log a line and return; raise when asked."""

    concurrency = api.CPUBOUND

    def __call__(self, error=False, lag=0):
        self.logger.info("Testing cpubound in pid %s", os.getpid())
        if lag:
            import time

            time.sleep(lag)
        if error:
            raise CpuBoundError("kaputt")
        return ["OK", os.getpid()]


class CpuBoundWithAsync(api.Job):
    """A coroutine job run in a child process, on a loop of its own."""

    concurrency = api.CPUBOUND

    async def __call__(self, lag=0.1):
        await asyncio.sleep(lag)
        return os.getpid()


class CpuBoundBigLog(api.Job):
    """Log big records from a child process; they reach the consumer's log."""

    concurrency = api.CPUBOUND

    def __call__(self, size=100000):
        self.logger.info("x" * size)
        return size
