"""The ``pq`` command against a running server on sqlite, run as a user runs it (a subprocess)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
from monitor_helpers import Server, make_api, pq, pq_json, wait_for


@pytest.fixture(scope="module")
def server(launch: Callable[..., Server]) -> Server:
    return launch("--task-queues", "default,cli-q,cli-dead")


def test_status_shows_queues_and_servers(server: Server) -> None:
    out = pq("status", store=server.store)
    assert out.returncode == 0, out.stderr
    assert "1 server(s), 2 consumer(s) alive" in out.stdout
    header = next(line for line in out.stdout.splitlines() if line.startswith("QUEUE"))
    assert header.split() == ["QUEUE", "READY", "DELAYED", "IN", "FLIGHT", "DEAD", "DONE/MIN", "FAILED/MIN"]
    assert any(line.split()[:2] == ["cli-q", "0"] for line in out.stdout.splitlines())
    assert str(server.pid) in out.stdout
    stats = pq_json("status", store=server.store)
    assert [s["pid"] for s in stats["servers"]] == [server.pid]
    assert {"default", "cli-q", "cli-dead"} <= {q["name"] for q in stats["queues"]}


def test_workers_lists_every_actor_with_its_figures(server: Server) -> None:
    def complete() -> list[list[str]]:
        out = pq("workers", store=server.store)
        assert out.returncode == 0, out.stderr
        rows = [line.split() for line in out.stdout.splitlines()[1:]]
        return rows if all("running" in row and "MiB" in row for row in rows) else []

    rows = wait_for(complete, 15, what="a report taken once every actor was running")
    assert sorted(row[1] for row in rows) == ["arbiter", "consumer-1", "consumer-2", "monitor", "scheduler"]
    actors = pq_json("workers", store=server.store)
    consumers = [a for a in actors if a["kind"] == "consumer"]
    assert sorted(a["pid"] for a in consumers) == sorted(server.consumer_pids())
    assert all(a["rss"] > 0 and "processed" in a and "inflight" in a for a in consumers)


def test_queue_parses_values_and_waits(server: Server, tmp_path: Path) -> None:
    out = pq("queue", "addition", "a=2", "b=3", "--queue", "cli-q", "--wait", store=server.store)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1:] == ["SUCCESS", "result=5"]
    text = tmp_path / "hello.txt"
    text.write_text("hello")
    task = pq_json("queue", "read.text", f"input={text}", "--wait", store=server.store)
    assert (task["status"], task["result"], task["kwargs"]) == ("SUCCESS", "hello", {"input": str(text)})
    task = pq_json("queue", "addition", "a=[1]", "b=[2, 3]", "--wait", store=server.store)
    assert task["result"] == [1, 2, 3]
    failed = pq("queue", "addition", "a=x", "b=1", "--wait", store=server.store)
    assert failed.returncode == 1 and "FAILURE TypeError" in failed.stdout


def test_queue_then_inspect(server: Server) -> None:
    out = pq("queue", "addition", "a=1", "b=1", store=server.store)
    assert out.returncode == 0, out.stderr
    task_id, status = out.stdout.split()[:2]
    assert status == "QUEUED"

    def done() -> str:
        shown = pq("inspect", task_id, store=server.store)
        assert shown.returncode == 0, shown.stderr
        return shown.stdout if "SUCCESS" in shown.stdout else ""

    shown = wait_for(done, 20, what="the task to run")
    fields = dict(line.split(None, 1) for line in shown.splitlines()[1:] if line.strip())
    assert fields["id"] == task_id and fields["job"] == "addition" and fields["result"] == "2"
    failed = pq("queue", "addition", "a=x", "b=1", "--wait", "--json", store=server.store)
    assert failed.returncode == 1
    shown = pq("inspect", json.loads(failed.stdout)["id"], store=server.store)
    assert "TypeError" in shown.stdout and "Traceback (most recent call last)" in shown.stdout
    missing = pq("inspect", "i-no-such-task", store=server.store)
    assert missing.returncode == 1 and "no task 'i-no-such-task'" in missing.stderr


def test_dead_letters_list_retry_and_purge(server: Server) -> None:
    api = make_api(server.store)
    try:
        ids = [api.tasks.queue("addition", a="x", b=i, queue="cli-dead").wait(30).id for i in range(3)]
    finally:
        api.close().wait(10)
    listed = pq_json("dead-letters", "list", "--queue", "cli-dead", store=server.store)
    assert sorted(d["id"] for d in listed) == sorted(ids)
    assert all(d["job"] == "addition" and "TypeError" in d["reason"] for d in listed)
    table = pq("dead-letters", "list", "--queue", "cli-dead", store=server.store).stdout
    assert table.splitlines()[0].split() == ["ID", "QUEUE", "JOB", "TIME", "REASON"]

    refused = pq("dead-letters", "retry", store=server.store)
    assert refused.returncode == 1 and "give the ids of the dead letters to retry, or --all" in refused.stderr
    retried = pq("dead-letters", "retry", ids[0], store=server.store)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == "retried 1 dead letter(s)"
    assert "retried dead letters: 1/1" in retried.stderr

    def dead_again() -> bool:
        letters = pq_json("dead-letters", "list", "--queue", "cli-dead", store=server.store)
        return sorted(d["id"] for d in letters) == sorted(ids)

    wait_for(dead_again, 20, what="the retried task to run, fail and be dead-lettered again")
    purged = pq("dead-letters", "purge", "--all", "--queue", "cli-dead", store=server.store)
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.strip() == "purged 3 dead letter(s)"
    assert pq("dead-letters", "list", "--queue", "cli-dead", store=server.store).stdout.strip() == "no dead letters"
    unknown = pq("dead-letters", "retry", "i-not-dead", store=server.store)
    assert unknown.returncode == 1 and "not dead letters" in unknown.stderr


def test_purge_a_queue(server: Server) -> None:
    api = make_api(server.store)
    try:
        api.tasks.queue_many("addition", [{"a": i} for i in range(3)], queue="cli-parked").wait(10)
    finally:
        api.close().wait(10)
    out = pq("purge", "cli-parked", store=server.store)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "purged 3 task(s) from queue 'cli-parked'"
    assert "purging 3 waiting task(s) from queue 'cli-parked'" in out.stderr
    assert pq_json("purge", "cli-parked", store=server.store) == {"queue": "cli-parked", "purged": 0}


def test_jobs_lists_the_registry(server: Server) -> None:
    jobs = pq_json("jobs", store=server.store)
    assert jobs["addition"]["type"] == "regular" and "cpubound" in jobs


def test_errors_say_what_to_do_without_a_traceback(server: Server) -> None:
    cases = [
        (("queue", "nosuchjob"), "Task 'nosuchjob' is not available"),
        (("queue", "addition", "a"), "job arguments are key=value pairs, got 'a'"),
        (("queue", "addition", "delay=3"), "use --delay"),
        (("--app", "nosuchmodule:app", "status"), "cannot import 'nosuchmodule'"),
        (("--app", "manage:nothing", "status"), "'manage' has no 'nothing'"),
        (("--app", "manage", "status"), "use module:callable"),
        (("--data-store", "redis://:hunter2@127.0.0.1:1/0", "status"), "cannot reach the broker redis://:***@"),
        (("--data-store", "nosuch://x", "status"), "no broker for URL scheme 'nosuch'"),
    ]
    for args, message in cases:
        out = pq(*args, store=server.store)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert message in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr and "hunter2" not in out.stderr + out.stdout


def test_passwords_never_appear(server: Server) -> None:
    broker = "memory://someone:s3cret@elsewhere/0"
    for args in (("status",), ("status", "--json"), ("workers",)):
        out = pq(*args, "--message-broker", broker, store=server.store)
        assert out.returncode == 0, out.stderr
        assert "s3cret" not in out.stdout + out.stderr
    stats = json.loads(pq("status", "--json", "--message-broker", broker, store=server.store).stdout)
    assert stats["broker"] == "memory://someone:***@elsewhere/0"
