"""Fixtures of the reliability suite: broker setups in their own namespaces, servers stopped by pid.

A setup on Redis or RabbitMQ skips when the shared server is unreachable,
and fails instead under ``CI=true`` (``require_server``).  Whatever a setup
left on the shared servers is dropped after the test.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest
from chaos_harness import ChaosServer, Setup, setup_for, shared_servers
from e2e_helpers import require_server


@pytest.fixture
def make_setup(tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    """``make_setup("redis")``: a broker setup with a fresh namespace; its data is dropped afterwards."""
    made: list[Setup] = []

    def make(name: str, **urls: str) -> Setup:
        for url in shared_servers(name, **urls):
            require_server(url)
        setup = setup_for(name, tmp_path, **urls)
        made.append(setup)
        return setup

    yield make
    for setup in made:
        if setup.name != "sqlite":
            setup.drop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ChaosServer]]:
    """``make_server(setup, *args, workers=2)``: a started ``chaos_app.py`` server, stopped after the test."""
    servers: list[ChaosServer] = []

    def make(setup: Setup, *args: str, workers: int = 2) -> ChaosServer:
        server = ChaosServer(setup, tmp_path, *args, name=f"server-{len(servers)}")
        servers.append(server)
        return server.start(workers)

    yield make
    for server in servers:
        server.stop()
