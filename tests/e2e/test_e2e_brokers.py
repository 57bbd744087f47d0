"""The server on each broker: killed consumers, broker restarts, plain-Redis producers, fanout."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest
import redis
from e2e_helpers import AMQP_URL, REDIS_URL, free_port, require_server, wait_for

import manage


def app_for(store: str, namespace: str, broker: str | None = None, **kwargs: Any) -> Any:
    return manage.PulsarQueue(config=manage.__file__, data_store=store, message_broker=broker,
                              namespace=namespace, lease_timeout=3, **kwargs)


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["sqlite", "redis", "amqp"])
def broker_setup(request: Any, namespace: str, store_url: str) -> Iterator[tuple[list[str], Any]]:
    """Server flags and an app for each broker."""
    if request.param == "sqlite":
        args = ["--namespace", namespace]
        app = app_for(store_url, namespace)
    elif request.param == "redis":
        require_server(REDIS_URL)
        args = ["--data-store", REDIS_URL, "--namespace", namespace]
        app = app_for(REDIS_URL, namespace)
    else:
        require_server(AMQP_URL)
        args = ["--message-broker", AMQP_URL, "--namespace", namespace]
        app = app_for(store_url, namespace, AMQP_URL)
    yield args, app
    api = app.api()
    api.start().wait(10)
    api.call(api.broker.drop()).result(30)
    if api.store is not api.broker:
        api.call(api.store.drop()).result(30)
    api.close().wait(10)


def test_kill_consumer_mid_task(make_server: Any, broker_setup: Any) -> None:
    args, app = broker_setup
    make_server(*args).start(2)
    api = app.api()
    started = threading.Event()
    api.on_events("task", "started", lambda c, e, task: started.set())
    future = api.tasks.queue("asynchronous", lag=2)
    assert started.wait(30)
    running = api.tasks.get_task(future.task_id).wait(10)
    pid = int(running.worker.rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    task = future.wait(90)
    assert task.status_string == "SUCCESS" and task.attempts == 2
    assert task.worker.rsplit(":", 1)[1] != str(pid)
    api.close().wait(10)


def test_many_tasks_through_two_servers(make_server: Any, broker_setup: Any) -> None:
    args, app = broker_setup
    make_server(*args).start(2)
    make_server(*args).start(1)
    api = app.api()
    ids = api.tasks.queue_many("addition", [{"a": i, "b": 1} for i in range(300)]).wait(30)
    tasks = [api.tasks.wait_for_result(task_id, timeout=60).wait(70) for task_id in ids]
    assert [t.result for t in tasks] == [i + 1 for i in range(300)]
    assert len({t.worker for t in tasks}) >= 2
    api.close().wait(10)


def test_redis_restart_in_the_middle_of_1000_tasks(make_server: Any, tmp_path: Path, namespace: str) -> None:
    """Our own redis-server (persistence on) is killed and restarted mid-run: all 1000 complete."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
           "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    redis_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis(port=port)
    try:
        wait_for(lambda: _pings(client), 10, what="redis-server")
        make_server("--data-store", url, "--namespace", namespace).start(2)
        api = app_for(url, namespace).api()
        ids = api.tasks.queue_many("asynchronous", [{"lag": 0.01} for _ in range(1000)]).wait(60)
        wait_for(lambda: _done_count(client, namespace) >= 100, 60, what="100 tasks done")
        redis_proc.kill()
        redis_proc.wait(10)
        time.sleep(1)
        redis_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        wait_for(lambda: _pings(client), 10, what="redis-server back")
        results = [api.tasks.wait_for_result(task_id, timeout=120).wait(130) for task_id in ids]
        assert all(t.status_string == "SUCCESS" for t in results)
        api.close().wait(10)
    finally:
        redis_proc.kill()
        redis_proc.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _done_count(client: redis.Redis, namespace: str) -> int:
    count = 0
    for key in client.scan_iter(match=f"{{{namespace}}}:task:*", count=1000):
        body = client.get(key)
        if body and json.loads(body)["status"] == 1:
            count += 1
    return count


