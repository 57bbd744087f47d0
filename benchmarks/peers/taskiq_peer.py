"""taskiq: ``taskiq worker taskiq_peer:broker --workers 2``.

Redis: taskiq-redis's RedisStreamBroker (acknowledged), results in Redis.
AMQP: taskiq-aio-pika, no result backend.  Acknowledged once the
task ran (taskiq's default ``when_saved``).
"""
from __future__ import annotations

from _common import AMQP_URL, BROKER, COUNTER, QUEUE, REDIS_URL, async_redis

if BROKER == "amqp":
    from taskiq_aio_pika import AioPikaBroker

    broker = AioPikaBroker(url=AMQP_URL, queue_name=QUEUE, exchange_name=f"{QUEUE}.x",
                           dead_letter_queue_name=f"{QUEUE}.dead", delay_queue_name=f"{QUEUE}.delay")
else:
    from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

    broker = RedisStreamBroker(url=REDIS_URL, queue_name=QUEUE, consumer_group_name=f"{QUEUE}.g") \
        .with_result_backend(RedisAsyncResultBackend(redis_url=REDIS_URL, result_ex_time=3600))


@broker.task(task_name="incr")
async def incr() -> None:
    await async_redis().incr(COUNTER)


@broker.task(task_name="noop")
async def noop() -> None:
    pass


@broker.task(task_name="mark")
async def mark(key: str) -> None:
    await async_redis().rpush(key, 1)


JOBS = {"incr": incr, "noop": noop}


def worker_commands(bin_dir: str) -> list[list[str]]:
    return [[f"{bin_dir}/taskiq", "worker", "taskiq_peer:broker", "--workers", "2", "--no-configure-logging"]]


async def setup() -> None:
    await broker.startup()


async def teardown() -> None:
    await broker.shutdown()


async def enqueue(job: str) -> None:
    await JOBS[job].kiq()


async def enqueue_mark(key: str) -> None:
    await mark.kiq(key)
