"""Start the example server (``manage.py``) in a subprocess and drive it through the public API."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from e2e_helpers import Server

@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'pq.sqlite3'}"


@pytest.fixture
def make_server(tmp_path: Path, store_url: str) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(*args: str, store: str | None = None, env: dict[str, str] | None = None) -> Server:
        server = Server(store or store_url, tmp_path / f"server-{len(servers)}.log", *args, env=env)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def app(store_url: str) -> Any:
    """The example app as a user builds it: ``from manage import app``."""
    import manage

    return manage.PulsarQueue(config=manage.__file__, data_store=store_url, lease_timeout=3)
