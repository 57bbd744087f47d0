"""A real pq server in a subprocess, the client the tests drive it with, and polling."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import psutil

from pq.actors import Client
from pq.exceptions import MailboxError

APP = Path(__file__).with_name("app_server.py")
FAST = ["--heartbeat", "0.2", "--heartbeat-timeout", "3", "--graceful-timeout", "3", "--log-level", "info"]


async def wait_for(predicate: Callable[[], Awaitable[Any]], timeout: float, what: str,
                   interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await predicate()
        except (MailboxError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def gone(pid: int) -> bool:
    """The process has exited (a zombie left to a non-reaping init counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Server:
    """``python app_server.py`` in a temp directory, reached through its control socket."""

    def __init__(self, cwd: Path, args: list[str], env: dict[str, str]) -> None:
        self.cwd = cwd
        self.control = str(cwd / "pq.sock")
        self.log_path = cwd / "server.log"
        command = [sys.executable, str(APP), *FAST, "--control", self.control, *args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **env})
        self.pid = self.proc.pid
        self._client: Client | None = None
        self.seen: dict[int, psutil.Process] = {}  # every actor process met, to kill at the end

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    async def send(self, target: str, cmd: str, *args: Any, timeout: float = 10.0) -> Any:
        if self._client is None or not self._client.mailbox.is_open:
            self._client = await Client.connect(self.control)
        return await self._client.send(target, cmd, *args, timeout=timeout)

    async def tell(self, target: str, cmd: str, *args: Any) -> None:
        if self._client is None or not self._client.mailbox.is_open:
            self._client = await Client.connect(self.control)
        self._client.tell(target, cmd, *args)

    def _remember(self, pids: list[int]) -> None:
        for pid in pids:
            if pid not in self.seen:
                try:
                    self.seen[pid] = psutil.Process(pid)
                except psutil.NoSuchProcess:
                    pass

    async def actors(self) -> dict[str, dict]:
        """Running (ready, not stopping) actors by name."""
        info = await self.send("arbiter", "info")
        self._remember([actor["pid"] for actor in info["actors"]])
        return {a["name"]: a for a in info["actors"] if a["state"] == "running"}

    async def pids(self) -> dict[str, int]:
        return {name: actor["pid"] for name, actor in (await self.actors()).items()}

    async def wait_running(self, consumers: int, timeout: float = 20.0) -> dict[str, int]:
        """Wait until exactly ``consumers`` consumers, the scheduler and the monitor run, and nothing else."""
        expected = {f"consumer-{n}" for n in range(1, consumers + 1)} | {"scheduler", "monitor"}

        async def ready() -> dict[str, int] | None:
            info = await self.send("arbiter", "info")
            self._remember([actor["pid"] for actor in info["actors"]])
            states = {a["name"]: a["state"] for a in info["actors"]}
            if len(info["actors"]) == len(expected) and set(states) == expected and \
                    set(states.values()) == {"running"}:
                return {a["name"]: a["pid"] for a in info["actors"]}
            return None

        return await wait_for(ready, timeout, f"{consumers} consumers, a scheduler and a monitor")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    async def wait_exit(self, timeout: float) -> int:
        async def exited() -> int | None:
            code = self.proc.poll()
            return None if code is None else code + 1000  # truthy even for 0
        return await wait_for(exited, timeout, f"the server (pid {self.pid}) to exit") - 1000

    def _children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def children(self) -> list[int]:
        return [child.pid for child in self._children()]

    async def close(self) -> None:
        """Kill whatever is left: the server and every actor it ever ran (psutil checks pid reuse)."""
        if self._client is not None:
            await self._client.close()
        left = [*self.seen.values(), *self._children()]
        if self.proc.poll() is None:
            self.proc.kill()
        for process in left:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(10)
