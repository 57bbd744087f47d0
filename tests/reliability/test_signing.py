"""Signed messages: with a ``secret`` only its holders can make workers run code.

A server started with ``--secret`` runs what a producer with the same secret
queues, and dead-letters (and logs) anything unsigned, signed with another
secret, or tampered with, without running it.  ``execute.python``, which
runs arbitrary code, is off unless the server enables it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
from chaos_harness import JOB, ChaosServer, Setup
from e2e_helpers import wait_for

from pq.brokers import Envelope
from pq.serializers import JsonCodec, MessageCodec
from pq.tasks import Task

SECRET = "the-shared-secret"
INVALID = "message signature is missing or invalid"


def touch_code(path: Path) -> str:
    """execute.python code with a visible side effect."""
    return f"open({str(path)!r}, 'w').write('ran'); result = 42"


@pytest.mark.parametrize("broker", ["sqlite", "redis", "amqp+sqlite"])
def test_only_signed_messages_run(broker: str, tmp_path: Path, make_setup: Callable[..., Setup],
                                  make_server: Callable[..., ChaosServer]) -> None:
    setup = make_setup(broker)
    server = make_server(setup, "--secret", SECRET, "--enable-execute-python")
    api = setup.app(secret=SECRET).api()
    assert api.tasks.queue(JOB, n=3).wait(60).result == 3  # same secret: runs

    def forged(task_id: str) -> Task:
        return Task(id=task_id, name="execute.python", queue="default",
                    kwargs={"code": touch_code(tmp_path / task_id)})

    signed = MessageCodec(JsonCodec(), SECRET)
    tampered = signed.encode(forged("tampered").to_dict()).replace(b"tampered", b"tamperex")
    bodies = {
        "unsigned": MessageCodec(JsonCodec()).encode(forged("unsigned").to_dict()),
        "other-secret": MessageCodec(JsonCodec(), "another secret").encode(forged("other-secret").to_dict()),
        "bad-signature": b"0" * 64 + b":" + json.dumps(forged("bad-signature").to_dict()).encode(),
        "tamperex": tampered,
    }
    api.start().wait(30)
    api.call(api.broker.enqueue([Envelope(mid, "default", body) for mid, body in bodies.items()])).result(30)

    def dead() -> dict[str, str]:
        return {letter.id: letter.reason for letter, _ in api.tasks.dead_letters().wait(30)}

    reasons = wait_for(lambda: (found := dead()) and set(bodies) <= set(found) and found, 60, 0.2,
                       what="the forged messages in the dead letters")
    logs = server.logs()
    for mid in bodies:
        assert INVALID in reasons[mid]
        assert f"dead-lettered message {mid}: {INVALID}" in logs
    assert not any((tmp_path / mid).exists() for mid in (*bodies, "tampered"))
    task = api.tasks.queue("execute.python", code=touch_code(tmp_path / "signed")).wait(60)
    assert (task.status_string, task.result) == ("SUCCESS", 42) and (tmp_path / "signed").exists()
    api.close().wait(30)


def test_execute_python_is_off_unless_enabled(tmp_path: Path, make_setup: Callable[..., Setup],
                                              make_server: Callable[..., ChaosServer]) -> None:
    setup = make_setup("sqlite")
    make_server(setup)
    api = setup.app().api()
    task = api.tasks.queue("execute.python", code=touch_code(tmp_path / "ran")).wait(60)
    assert task.status_string == "FAILURE"
    assert "disabled; start the server with --enable-execute-python" in task.exception
    assert not (tmp_path / "ran").exists()
    letters = wait_for(lambda: {letter.id: letter.reason for letter, _ in api.tasks.dead_letters().wait(30)},
                       30, 0.1, what="the dead letter")
    assert "disabled" in letters[task.id]
    api.close().wait(30)
