"""Servers for the monitor tests: each module shares one (its tests use their own queues) to stay fast."""
from __future__ import annotations

from typing import Callable, Iterator

import pytest
from monitor_helpers import Server


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """``launch(*args, workers=2)``: a server on its own sqlite store, stopped after the module."""
    servers: list[Server] = []

    def start(*args: str, workers: int = 2) -> Server:
        folder = tmp_path_factory.mktemp("server")
        server = Server(f"sqlite:///{folder / 'pq.sqlite3'}", folder / "server.log", *args)
        servers.append(server)
        return server.start(workers)

    yield start
    for server in servers:
        server.stop()

