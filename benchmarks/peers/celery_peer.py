"""celery: ``celery -A celery_peer worker -c 2 -P prefork`` (Redis or RabbitMQ broker; no result backend).

Gossip, mingle, heartbeats, remote control and events are off: they cost
celery time and pq has no equivalent to switch off.  On RabbitMQ tasks are
acknowledged after they ran (``task_acks_late``), as pq's are.
"""
from __future__ import annotations

from celery import Celery

from _common import AMQP_URL, BROKER, COUNTER, QUEUE, REDIS_URL, sync_redis

app = Celery("bench", broker=AMQP_URL if BROKER == "amqp" else REDIS_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_acks_late=BROKER == "amqp",
    worker_prefetch_multiplier=4,
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="incr")
def incr() -> None:
    sync_redis().incr(COUNTER)


@app.task(name="noop")
def noop() -> None:
    pass


@app.task(name="mark")
def mark(key: str) -> None:
    sync_redis().rpush(key, 1)


JOBS = {"incr": incr, "noop": noop}


def worker_commands(bin_dir: str) -> list[list[str]]:
    return [[f"{bin_dir}/celery", "-A", "celery_peer", "worker", "-c", "2", "-P", "prefork", "-Q", QUEUE,
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]]


def setup() -> None:
    pass


def teardown() -> None:
    app.close()


def enqueue(job: str) -> None:
    JOBS[job].delay()


def enqueue_mark(key: str) -> None:
    mark.delay(key)
