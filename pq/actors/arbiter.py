"""The arbiter: the server's main process, supervisor of every actor.

It forks ``workers`` consumers, a scheduler and a monitor, routes messages
between them (see :mod:`pq.actors.mailbox` for the names), and supervises them
as an Erlang/OTP supervisor does: an actor that dies, or whose loop is blocked
so that no heartbeat arrives for ``heartbeat_timeout``, is restarted; one
restarted more than ``max_restarts`` times in ``restart_period`` seconds stops
the server with exit code 1.

Signals, as gunicorn's arbiter: SIGINT/SIGTERM stop gracefully (a second one
kills at once), SIGHUP replaces the consumers one by one, SIGTTIN/SIGTTOU add
or remove a consumer.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Any, Mapping

from ..exceptions import ActorNotFound, MailboxError
from .actor import Actor, Commands, command
from .consumer import ConsumerActor
from .control import ControlServer
from .mailbox import Mailbox
from .monitor import MonitorActor
from .process import bootstrap, set_process_name
from .scheduler import SchedulerActor
from .supervision import ActorProcess, Slot, Slots, exit_reason

if TYPE_CHECKING:
    from ..app import PulsarQueue

logger = logging.getLogger("pq.actors")

DEFAULT_KINDS: dict[str, type[Actor]] = {
    "consumer": ConsumerActor,
    "scheduler": SchedulerActor,
    "monitor": MonitorActor,
}
KILL_MARGIN = 2.0  # seconds an actor gets past its graceful timeout to exit before SIGKILL
EXIT_OK, EXIT_FAILURE = 0, 1


class Arbiter(Commands):
    """``Arbiter(app).run()`` serves until stopped and returns the process exit code.

    ``kinds`` overrides the actor classes of the ``consumer``, ``scheduler``
    and ``monitor`` kinds.
    """

    name = "arbiter"

    def __init__(self, app: PulsarQueue, kinds: Mapping[str, type[Actor]] | None = None) -> None:
        super().__init__()
        self.app = app
        self.cfg = app.cfg
        self.kinds = {**DEFAULT_KINDS, **(kinds or {})}
        self.slots = Slots()
        self.actors: dict[int, ActorProcess] = {}
        self.stopping = False
        self.exit_code = EXIT_OK
        self.started = time.time()
        self._context = multiprocessing.get_context("fork")
        self._control: ControlServer | None = None
        self._reloading: asyncio.Future | None = None

    # running

    def run(self) -> int:
        """Serve until stopped; the exit code is 0 after a requested stop, 1 on failure.

        The arbiter runs the standard selector loop, whatever the event loop
        policy: children are forked from inside it and must be able to ignore
        the copy they inherit.
        """
        loop = asyncio.SelectorEventLoop()
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(self.main())
        finally:
            loop.close()
            asyncio.set_event_loop(None)

    async def main(self) -> int:
        loop = self.loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = loop.create_future()
        multiprocessing.current_process().name = "arbiter"
        set_process_name(f"{self.cfg.name}-arbiter")
        handlers = {
            signal.SIGINT: functools.partial(self._stop_signal, "SIGINT"),
            signal.SIGTERM: functools.partial(self._stop_signal, "SIGTERM"),
            signal.SIGHUP: self._reload,
            signal.SIGTTIN: self._add_consumer,
            signal.SIGTTOU: self._remove_consumer,
            signal.SIGCHLD: self._reap,
        }
        for signum, handler in handlers.items():
            loop.add_signal_handler(signum, handler)
        watchdog = asyncio.ensure_future(self._watchdog())
        if self.cfg.control:
            self._control = ControlServer(self.cfg.control, functools.partial(self._on_request, None))
        try:
            if self._control is not None:
                await self._control.start()
            logger.info(
                "arbiter (pid %d) starting: %d consumer(s), a scheduler and a monitor",
                os.getpid(), self.cfg.workers,
            )
            for kind in ["consumer"] * self.cfg.workers + ["scheduler", "monitor"]:
                self._spawn(self.slots.add(kind))
            await self._done
        finally:
            watchdog.cancel()
            self.cancel_commands()
            for signum in handlers:
                loop.remove_signal_handler(signum)
            self._kill_all()
            if self._control is not None:
                self._control.close()
        logger.info("arbiter (pid %d) stopped with exit code %d", os.getpid(), self.exit_code)
        return self.exit_code

    # commands

    @command
    def ping(self) -> str:
        return "pong"

    @command
    def info(self) -> dict[str, Any]:
        """The arbiter and every actor process, including those starting or stopping."""
        records = sorted(self.actors.values(), key=lambda r: (r.slot.order, r.started))
        return {
            "arbiter": {"name": self.name, "pid": os.getpid(), "started": self.started,
                        "uptime": time.time() - self.started, "stopping": self.stopping},
            "actors": [record.describe() for record in records],
        }

    @command
    async def replace(self, name: str) -> dict[str, Any]:
        """Start a fresh actor for slot ``name``; once it is ready, stop the old one gracefully."""
        new, old = await self._replace(name)
        return {"name": name, "pid": new.pid, "replaced": old.pid if old else None}

    @command
    def stop(self) -> bool:
        """Stop the server gracefully, as SIGTERM does."""
        self._begin_shutdown(EXIT_OK, "asked to stop")
        return True

    # spawning and supervision

    def _spawn(self, slot: Slot, pending: bool = False) -> ActorProcess:
        """Fork an actor for ``slot``; ``pending`` when it replaces a live one."""
        parent, child = socket.socketpair()
        inherited = [fd for r in self.actors.values() for fd in (r.sock.fileno(), r.process.sentinel)]
        inherited += self._control.fds() if self._control is not None else []
        inherited.append(parent.fileno())
        process = self._context.Process(
            target=bootstrap, name=slot.name,
            args=(self.kinds[slot.kind], self.app, slot.name, child, inherited, os.getpid()),
        )
        process.start()
        child.close()
        record = ActorProcess(slot, process, parent, self.loop.create_future())
        record.mailbox = Mailbox(slot.name, functools.partial(self._on_request, record))
        connecting = asyncio.ensure_future(
            self.loop.create_unix_connection(lambda: record.mailbox, sock=parent)
        )
        self._tasks.add(connecting)
        connecting.add_done_callback(self._tasks.discard)
        self.actors[record.pid] = record
        self.loop.add_reader(process.sentinel, self._reap)
        if pending:
            slot.pending = record
        else:
            slot.actor = record
        return record

    def _reap(self) -> None:
        for record in list(self.actors.values()):
            if record.process.exitcode is not None:
                self._exited(record)

    def _exited(self, record: ActorProcess) -> None:
        code = record.process.exitcode
        del self.actors[record.pid]
        self.loop.remove_reader(record.process.sentinel)
        record.process.close()
        record.mailbox.close()
        if record.kill_timer is not None:
            record.kill_timer.cancel()
        if not record.ready.done():
            record.ready.set_result(False)
        record.exited.set_result(code)
        slot = record.slot
        reason = exit_reason(code, record.kill_reason)
        if record.stop_reason is not None:
            logger.info("%s (pid %d) stopped (%s): %s", record.name, record.pid, record.stop_reason, reason)
        elif slot.pending is record:
            slot.pending = None
            logger.error("%s (pid %d), the replacement of %s, %s before it was ready",
                         record.name, record.pid, slot.name, reason)
        elif self.stopping:
            logger.info("%s (pid %d) %s", record.name, record.pid, reason)
        elif slot.actor is record:
            slot.actor = None
            self._restart(record, reason)
        self._check_done()

    def _restart(self, record: ActorProcess, reason: str) -> None:
        slot = record.slot
        if slot.pending is not None:
            logger.warning("%s (pid %d) %s; its replacement (pid %d) is starting",
                           record.name, record.pid, reason, slot.pending.pid)
            return
        if not slot.within_budget(self.cfg.max_restarts, self.cfg.restart_period):
            logger.error(
                "%s (pid %d) %s after %d restarts in the last %s s (max_restarts %d, restart_period %s s); "
                "stopping the server", record.name, record.pid, reason, len(slot.history),
                self.cfg.restart_period, self.cfg.max_restarts, self.cfg.restart_period,
            )
            self._begin_shutdown(EXIT_FAILURE, f"{slot.name} keeps dying")
            return
        logger.warning("%s (pid %d) %s; restarting", record.name, record.pid, reason)
        self._spawn(slot)

    def _on_ready(self, record: ActorProcess) -> None:
        if record.ready.done():
            return
        record.ready.set_result(True)
        restarts = f", restart {record.slot.restarts}" if record.slot.restarts else ""
        logger.info("%s (pid %d) started (%s%s)", record.name, record.pid, record.kind, restarts)

    async def _replace(self, name: str) -> tuple[ActorProcess, ActorProcess | None]:
        slot = self.slots.get(name)
        if slot is None:
            raise ActorNotFound(f"no actor named {name!r} to replace; actors: {', '.join(self.slots)}")
        if self.stopping:
            raise MailboxError(f"cannot replace {name}: the server is stopping")
        if slot.pending is not None:
            raise MailboxError(f"{name} is already being replaced by pid {slot.pending.pid}")
        new = self._spawn(slot, pending=True)
        if not await new.ready or slot.pending is not new:
            raise MailboxError(f"the replacement of {name} (pid {new.pid}) did not start; "
                               f"{name} keeps running")
        old, slot.actor, slot.pending = slot.actor, new, None
        if old is not None:
            self._stop_actor(old, f"replaced by pid {new.pid}")
        return new, old

    def _stop_actor(self, record: ActorProcess, reason: str) -> None:
        """Ask an actor to stop within ``graceful_timeout``; SIGKILL it if it has not exited by then."""
        if record.stop_reason is not None:
            return
        record.stop_reason = reason
        timeout = self.cfg.graceful_timeout
        try:
            record.mailbox.notify(record.name, "stop", [timeout], src=self.name)
        except MailboxError:
            logger.debug("%s (pid %d): stop not delivered, mailbox closed", record.name, record.pid)
        reason = f"still running {timeout + KILL_MARGIN} s after it was asked to stop"
        record.kill_timer = self.loop.call_later(timeout + KILL_MARGIN, self._kill, record, reason)

    def _kill(self, record: ActorProcess, reason: str) -> None:
        if record.pid not in self.actors or record.process.exitcode is not None:
            return
        record.kill_reason = record.kill_reason or reason
        logger.warning("%s (pid %d): %s; sending SIGKILL", record.name, record.pid, reason)
        try:
            os.kill(record.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def _watchdog(self) -> None:
        """Reap exited actors and kill those whose heartbeat stopped (a blocked loop)."""
        timeout = self.cfg.heartbeat_timeout
        while True:
            await asyncio.sleep(min(self.cfg.heartbeat, timeout / 2))
            self._reap()
            now = time.monotonic()
            for record in list(self.actors.values()):
                silent = now - record.last_seen
                if silent > timeout and record.kill_reason is None:
                    self._kill(record, f"no heartbeat for {silent:.1f} s (heartbeat_timeout {timeout} s), "
                                       "its event loop is blocked")

    def _kill_all(self) -> None:
        """Leave no child behind, whatever ended the arbiter."""
        self.stopping = True
        for record in list(self.actors.values()):
            self._kill(record, "still running when the arbiter exits")
            record.process.join(5)
            if record.process.exitcode is not None:
                self._exited(record)

    # signals

    def _stop_signal(self, signame: str) -> None:
        if not self.stopping:
            self._begin_shutdown(EXIT_OK, f"received {signame}")
            return
        logger.warning("arbiter (pid %d) received %s while stopping; stopping at once", os.getpid(), signame)
        for record in list(self.actors.values()):
            self._kill(record, "the server is stopping at once")

    def _begin_shutdown(self, code: int, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.exit_code = code
        logger.info("arbiter (pid %d) stopping: %s; the actors get %s s to finish their work",
                    os.getpid(), reason, self.cfg.graceful_timeout)
        for record in list(self.actors.values()):
            self._stop_actor(record, "server stopping")
        self._check_done()

    def _check_done(self) -> None:
        if self.stopping and not self.actors and not self._done.done():
            self._done.set_result(None)

    def _reload(self) -> None:
        if self.stopping:
            return
        if self._reloading is not None and not self._reloading.done():
            logger.info("SIGHUP: the consumers are already being replaced")
            return
        self._reloading = asyncio.ensure_future(self._replace_consumers())
        self._tasks.add(self._reloading)
        self._reloading.add_done_callback(self._tasks.discard)

    async def _replace_consumers(self) -> None:
        names = [slot.name for slot in self.slots.of_kind("consumer")]
        logger.info("SIGHUP: replacing %d consumers one at a time", len(names))
        for name in names:
            if self.stopping or name not in self.slots:
                continue
            try:
                _, old = await self._replace(name)
            except MailboxError as exc:
                logger.error("SIGHUP: %s", exc)
                continue
            if old is not None:
                await old.exited

    def _add_consumer(self) -> None:
        if self.stopping:
            return
        slot = self.slots.add("consumer")
        logger.info("SIGTTIN: adding %s", slot.name)
        self._spawn(slot)

    def _remove_consumer(self) -> None:
        consumers = self.slots.of_kind("consumer")
        if self.stopping or not consumers:
            logger.warning("SIGTTOU: no consumer to remove")
            return
        slot = consumers[-1]
        del self.slots[slot.name]
        logger.info("SIGTTOU: removing %s", slot.name)
        for record in (slot.actor, slot.pending):
            if record is not None:
                self._stop_actor(record, "removed by SIGTTOU")
        slot.pending = None

    # messages

    def _on_request(self, record: ActorProcess | None, mailbox: Mailbox, frame: dict) -> None:
        """A request from a child (``record``) or a control client: run it here or route it."""
        if record is not None:
            record.last_seen = time.monotonic()
        if frame["dst"] != self.name:
            self._forward(mailbox, frame)
        elif record is not None and frame["cmd"] == "heartbeat":
            return
        elif record is not None and frame["cmd"] == "ready":
            self._on_ready(record)
        else:
            self.dispatch(mailbox, frame)

    def _forward(self, origin: Mailbox, frame: dict) -> None:
        request_id = frame.get("id")
        args = (frame["dst"], frame["cmd"], frame["args"], frame["kw"])
        try:
            target = self.slots.route(frame["dst"]).mailbox
            if request_id is None:
                target.notify(*args, src=frame.get("src", ""))
                return
            future = target.request_future(*args, src=frame.get("src", ""))
        except MailboxError as exc:
            origin.reply_error(request_id, exc)
            return
        future.add_done_callback(functools.partial(self._forwarded, origin, request_id))

    @staticmethod
    def _forwarded(origin: Mailbox, request_id: Any, future: asyncio.Future) -> None:
        if future.cancelled():
            return
        if future.exception() is not None:
            origin.reply_error(request_id, future.exception())  # type: ignore[arg-type]
        else:
            origin.reply(request_id, future.result())
