"""The jobs of pulsar-queue's four steps tutorial."""
import asyncio
import time

from pq import api


@api.job()
def addition(self, a=0, b=0):
    """Add two numbers."""
    return a + b


@api.job()
def subtraction(self, a=0, b=0):
    """Subtract b from a."""
    return a - b


@api.job()
async def asynchronous(self, lag=1):
    """Sleep ``lag`` seconds on the event loop; return the time slept."""
    start = time.time()
    await asyncio.sleep(lag)
    return time.time() - start
