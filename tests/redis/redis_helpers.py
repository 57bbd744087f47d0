"""Helpers of the Redis tests: skipping, key inspection, a private redis-server, bounded waits."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from pq.brokers.redis import RedisStore


def unavailable(reason: str) -> None:
    """Skip, or fail on CI where every server must be there."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: Redis tests must run)")
    pytest.skip(reason)


async def drop_namespace(store: RedisStore) -> None:
    """Delete every key of the store's namespace (and nothing else)."""
    async for key in store.redis.scan_iter(match=store.prefix + "*", count=1000):
        await store.redis.delete(key)


async def namespace_keys(store: RedisStore) -> list[bytes]:
    keys = store.redis.scan_iter(match=store.prefix + "*", count=1000)
    return sorted([key async for key in keys])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server of this test's own, on a free loopback port, persisting to a temp dir."""

    def __init__(self, directory: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            unavailable("redis-server is not installed")
        self.directory = directory
        self.port = free_port()
        self.socket_path = directory / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--unixsocket", str(self.socket_path), "--unixsocketperm", "700",
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.BusyLoadingError:
                    pass
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"redis-server did not start; see {self.directory}/redis.log"
                        )
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL, as a crash: only what was fsynced to the append-only file survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01) -> None:
    """Wait until ``predicate()`` (sync or async) is true, failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
