"""Broker servers of our own, on free ports, that a test may kill and restart (never the shared ones).

Also what to do when this machine cannot run one: skip, or fail under
``CI=true``.
"""
from __future__ import annotations

import abc
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import psutil
from e2e_helpers import free_port, wait_for


def reachable(url: str) -> bool:
    """True when something accepts connections at the URL's host and port."""
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
        return True
    except OSError:
        return False


class PrivateBroker(abc.ABC):
    """A broker server of our own on a free port, killed and restarted by pid (never the shared one)."""

    url: str

    @abc.abstractmethod
    def start(self) -> None:
        """Start it (again, on the same data) and return once it answers."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL it: a crash."""

    @abc.abstractmethod
    def close(self) -> None:
        """Kill it and remove what it left."""


class PrivateRedis(PrivateBroker):
    """redis-server with its own port and directory; ``appendonly`` with fsync on every write."""

    def __init__(self, folder: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.folder = folder
        self.password = password
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
               "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self._ready(), 20, what="redis-server to answer")

    def _ready(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, password=self.password, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    close = kill


class PrivateRabbit(PrivateBroker):
    """rabbitmq-server as its own node (name, ports, data and log dirs), apart from the shared one.

    RabbitMQ drops to the ``rabbitmq`` user, so its directory is made under
    the system temp dir and given to that user.  Killed with SIGKILL (a
    crash, the data dir kept) and started again on the same data.
    """

    def __init__(self) -> None:
        self.port, self.dist_port = free_port(), free_port()
        self.node = f"pqtest{self.port}@localhost"
        self.folder = Path(tempfile.mkdtemp(prefix="pq-rabbit-"))
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.process: subprocess.Popen | None = None
        (self.folder / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (self.folder / "env.conf").write_text("")
        (self.folder / "plugins").write_text("[].\n")
        for sub in ("mnesia", "log"):
            (self.folder / sub).mkdir()
        if os.geteuid() == 0:
            for path in (self.folder, *self.folder.rglob("*")):
                shutil.chown(path, "rabbitmq", "rabbitmq")

    @staticmethod
    def unavailable() -> str | None:
        """Why a private node cannot run here, or None."""
        if shutil.which("rabbitmq-server") is None:
            return "rabbitmq-server is not installed"
        if os.geteuid() != 0:
            return "a private rabbitmq-server node needs root (it switches to the rabbitmq user)"
        return None

    def start(self) -> None:
        env = {
            **os.environ, "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port), "RABBITMQ_CONF_ENV_FILE": str(self.folder / "env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"), "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "plugins"),
            "RABBITMQ_PID_FILE": str(self.folder / "rabbit.pid"),
        }
        with open(self.folder / "server.out", "ab") as out:
            self.process = subprocess.Popen(["rabbitmq-server"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                            cwd=self.folder, start_new_session=True)
        wait_for(lambda: self.process.poll() is not None or reachable(self.url), 90, 0.2,
                 what="the private rabbitmq-server to listen")
        assert self.process.poll() is None, (self.folder / "server.out").read_text()[-2000:]

    def kill(self) -> None:
        """SIGKILL the Erlang VM (and the scripts that wait for it): a crash."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            tree = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        for proc in [p for p in tree if p.name().startswith("beam")] + tree:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.process.wait(30)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


class Unavailable(Exception):
    """A private broker server cannot run on this machine; the message says why."""


def private_broker(name: str, folder: Path) -> PrivateBroker | None:
    """The private server an outage run of setup ``name`` kills (not started); None for sqlite."""
    if name == "sqlite":
        return None
    if name == "redis":
        if not PrivateRedis.available():
            raise Unavailable("redis-server is not installed")
        return PrivateRedis(folder)
    reason = PrivateRabbit.unavailable()
    if reason:
        raise Unavailable(reason)
    return PrivateRabbit()


def skip_or_fail(reason: str) -> None:
    """Skip a test that needs what this machine lacks; under CI=true that is a failure."""
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: the machine must provide it)")
    pytest.skip(reason)
