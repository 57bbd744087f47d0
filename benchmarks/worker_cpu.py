"""CPU per task of one pq worker, in this process: how much is pq and how much the job.

    .venv/bin/python benchmarks/worker_cpu.py [--broker redis|amqp] [--jobs 20000] [--rounds 2]

Starts a private redis-server (the data store, and the broker unless
``--broker amqp``: RabbitMQ at ``BENCH_AMQP_URL``), queues ``--jobs`` tasks
of ``noop`` and of ``incr`` (one redis-py ``INCR``), and runs one ``Worker``
in this process until they are done, reading this process's CPU time.  No
actor, no second consumer: the difference between the two jobs is what the
job body costs, and ``noop`` is what pq itself costs per task.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RedisServer, table  # noqa: E402

from pq.actors.actor import new_event_loop  # noqa: E402


async def run(job: str, jobs: int) -> tuple[float, float]:
    """Tasks per second and µs of this process's CPU per task for one drain of ``job``."""
    import pq_bench
    import pq_jobs
    from pq.api import Worker

    pq_jobs._client = None  # the job's redis-py client belongs to the loop it was made on
    await pq_bench.setup()
    api = pq_bench.API
    try:
        for first in range(0, jobs, 1000):
            await api.tasks.queue_many(job, [{} for _ in range(min(1000, jobs - first))])
        worker = Worker(api, "worker-cpu")
        started, cpu = time.perf_counter(), time.process_time()
        await worker.start()
        while worker.processed < jobs or worker.info()["inflight"]:
            await asyncio.sleep(0.005)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        await worker.stop(5)
        return jobs / elapsed, cpu / jobs * 1e6
    finally:
        await api.store.drop()
        if api.broker is not api.store:
            await api.broker.drop()
        await pq_bench.teardown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=["redis", "amqp"], default="redis")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    redis = RedisServer().start()
    try:
        token = f"pqcpu{uuid.uuid4().hex[:6]}"
        os.environ.update(PQ_DATA_STORE=redis.url, PQ_NAMESPACE=token, PQ_TASK_QUEUES=token, PQ_LOG_LEVEL="warning",
                          BENCH_REDIS_URL=redis.url, BENCH_COUNTER=f"{token}:counter")
        if args.broker == "amqp":
            os.environ["PQ_MESSAGE_BROKER"] = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
        rows = []
        for _ in range(args.rounds):
            for job in ("noop", "incr"):
                with asyncio.Runner(loop_factory=new_event_loop) as runner:  # uvloop, as in a consumer
                    rate, cpu = runner.run(run(job, args.jobs))
                rows.append([job, f"{rate:,.0f}", f"{cpu:.1f}"])
    finally:
        redis.stop()
    print(f"\none worker in this process, broker {args.broker}, {args.jobs} tasks a drain\n")
    print(table(["job", "tasks/s", "µs of CPU per task"], rows))


if __name__ == "__main__":
    main()
