"""dramatiq: ``dramatiq dramatiq_peer --processes 2 --threads 8`` (Redis or RabbitMQ broker; no results)."""
from __future__ import annotations

import dramatiq

from _common import AMQP_URL, BROKER, COUNTER, QUEUE, REDIS_URL, sync_redis

if BROKER == "amqp":
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=AMQP_URL)
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=REDIS_URL, namespace=f"dramatiq-{QUEUE}")
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def incr() -> None:
    sync_redis().incr(COUNTER)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop() -> None:
    pass


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def mark(key: str) -> None:
    sync_redis().rpush(key, 1)


JOBS = {"incr": incr, "noop": noop}


def worker_commands(bin_dir: str) -> list[list[str]]:
    return [[f"{bin_dir}/dramatiq", "dramatiq_peer", "--processes", "2", "--threads", "8", "--queues", QUEUE]]


def setup() -> None:
    pass


def teardown() -> None:
    broker.close()


def enqueue(job: str) -> None:
    JOBS[job].send()


def enqueue_mark(key: str) -> None:
    mark.send(key)