def test_plain_redis_producer_task_runs(make_server: Any, namespace: str) -> None:
    """A task queued with plain Redis commands (docs/protocol.md), no pq producer, runs."""
    require_server(REDIS_URL)
    make_server("--data-store", REDIS_URL, "--namespace", namespace).start(1)
    client = redis.Redis.from_url(REDIS_URL)
    task_id = "i" + uuid.uuid4().hex
    body = json.dumps({"id": task_id, "name": "addition", "queue": "default", "kwargs": {"a": 40, "b": 2},
                       "status": 6, "time_queued": time.time(), "retries": 0, "attempts": 0})
    ns = "{" + namespace + "}:"
    with client.pipeline(transaction=True) as pipe:
        pipe.hsetnx(f"{ns}body:default", task_id, body)
        pipe.rpush(f"{ns}ready:default", task_id)
        pipe.rpush(f"{ns}wake:default", 1)
        pipe.sadd(f"{ns}queues", "default")
        pipe.execute()
    api = app_for(REDIS_URL, namespace).api()
    task = api.tasks.wait_for_result(task_id, timeout=30).wait(40)
    assert (task.status_string, task.result) == ("SUCCESS", 42)
    api.call(api.store.drop()).result(10)
    api.close().wait(10)


def test_clean_namespace_after_result_ttl(make_server: Any, namespace: str) -> None:
    """Finished tasks whose result_ttl passed leave no key behind in Redis."""
    require_server(REDIS_URL)
    make_server("--data-store", REDIS_URL, "--namespace", namespace, "--result-ttl", "1").start(1)
    api = app_for(REDIS_URL, namespace, result_ttl=1).api()
    ids = api.tasks.queue_many("addition", [{"a": i} for i in range(50)]).wait(30)
    for task_id in ids:
        assert api.tasks.wait_for_result(task_id, timeout=30).wait(40).status_string == "SUCCESS"
    client = redis.Redis.from_url(REDIS_URL)
    prefix = "{" + namespace + "}:"

    def leftovers() -> list[str]:
        keys = [key.decode() for key in client.scan_iter(match=prefix + "*", count=1000)]
        return [key for key in keys if any(task_id in key for task_id in ids) or client.type(key) != b"hash"
                and not key.endswith((":queues", ":counters"))]

    wait_for(lambda: not leftovers(), 15, what="task keys to expire")
    for key in client.scan_iter(match=prefix + "*", count=1000):
        if client.type(key) == b"hash":
            assert not any(client.hexists(key, task_id) for task_id in ids)
    api.call(api.store.drop()).result(10)
    api.close().wait(10)


def test_amqp_connection_closed_mid_run(make_server: Any, namespace: str, store_url: str) -> None:
    require_server(AMQP_URL)
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed")
    make_server("--message-broker", AMQP_URL, "--namespace", namespace).start(2)
    api = app_for(store_url, namespace, AMQP_URL).api()
    ids = api.tasks.queue_many("asynchronous", [{"lag": 0.05} for _ in range(200)]).wait(60)
    time.sleep(0.5)
    listing = subprocess.run(["rabbitmqctl", "list_connections", "pid", "client_properties", "-q"],
                             capture_output=True, text=True, timeout=60)
    closed = 0
    for line in listing.stdout.splitlines():
        if line.strip():
            pid = line.split()[0]
            subprocess.run(["rabbitmqctl", "close_connection", pid, "pq test"], capture_output=True, timeout=60)
            closed += 1
    assert closed >= 1
    results = [api.tasks.wait_for_result(task_id, timeout=120).wait(130) for task_id in ids]
    assert all(t.status_string == "SUCCESS" for t in results)
    api.call(api.broker.drop()).result(30)
    api.close().wait(10)


def test_amqp_fanout_job_runs_once_on_each_server(make_server: Any, namespace: str, store_url: str) -> None:
    require_server(AMQP_URL)
    url = AMQP_URL + "?broadcast=bus"
    servers = [make_server("--message-broker", url, "--namespace", namespace, "--task-queues", "default,bus").start(2)
               for _ in range(2)]
    api = app_for(store_url, namespace, url, task_queues=["default", "bus"]).api()
    seen: list[str] = []
    api.on_events("task", "done", lambda c, e, task: seen.append(task.worker))
    time.sleep(1.0)
    api.tasks.queue("workerinfo", queue="bus", callback=False).wait(30)
    wait_for(lambda: len(seen) >= 2, 30, what="two runs")
    time.sleep(1.0)
    assert len(seen) == 2
    pids = {int(worker.rsplit(":", 1)[1]) for worker in seen}
    owners = {next(s.pid for s in servers if pid in {p.pid for p in psutil.Process(s.pid).children()}) for pid in pids}
    assert len(owners) == 2
    api.call(api.broker.drop()).result(30)
    api.close().wait(10)
