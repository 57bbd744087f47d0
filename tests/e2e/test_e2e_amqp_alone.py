"""RabbitMQ alone across machines: each machine keeps its own sqlite store, events and
results travel over RabbitMQ's topic exchange (issue 6)."""
from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from e2e_helpers import AMQP_URL, require_server, wait_for

import manage


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def other_machine(tmp_path: Path, namespace: str) -> Iterator[Any]:
    """The api of a producer on another machine: the same RabbitMQ, its own sqlite file."""
    require_server(AMQP_URL)
    app = manage.PulsarQueue(config=manage.__file__, data_store=f"sqlite:///{tmp_path / 'elsewhere.sqlite3'}",
                             message_broker=AMQP_URL, namespace=namespace, lease_timeout=3)
    api = app.api()
    yield api
    api.call(api.broker.drop()).result(30)
    api.close().wait(10)


def test_results_and_events_reach_a_machine_that_shares_only_rabbitmq(
    make_server: Any, other_machine: Any, namespace: str
) -> None:
    make_server("--message-broker", AMQP_URL, "--namespace", namespace).start(2)
    api = other_machine
    seen: list[tuple[str, str]] = []
    statuses = threading.Event()
    api.on_events("task", "*", lambda channel, event, task: seen.append((task.id, event)))
    api.on_events("consumer", "status", lambda channel, event, info: statuses.set())

    task = api.tasks.queue("addition", a=4, b=6).wait(30)
    assert (task.status_string, task.result) == ("SUCCESS", 10)
    assert task.worker, "the result came from the server's consumer, through RabbitMQ"
    wait_for(lambda: [e for i, e in seen if i == task.id] == ["queued", "started", "done"], 10,
             what="queued, started and done of the task, in order")
    assert statuses.wait(10), "the consumers' status heartbeats cross over too"

    ids = api.tasks.queue_many("addition", [{"a": i, "b": 1} for i in range(50)]).wait(30)
    results = [api.tasks.wait_for_result(task_id, timeout=30).wait(40) for task_id in ids]
    assert [t.result for t in results] == [i + 1 for i in range(50)]
    record = api.tasks.get_task(ids[-1]).wait(10)
    assert (record.status_string, record.result) == ("SUCCESS", 50), "the done event updated the record here"


def test_a_running_task_is_revoked_from_a_machine_that_shares_only_rabbitmq(
    make_server: Any, other_machine: Any, namespace: str
) -> None:
    make_server("--message-broker", AMQP_URL, "--namespace", namespace).start(1)
    api = other_machine
    started = threading.Event()
    api.on_events("task", "started", lambda channel, event, task: started.set())
    future = api.tasks.queue("asynchronous", lag=30)
    assert started.wait(30)
    api.tasks.revoke(future.task_id).wait(10)
    task = future.wait(30)
    assert task.status_string == "REVOKED"
