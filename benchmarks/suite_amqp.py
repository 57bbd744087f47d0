"""AMQP suite (issue 6): pq with ``--message-broker amqp://`` against dramatiq
(RabbitmqBroker), celery (amqp, ``task_acks_late``) and taskiq-aio-pika, on the
machine's RabbitMQ.

pq's data store (records, results, events) is a private redis-server started
here; the jobs INCR a counter in that Redis, the completion signal.  Every
queue and exchange of a run carries a fresh token (``pqbench<hex>``); all of
them are deleted between the steps and at the end, nothing else is touched.
Tasks are acknowledged after they ran in every system.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from typing import Any

from common import RedisServer, base_env, log
from suite_common import Plan, Result, measure
from suite_redis import report

PEERS = ["dramatiq", "celery", "taskiq"]
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _names(kind: str) -> list[str]:
    out = subprocess.run(["rabbitmqctl", "-q", f"list_{kind}", "name"], capture_output=True, text=True, timeout=60)
    return [line.strip() for line in out.stdout.splitlines()[1:] if line.strip()]


def delete_objects(token: str) -> None:
    """Delete the queues and exchanges whose name holds ``token`` (this run's, no one else's)."""
    queues = [name for name in _names("queues") if token in name]
    exchanges = [name for name in _names("exchanges") if token in name]
    if not queues and not exchanges:
        return

    async def delete() -> None:
        import aio_pika

        connection = await aio_pika.connect(AMQP_URL)
        try:
            channel = await connection.channel()
            for name in queues:
                await channel.queue_delete(name)
            for name in exchanges:
                await channel.exchange_delete(name)
        finally:
            await connection.close()

    asyncio.run(delete())


def run(args: Any) -> dict[str, Any]:
    plan = Plan(jobs=args.jobs, latency=args.latency, sequential=args.sequential, batch=args.batch,
                concurrency=args.concurrency, concurrent=args.concurrent)
    systems = ["pq"] + [peer for peer in PEERS if not args.peers or peer in args.peers]
    redis = RedisServer().start()
    log(f"amqp suite: RabbitMQ at {AMQP_URL.split('@')[-1]}, private redis-server on port {redis.port}")
    results: list[Result] = []
    try:
        for system in systems:
            token = f"pqbench{uuid.uuid4().hex[:8]}"
            env = base_env(
                BENCH_BROKER="amqp", BENCH_AMQP_URL=AMQP_URL, BENCH_REDIS_URL=redis.url,
                BENCH_QUEUE=token, BENCH_COUNTER=f"bench:{token}:counter",
                PQ_MESSAGE_BROKER=AMQP_URL, PQ_DATA_STORE=redis.url, PQ_NAMESPACE=token, PQ_TASK_QUEUES=token,
                PQ_LOG_LEVEL="warning",
            )
            try:
                results.append(measure(system, env, redis, plan, cleanup=lambda token=token: delete_objects(token)))
            finally:
                delete_objects(token)
    finally:
        redis.stop()
    out = report(results, plan, "amqp", targets=False)
    out["notes"].insert(0, "pq: message broker amqp:// (RabbitMQ), data store redis:// (a private redis-server)")
    return out
