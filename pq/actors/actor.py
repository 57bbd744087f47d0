"""The actor: one child process with its own event loop, a command table and a heartbeat.

A kind of actor is a subclass that sets ``kind`` and adds commands::

    class MonitorActor(Actor):
        kind = "monitor"

        @command
        async def stats(self, queue: str) -> dict:
            ...

Commands are plain or ``async`` methods; their return value is the reply, so
it must be msgpack-encodable. Every actor answers ``ping``, ``info`` and
``stop``. The lifecycle hooks ``on_start`` and ``on_stop`` are where a kind
starts and drains its work.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, ClassVar, TypeVar

import psutil

from ..exceptions import MailboxError
from .mailbox import DEFAULT_TIMEOUT, Mailbox

if TYPE_CHECKING:
    from ..app import PulsarQueue

logger = logging.getLogger("pq.actors")

F = TypeVar("F", bound=Callable[..., Any])


def command(func: F) -> F:
    """Mark a method as a command other actors can run with ``send``."""
    func._pq_command = func.__name__  # type: ignore[attr-defined]
    return func


class Commands:
    """A command table built from the ``@command`` methods of a class and its bases."""

    name: str = ""
    commands: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future] = set()  # running async commands and tasks, cancelled at exit

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                name = getattr(value, "_pq_command", None)
                if name:
                    table[name] = attr
        cls.commands = table

    def dispatch(self, mailbox: Mailbox, frame: dict) -> None:
        """Run the command of a request and reply; errors become error replies, never crashes."""
        cmd, request_id = frame["cmd"], frame.get("id")
        attr = self.commands.get(cmd)
        if attr is None:
            known = ", ".join(sorted(self.commands))
            error = MailboxError(f"{self.name} has no command {cmd!r}; commands: {known}")
            mailbox.reply_error(request_id, error)
            return
        try:
            result = getattr(self, attr)(*frame["args"], **frame["kw"])
        except Exception as exc:
            self._command_failed(mailbox, request_id, cmd, exc)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(lambda t: self._command_done(mailbox, request_id, cmd, t))
        else:
            mailbox.reply(request_id, result)

    def _command_done(self, mailbox: Mailbox, request_id: Any, cmd: str, task: asyncio.Future) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            error = MailboxError(f"{self.name}: command {cmd!r} was cancelled: the actor is stopping")
            self._command_failed(mailbox, request_id, cmd, error)
        elif task.exception() is not None:
            self._command_failed(mailbox, request_id, cmd, task.exception())  # type: ignore[arg-type]
        else:
            mailbox.reply(request_id, task.result())

    def _command_failed(self, mailbox: Mailbox, request_id: Any, cmd: str, exc: BaseException) -> None:
        if isinstance(exc, MailboxError):
            error = exc
        else:
            logger.warning("%s: command %r failed", self.name, cmd, exc_info=exc)
            error = MailboxError(f"{self.name}: command {cmd!r} failed: {type(exc).__name__}: {exc}")
        mailbox.reply_error(request_id, error)

    def cancel_commands(self) -> None:
        """Cancel the async commands still running (at exit)."""
        for task in list(self._tasks):
            task.cancel()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed, the standard one otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Actor(Commands):
    """A child process of the arbiter, talking to it over a mailbox socket.

    ``self.cfg`` and ``self.app`` are the server's settings and application.
    ``stop_requested`` is set when a graceful stop begins, so work loops can
    stop taking new work; ``stop_timeout`` is then the time ``on_stop`` has.
    """

    kind: ClassVar[str] = "actor"

    def __init__(self, app: PulsarQueue, name: str, sock: socket.socket) -> None:
        super().__init__()
        self.app = app
        self.cfg = app.cfg
        self.name = name
        self.sock = sock
        self.pid = os.getpid()
        self.started = time.time()
        self.mailbox: Mailbox | None = None
        self.stop_timeout: float | None = None
        self.stop_requested = asyncio.Event()
        self._starting: asyncio.Future | None = None
        self._process = psutil.Process()
        self._process.cpu_percent()

    # lifecycle hooks

    async def on_start(self) -> None:
        """Start the kind's work; the actor answers commands meanwhile."""

    async def on_stop(self) -> None:
        """Stop taking work and finish what is in flight, within ``stop_timeout`` seconds."""

    def extra_info(self) -> dict[str, Any]:
        """The kind's own figures, merged into ``info``."""
        return {}

    # commands

    @command
    def ping(self) -> str:
        return "pong"

    @command
    def info(self) -> dict[str, Any]:
        """Process figures from psutil plus the kind's ``extra_info``."""
        process = self._process
        with process.oneshot():
            figures = {
                "name": self.name,
                "kind": self.kind,
                "pid": self.pid,
                "started": self.started,
                "uptime": time.time() - self.started,
                "cpu_percent": process.cpu_percent(),
                "rss": process.memory_info().rss,
                "open_files": len(process.open_files()),
                "fds": process.num_fds() if hasattr(process, "num_fds") else None,
                "threads": process.num_threads(),
            }
        figures.update(self.extra_info())
        return figures

    @command
    def stop(self, timeout: float | None = None) -> bool:
        """Stop gracefully: ``on_stop`` gets ``timeout`` seconds (default ``graceful_timeout``)."""
        self.begin_stop(self.cfg.graceful_timeout if timeout is None else timeout, "asked to stop")
        return True

    # messaging

    async def send(self, target: str, cmd: str, *args: Any, timeout: float | None = DEFAULT_TIMEOUT,
                   wait: bool = True, **kw: Any) -> Any:
        """Run ``cmd`` on actor ``target`` (routed by the arbiter) and return its reply.

        Raises MailboxError on timeout or a failed command, ActorNotFound for an
        unknown target. With ``wait=False`` it returns None at once (``tell``).
        """
        if not wait:
            self.tell(target, cmd, *args, **kw)
            return None
        if self.mailbox is None:
            raise MailboxError(f"{self.name} has no mailbox yet")
        return await self.mailbox.request(target, cmd, args, kw, src=self.name, timeout=timeout)

    def tell(self, target: str, cmd: str, *args: Any, **kw: Any) -> None:
        """Send ``cmd`` to ``target`` without waiting for a reply."""
        if self.mailbox is None:
            raise MailboxError(f"{self.name} has no mailbox yet")
        self.mailbox.notify(target, cmd, args, kw, src=self.name)

    # running

    def run(self) -> int:
        """The process's main: a fresh event loop until the actor stops; returns the exit code."""
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        loop.add_signal_handler(signal.SIGTERM, self.begin_stop, self.cfg.graceful_timeout, "SIGTERM")
        try:
            return loop.run_until_complete(self.main())
        finally:
            loop.close()
            asyncio.set_event_loop(None)

    async def main(self) -> int:
        """Open the mailbox, heartbeat, ``on_start``, then wait for the stop."""
        loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[int] = loop.create_future()
        _, self.mailbox = await loop.create_unix_connection(
            lambda: Mailbox(self.name, self.dispatch, self._mailbox_closed), sock=self.sock
        )
        heartbeat = asyncio.ensure_future(self._heartbeat())
        self._starting = asyncio.ensure_future(self.on_start())
        await asyncio.wait([self._starting])
        if self._starting.cancelled():
            logger.debug("%s (pid %d) stopped while starting", self.name, self.pid)
        elif self._starting.exception() is not None:
            error = self._starting.exception()
            logger.error("%s (pid %d) failed to start", self.name, self.pid, exc_info=error)
            self._finish(1)
        elif self.mailbox.is_open and not self.stop_requested.is_set():
            self.tell("arbiter", "ready")
        code = await self._exit
        heartbeat.cancel()
        self.cancel_commands()
        await self.mailbox.aclose()
        return code

    def begin_stop(self, timeout: float, reason: str) -> None:
        """Start the graceful stop once: ``on_stop`` bounded by ``timeout``, then exit 0."""
        if self.stop_requested.is_set():
            return
        self.stop_requested.set()
        self.stop_timeout = timeout
        logger.debug("%s (pid %d) stopping: %s", self.name, self.pid, reason)
        self._tasks.add(asyncio.ensure_future(self._stop(timeout)))

    async def _stop(self, timeout: float) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            await asyncio.wait([self._starting])
        try:
            await asyncio.wait_for(self.on_stop(), timeout)
        except asyncio.TimeoutError:
            logger.warning("%s (pid %d): on_stop did not finish within %s s; exiting",
                           self.name, self.pid, timeout)
        except Exception:
            logger.exception("%s (pid %d): on_stop failed", self.name, self.pid)
        self._finish(0)

    def _finish(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(code)

    def _mailbox_closed(self, mailbox: Mailbox) -> None:
        if not self.stop_requested.is_set() and not self._exit.done():
            logger.warning("%s (pid %d): the arbiter is gone; stopping", self.name, self.pid)
            self.begin_stop(self.cfg.graceful_timeout, "mailbox closed")

    async def _heartbeat(self) -> None:
        while self.mailbox is not None and self.mailbox.is_open:
            self.mailbox.notify("arbiter", "heartbeat", src=self.name)
            await asyncio.sleep(self.cfg.heartbeat)
