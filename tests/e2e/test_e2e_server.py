"""The example server end to end on the embedded sqlite store, driven through the public API only."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from e2e_helpers import ROOT, wait_for

TUTORIAL = """
from manage import app
api = app().api()
task = api.tasks.queue('addition', a=4, b=6)
print(repr(task))
task = task.wait()
print(task, task.result, task.status_string)
task = api.tasks.queue('addition', a=4, b=6, callback=False, delay=2).wait()
print(task.status_string)
task = task.done_callback.wait()
print(task.status_string, round(task.time_started - task.time_queued, 1) >= 2.0)
"""


def test_tutorial_in_a_plain_shell(make_server: Any, store_url: str) -> None:
    make_server().start(2)
    env = {**os.environ, "PQ_DATA_STORE": store_url}
    out = subprocess.run(
        [sys.executable, "-c", TUTORIAL], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("<TaskFuture pending ID=i")
    assert lines[1].startswith("task.addition<i") and lines[1].endswith("><SUCCESS> 10 SUCCESS")
    assert lines[2:] == ["QUEUED", "SUCCESS True"]


def test_example_jobs(make_server: Any, app: Any, tmp_path: Path) -> None:
    make_server().start(2)
    api = app.api()
    text = tmp_path / "text.txt"
    text.write_text("hello")
    runs = {
        "addition": ({"a": 1, "b": 2}, 3),
        "subtraction": ({"a": 5, "b": 2}, 3),
        "read.text": ({"input": str(text)}, "hello"),
        "cpuboundbiglog": ({"size": 50000}, 50000),
    }
    futures = {name: api.tasks.queue(name, **kwargs) for name, (kwargs, _) in runs.items()}
    for name, (_, expected) in runs.items():
        task = futures[name].wait(60)
        assert (task.status_string, task.result) == ("SUCCESS", expected), (name, task.exception)
    for name in ("asynchronous", "maxconcurrency", "notoverlap", "queue.from.task", "workerinfo",
                 "cpubound", "cpuboundwithasync", "testlocalqueue"):
        kwargs = {"lag": 0.1} if name in ("asynchronous", "maxconcurrency", "notoverlap") else {}
        task = api.tasks.queue(name, **kwargs).wait(60)
        assert task.status_string == "SUCCESS", (name, task.exception)
    api.close().wait(10)


def test_notoverlap_and_maxconcurrency_across_consumers(make_server: Any, app: Any) -> None:
    make_server().start(2)
    api = app.api()
    runs = [api.tasks.queue("notoverlap", lag=0.3) for _ in range(4)]
    spans = sorted((t.result["start"], t.result["end"]) for t in (f.wait(60) for f in runs))
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))
    runs = [api.tasks.queue("maxconcurrency", lag=0.4) for _ in range(6)]
    spans = [(t.result["start"], t.result["end"]) for t in (f.wait(60) for f in runs)]
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2
    api.close().wait(10)


def test_events_reach_the_shell(make_server: Any, app: Any) -> None:
    make_server().start(2)
    api = app.api()
    seen: list[tuple[str, str]] = []
    status = threading.Event()
    api.on_events("task", "*", lambda channel, event, task: seen.append((event, task.id)))
    api.on_events("consumer", "status", lambda channel, event, info: status.set())
    task = api.tasks.queue("addition", a=1, b=1).wait(30)
    wait_for(lambda: ("done", task.id) in seen, 10, what="done event")
    assert [e for e, i in seen if i == task.id] == ["queued", "started", "done"]
    assert status.wait(10)
    api.close().wait(10)


def test_queue_local_runs_on_that_server(make_server: Any, app: Any) -> None:
    make_server().start(1)
    make_server().start(1)
    api = app.api()
    for _ in range(4):
        task = api.tasks.queue("testlocalqueue").wait(60)
        assert task.status_string == "SUCCESS", task.exception
        result = task.result
        assert result["queue"] == result["node"] == result["local"]["node"]
    api.close().wait(10)


def test_max_requests_recycles_without_losing_tasks(make_server: Any, app: Any) -> None:
    server = make_server("--max-requests", "5").start(1)
    first = {p.pid for p in server.consumers()}
    api = app.api()
    tasks = [f.wait(60) for f in [api.tasks.queue("workerinfo") for _ in range(20)]]
    assert all(t.status_string == "SUCCESS" for t in tasks)
    pids = {t.result["pid"] for t in tasks}
    assert len(pids) >= 4 and not (pids - first) <= set()
    api.close().wait(10)


def test_graceful_stop_loses_nothing(make_server: Any, app: Any) -> None:
    server = make_server("--graceful-timeout", "1").start(2)
    api = app.api()
    futures = [api.tasks.queue("asynchronous", lag=0.5 if i % 2 else 5) for i in range(12)]
    wait_for(lambda: api.tasks.get_task(futures[-1].task_id).wait(10) is not None, 10)
    time.sleep(0.5)
    assert server.stop() == 0
    assert not [p for p in server.children() if p.is_running()]
    states = [api.tasks.get_task(f.task_id).wait(10).status_string for f in futures]
    assert "STARTED" not in states and states.count("SUCCESS") >= 1
    make_server().start(2)
    assert all(f.wait(60).status_string == "SUCCESS" for f in futures)
    api.close().wait(10)


def test_restart_with_100_queued_tasks(make_server: Any, app: Any) -> None:
    first = make_server("--task-queues", "elsewhere").start(2)
    api = app.api()
    ids = api.tasks.queue_many("addition", [{"a": i, "b": 1} for i in range(100)]).wait(30)
    assert len(ids) == 100
    assert first.stop() == 0
    server = make_server().start(2)
    results = [api.tasks.wait_for_result(task_id, timeout=60).wait(70) for task_id in ids]
    assert [t.result for t in results] == [i + 1 for i in range(100)]
    assert server.stop() == 0
    api.close().wait(10)
    assert psutil.pid_exists(server.pid) is False or psutil.Process(server.pid).status() == psutil.STATUS_ZOMBIE


def test_bad_start_says_what_is_wrong_in_one_line() -> None:
    cases = {
        ("--workers", "many"): "bad value for setting 'workers'",
        ("--data-store", "foo://x"): "no broker for URL scheme 'foo'",
        ("--data-store", "redis://127.0.0.1:1/0"): "Redis at redis://127.0.0.1:1/0 is unreachable",
        ("--task-paths", "nosuchmodule"): "task_paths entry 'nosuchmodule' cannot be imported",
    }
    for args, message in cases.items():
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 1
        assert "Traceback" not in out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith("pq: cannot start: ")
        assert message in out.stderr
