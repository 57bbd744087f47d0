"""Servers in subprocesses, the ``pq`` command, bounded polling and free ports for the monitor tests."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from e2e_helpers import Server as E2EServer
from e2e_helpers import free_port, wait_for  # noqa: F401 - re-exported for the monitor tests

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_api(store: str) -> Any:
    """The example app's api on ``store``, as a user gets it: ``from manage import app``."""
    import manage

    return manage.PulsarQueue(config=manage.__file__, data_store=store).api()


class Server(E2EServer):
    """The e2e server, also waiting for its monitor (which serves stats and the dashboard)."""

    def __init__(self, store: str, log: Path, *args: str) -> None:
        super().__init__(store, log, "--graceful-timeout", "5", *args)

    def start(self, workers: int = 2) -> "Server":
        super().start(workers)
        wait_for(lambda: "monitor (pid" in self.logs(), 30, what=f"the monitor to start (log {self.log})")
        return self

    def consumer_pids(self) -> list[int]:
        return [process.pid for process in self.consumers()]


def pq(*args: str, store: str | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run the ``pq`` command from the repository root (where manage.py is), as a user would."""
    env = {**os.environ}
    env.pop("PQ_DATA_STORE", None)
    if store is not None:
        env["PQ_DATA_STORE"] = store
    return subprocess.run([sys.executable, "-m", "pq.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def pq_json(*args: str, store: str) -> Any:
    out = pq(*args, "--json", store=store)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def http_get(url: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes to the dashboard and read until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
