"""Hostile messages put straight into the broker: each is dead-lettered with its reason, the server goes on.

The messages bypass the producer (``broker.enqueue`` with an ``Envelope``), as
anyone who can write to the broker could.  After them a normal task still
completes, no consumer died, and the worker never took the path of an
unexpected error (which would requeue the message for ever).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import pytest
from chaos_harness import JOB, ChaosServer, Setup, pending
from e2e_helpers import wait_for

from pq.brokers import Envelope
from pq.tasks import Task

MAX_SIZE = 4096


def task_body(task_id: str, name: str = JOB, **fields: Any) -> bytes:
    return json.dumps({**Task(id=task_id, name=name, queue="default").to_dict(), **fields}).encode()


def hostile_messages() -> list[tuple[str, bytes, str]]:
    """``(id, body, what the dead letter's reason must say)``."""
    return [
        ("random-bytes", os.urandom(300), "cannot be decoded by the json codec"),
        ("empty", b"", "cannot be decoded by the json codec"),
        ("not-a-map", b"[1, 2, 3]", "must decode to a map"),
        ("wrong-schema", b'{"hello": "world", "id": 3}', "unknown field(s): hello"),
        ("no-name", b'{"id": "no-name"}', "no 'name' string"),
        ("too-deep", b"[" * 4000, "cannot be decoded by the json codec"),
        ("unknown-job", task_body("unknown-job", "no.such.job"), "Task 'no.such.job' is not available"),
        ("wrong-arguments", task_body("wrong-arguments", kwargs={"bogus": 1}), "cannot take these arguments"),
        ("over-size", task_body("over-size", kwargs={"n": "x" * 2 * MAX_SIZE}), "over max_message_size=4096"),
        ("bad-meta", task_body("bad-meta", meta={"max_retries": "many"}), "meta 'max_retries' must be a finite"),
        ("bad-status", task_body("bad-status", status=[1]), "'status' [1] is not a known state"),
        ("not-a-number", task_body("not-a-number").replace(b'"timeout": null', b'"timeout": NaN'),
         "NaN is not a JSON number"),
    ]


@pytest.mark.parametrize("broker", ["sqlite", "redis", "amqp+sqlite"])
def test_hostile_messages_are_dead_lettered(broker: str, make_setup: Callable[..., Setup],
                                            make_server: Callable[..., ChaosServer]) -> None:
    setup = make_setup(broker)
    server = make_server(setup, "--max-message-size", str(MAX_SIZE))
    consumers = {p.pid for p in server.consumers()}
    api = setup.app().api()
    messages = hostile_messages()
    api.start().wait(30)
    api.call(api.broker.enqueue([Envelope(mid, "default", body) for mid, body, _ in messages])).result(30)

    def dead() -> dict[str, str]:
        return {letter.id: letter.reason for letter, _ in api.tasks.dead_letters(limit=1000).wait(30)}

    reasons = wait_for(lambda: (found := dead()) and len(found) >= len(messages) and found, 60,
                       0.2, what="every hostile message in the dead letters")
    for mid, _, expected in messages:
        assert expected in reasons[mid], (mid, reasons[mid])
    task = api.tasks.queue(JOB, n=7).wait(60)
    assert (task.status_string, task.result) == ("SUCCESS", 7)
    wait_for(lambda: pending(api) == 0, 30, 0.1, what="no message left in the queue")  # acks are batched
    assert server.process.poll() is None and {p.pid for p in server.consumers()} == consumers
    logs = server.logs()
    assert "failed handling message" not in logs and "Traceback" not in logs
    for mid, _, _ in messages:
        assert mid in logs  # each refusal is logged with the message id
    api.close().wait(30)
