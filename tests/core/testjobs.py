"""Jobs used by the core tests (importable by CPUBOUND children)."""
import asyncio
import os
import time

from pq import api

STATE: dict = {"running": 0, "peak": 0, "calls": {}}


@api.job(max_concurrency=2)
async def limited(self, lag=0.2):
    STATE["running"] += 1
    STATE["peak"] = max(STATE["peak"], STATE["running"])
    try:
        await asyncio.sleep(lag)
    finally:
        STATE["running"] -= 1
    return "done"


@api.job(max_retries=3, retry_delay=0.05)
def flaky(self, key="k", failures=2):
    calls = STATE["calls"][key] = STATE["calls"].get(key, 0) + 1
    if calls <= failures:
        raise ValueError(f"failure {calls}")
    return calls


@api.job()
def always_fails(self):
    raise KeyError("boom")


@api.job(concurrency=api.CPUBOUND, timeout=1)
def cpu_sleeper(self, path="", lag=30):
    with open(path, "w") as fp:
        fp.write(str(os.getpid()))
    time.sleep(lag)
    return "never"


@api.job(timeout=0.2)
async def slow(self, lag=5):
    await asyncio.sleep(lag)


@api.job()
async def sleeper(self, lag=5):
    await asyncio.sleep(lag)
    return "slept"


@api.job(concurrency=api.THREAD_IO)
def in_thread(self):
    import threading

    return threading.current_thread().name


@api.job()
def returns_unserializable(self):
    return object()


@api.job()
def marker(self, path=""):
    with open(path, "a") as fp:
        fp.write("ran\n")
    return "ran"


@api.job(ack_policy="ack_always")
def fails_dropped(self):
    raise ValueError("dropped")


@api.job(ack_policy="reject_requeue", retry_delay=0.05)
def fails_requeued(self, key="rq"):
    calls = STATE["calls"][key] = STATE["calls"].get(key, 0) + 1
    if calls < 3:
        raise ValueError(f"requeued {calls}")
    return calls


@api.job()
async def shell_echo(self, text="hi"):
    return (await self.shell(f"echo {text}")).strip()


@api.job()
async def shell_fails(self):
    return await self.shell("exit 3")


@api.job()
async def blocking_in_executor(self, n=3):
    import threading

    return await self.run_in_executor(lambda: (n * 2, threading.current_thread().name))
