"""Broker passwords never show: not in logs, errors, ``repr``, the dashboard or the ``pq`` command.

A server and an api work with a password in their Redis URL, then fail in
every way we can make them (the broker gone, the password refused, RabbitMQ
refusing the login, nothing listening): whatever is logged, raised, printed
or served, the password is not in it.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import traceback
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest
from chaos_brokers import PrivateRedis, skip_or_fail
from chaos_harness import HERE, JOB, ChaosServer, Setup, setup_for
from e2e_helpers import AMQP_URL, free_port, require_server, wait_for

from pq.brokers import redact_url
from pq.exceptions import PQError

PASSWORD = "s3cretpw"
PAGES = ("/", "/api/stats", "/api/tasks", "/api/failures", "/api/dead-letters", "/metrics", "/healthz")


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Every log line of this process (pq, redis, aio-pika, asyncio...) with its traceback."""
    lines: list[str] = []
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(formatter.format(record))

    handler, root = Keep(logging.DEBUG), logging.getLogger()
    level, root.level = root.level, logging.DEBUG
    root.addHandler(handler)
    yield lines
    root.removeHandler(handler)
    root.setLevel(level)


def shown(exc: BaseException) -> str:
    """All a user can see of an exception: message, repr and the whole chained traceback."""
    return f"{exc}\n{exc!r}\n" + "".join(traceback.format_exception(exc))


def assert_clean(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text, text[max(0, text.find(PASSWORD) - 300):text.find(PASSWORD) + 100]


def pq_command(setup: Setup, *args: str) -> subprocess.CompletedProcess:
    """``pq ...`` against the setup, as an operator runs it."""
    options = ["--app", "chaos_app:app", "--data-store", setup.data_store, "--namespace", setup.namespace]
    if setup.message_broker:
        options += ["--message-broker", setup.message_broker]
    return subprocess.run([sys.executable, "-m", "pq.cli", *args, *options], cwd=HERE, capture_output=True,
                          text=True, timeout=60)


def http_get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.read().decode(errors="replace")


def test_redact_url() -> None:
    assert redact_url(f"redis://:{PASSWORD}@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact_url(f"amqp://guest:{PASSWORD}@host/vhost") == "amqp://guest:***@host/vhost"
    assert redact_url(f"rediss://user:{PASSWORD}@host:6380/1?ssl_cert_reqs=none") == \
        "rediss://user:***@host:6380/1?ssl_cert_reqs=none"
    assert_clean(redact_url(f"redis://127.0.0.1:6379/0?password={PASSWORD}&db=1"),
                 redact_url(f"unix://:{PASSWORD}@/run/redis.sock?db=0"))


def test_redis_password_is_never_shown(tmp_path: Path, make_server: Callable[..., ChaosServer],
                                       logged: list[str]) -> None:
    if not PrivateRedis.available():
        skip_or_fail("redis-server is not installed")
    redis = PrivateRedis(tmp_path, password=PASSWORD)
    redis.start()
    try:
        setup = Setup("redis", redis.url)
        port = free_port()
        server = make_server(setup, "--dashboard", str(port), "--log-level", "debug")
        api = setup.app().api()
        assert api.tasks.queue(JOB, n=1).wait(60).result == 1
        assert_clean(repr(api), repr(api.broker), repr(api.store), str(api.tasks.stats().wait(30)))
        wait_for(lambda: "pq_" in http_get(f"http://127.0.0.1:{port}/metrics"), 30, 0.2, what="the dashboard")
        pages = [http_get(f"http://127.0.0.1:{port}{page}") for page in PAGES]
        assert "redis://:***@" in pages[1]  # the URL is shown, redacted
        assert_clean(*pages)
        for command in (["status"], ["status", "--json"], ["workers"], ["dead-letters", "list"]):
            out = pq_command(setup, *command)
            assert out.returncode == 0, out.stderr
            assert_clean(out.stdout, out.stderr)
            assert command[0] != "status" or "redis://:***@" in out.stdout

        redis.kill()  # the broker goes away
        with pytest.raises(PQError) as lost:
            api.tasks.queue(JOB, n=2).wait(60)
        assert_clean(shown(lost.value))
        wait_for(lambda: "is unreachable" in server.logs(), 30, 0.2, what="the server to log the outage")
        out = pq_command(setup, "status")
        assert out.returncode == 1 and "cannot reach the broker" in out.stderr
        assert_clean(out.stdout, out.stderr, *(http_get(f"http://127.0.0.1:{port}{page}") for page in PAGES))

        redis.password = "another-password"  # back, but our password is now refused
        redis.start()
        refused = setup.app().api()
        with pytest.raises(PQError) as denied:
            refused.start().wait(60)
        assert "refused pq's credentials" in shown(denied.value)
        assert "check the user name and password in the URL" in shown(denied.value)
        assert_clean(shown(denied.value), repr(refused))
        out = pq_command(setup, "status", "--json")
        assert out.returncode == 1
        assert_clean(out.stdout, out.stderr)
        wait_for(lambda: "invalid username-password" in server.logs(), 30, 0.2,
                 what="the server to log the refusals")
        api.close().wait(30)
        refused.close().wait(30)
        server.stop()
        assert_clean(server.logs(), *logged)
    finally:
        redis.close()


def test_amqp_password_is_never_shown(tmp_path: Path, logged: list[str]) -> None:
    """RabbitMQ refusing the password, and nothing listening: api, server start and ``pq`` all fail cleanly."""
    require_server(AMQP_URL)
    wrong = AMQP_URL.replace("guest:guest@", f"guest:{PASSWORD}@")
    nobody = f"amqp://guest:{PASSWORD}@127.0.0.1:{free_port()}/"
    for url in (wrong, nobody):
        setup = setup_for("amqp+sqlite", tmp_path, amqp_url=url)
        api = setup.app().api()
        with pytest.raises(PQError) as failed:
            api.start().wait(60)
        assert "cannot connect to RabbitMQ" in str(failed.value)
        assert_clean(shown(failed.value), repr(api))
        api.close().wait(30)
        out = pq_command(setup, "status")
        assert out.returncode == 1
        assert_clean(out.stdout, out.stderr)
        server = subprocess.run([sys.executable, str(HERE / "chaos_app.py"), "-w", "1", "--log-level", "debug",
                                 *setup.server_args()], capture_output=True, text=True, timeout=60)
        assert server.returncode != 0 and "cannot start" in server.stderr
        assert_clean(server.stdout, server.stderr)
    assert_clean(*logged)
