"""A server (``manage.py``) in a subprocess, started and stopped by pid, and bounded polling."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


class Server:
    """One ``python manage.py`` process with its settings, started and stopped by pid."""

    def __init__(self, store: str, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.store = store
        self.args = ["--data-store", store, "--heartbeat", "0.2", "--lease-timeout", "3",
                     "--task-pool-timeout", "0.5", "--graceful-timeout", "10", *args]
        self.log = log
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self, workers: int = 2) -> "Server":
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "-w", str(workers), *self.args],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )
        wait_for(lambda: len(self.consumers()) >= workers, 30, what="consumers to start")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []

    def consumers(self) -> list[psutil.Process]:
        """Consumer actors: the children whose command line names them (see the arbiter)."""
        found = []
        for child in self.children():
            try:
                if "consumer" in " ".join(child.cmdline()) or child.name().startswith("pq-consumer"):
                    found.append(child)
            except psutil.NoSuchProcess:
                continue
        return found

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait; SIGKILL the whole tree if it does not stop in time."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        tree = [self.pid, *(p.pid for p in psutil.Process(self.pid).children(recursive=True))]
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in tree:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return self.process.wait(10)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


REDIS_URL = os.environ.get("PQ_TEST_REDIS", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("PQ_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")


def require_server(url: str) -> None:
    """Skip when the server of ``url`` does not answer; under CI=true fail instead."""
    import socket
    from urllib.parse import urlsplit

    import pytest

    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
    except OSError as exc:
        message = f"{parts.scheme} server at {parts.hostname}:{parts.port} is not reachable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: the machine must run it)")
        pytest.skip(message)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
