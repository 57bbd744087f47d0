"""The ``start_server`` fixture: real servers, killed by pid after each test."""
from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest

from actor_harness import Server


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """``server = await start_server('-w', '2', env={...})``: started, every actor running."""
    servers: list[Server] = []

    async def start(*args: str, env: dict[str, str] | None = None, wait: bool = True) -> Server:
        workers = int(args[args.index("-w") + 1]) if "-w" in args else 4
        server = Server(tmp_path, list(args), env or {})
        servers.append(server)
        if wait:
            await server.wait_running(workers)
        return server

    yield start
    for server in servers:
        await server.close()
