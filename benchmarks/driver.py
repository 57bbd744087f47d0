"""The producer side of one system, run in that system's virtualenv.

    python driver.py SYSTEM ACTION [--n N] [--concurrency C] [--job incr]

SYSTEM is ``pq`` (module ``pq_bench``) or a peer (module ``peers/SYSTEM_peer``).
Each module offers, sync or async (the driver adapts):

- ``setup()`` / ``teardown()``
- ``enqueue(job)``: queue one task of ``job`` (``incr``, ``noop``), one broker call
- ``enqueue_batch(job, n)`` (optional): queue ``n`` tasks with the system's batch API
- ``enqueue_mark(key)``: queue the latency job, which RPUSHes to ``key`` in Redis

Actions print one JSON line:

- ``enqueue``: time ``n`` single enqueue calls, ``concurrency`` in flight
  (coroutines for an async client, threads for a sync one)
- ``batch``: time ``n`` tasks through ``enqueue_batch`` in chunks of ``--chunk``
- ``latency``: ``n`` sequential tasks on an idle server, from the enqueue call
  to the job having run (its RPUSH seen by a BLPOP here)
- ``pq-latency`` (pq only): ``n`` sequential ``await api.tasks.queue()``,
  recording queue() -> started (the task's time_started) and -> done seen by the api
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "peers")]


def load(system: str) -> Any:
    return importlib.import_module("pq_bench" if system == "pq" else f"{system}_peer")


def stats(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    return {"n": len(ordered), "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": ordered[-1] * 1000, "mean_ms": sum(ordered) / len(ordered) * 1000}


async def maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class Driver:
    def __init__(self, module: Any, args: argparse.Namespace) -> None:
        self.m = module
        self.args = args
        self.is_async = inspect.iscoroutinefunction(module.enqueue)

    async def run(self, action: str) -> dict[str, Any]:
        await maybe(self.m.setup())
        try:
            return await getattr(self, action.replace("-", "_"))()
        finally:
            await maybe(self.m.teardown())

    async def enqueue(self) -> dict[str, Any]:
        n, concurrency, job = self.args.n, self.args.concurrency, self.args.job
        per = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
        start = time.perf_counter()
        if self.is_async:
            async def sender(count: int) -> None:
                for _ in range(count):
                    await self.m.enqueue(job)

            await asyncio.gather(*(sender(count) for count in per))
        elif concurrency == 1:
            for _ in range(n):
                self.m.enqueue(job)
        else:
            def sender_thread(count: int) -> None:
                for _ in range(count):
                    self.m.enqueue(job)

            threads = [threading.Thread(target=sender_thread, args=(count,)) for count in per]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        seconds = time.perf_counter() - start
        return {"n": n, "concurrency": concurrency, "seconds": seconds, "per_second": n / seconds}

    async def batch(self) -> dict[str, Any]:
        if not hasattr(self.m, "enqueue_batch"):
            return {"n": 0, "per_second": None}
        n, chunk = self.args.n, self.args.chunk
        start = time.perf_counter()
        for offset in range(0, n, chunk):
            await maybe(self.m.enqueue_batch(self.args.job, min(chunk, n - offset)))
        seconds = time.perf_counter() - start
        return {"n": n, "chunk": chunk, "seconds": seconds, "per_second": n / seconds}

    async def latency(self) -> dict[str, Any]:
        import redis
        import redis.asyncio

        url = os.environ["BENCH_REDIS_URL"]
        client: Any = redis.asyncio.Redis.from_url(url) if self.is_async else redis.Redis.from_url(url)
        prefix = f"bench:lat:{os.getpid()}:"
        enqueue_times, run_times = [], []
        for i in range(-self.args.warmup, self.args.n):
            key = f"{prefix}{i}"
            start = time.perf_counter()
            await maybe(self.m.enqueue_mark(key))
            queued = time.perf_counter()
            popped = await maybe(client.blpop([key], timeout=30))
            ran = time.perf_counter()
            if popped is None:
                raise TimeoutError(f"latency task {i} did not run within 30 s")
            if i >= 0:
                enqueue_times.append(queued - start)
                run_times.append(ran - start)
            await asyncio.sleep(self.args.pause)
        await maybe(client.aclose() if self.is_async else client.close())
        return {"enqueue": stats(enqueue_times), "run": stats(run_times)}

    async def pq_latency(self) -> dict[str, Any]:
        api = self.m.API
        to_started, to_done = [], []
        for i in range(-self.args.warmup, self.args.n):
            wall, start = time.time(), time.perf_counter()
            task = await api.tasks.queue(self.args.job)
            done = time.perf_counter()
            if task.status_string != "SUCCESS":
                raise RuntimeError(f"{task} ended {task.status_string}: {task.exception}")
            if i >= 0:
                to_started.append(task.time_started - wall)
                to_done.append(done - start)
            await asyncio.sleep(self.args.pause)
        return {"started": stats(to_started), "done": stats(to_done)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("system")
    parser.add_argument("action", choices=["enqueue", "batch", "latency", "pq-latency"])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--job", default="incr")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--pause", type=float, default=0.005, help="seconds between latency samples")
    args = parser.parse_args()
    module = load(args.system)
    if inspect.iscoroutinefunction(module.enqueue) and getattr(module, "USE_UVLOOP", False):
        import uvloop

        uvloop.install()
    result = asyncio.run(Driver(module, args).run(args.action))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
