"""The arbiter's records: a slot (a named place for an actor) and the process in it.

A slot outlives its processes: a restarted or replaced actor keeps the slot's
name, and the restart budget is counted per slot.
"""
from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from ..exceptions import ActorNotFound
from .mailbox import Mailbox

KIND_ORDER = {"consumer": 0, "scheduler": 1, "monitor": 2}


@dataclass(eq=False)
class Slot:
    """A named place for one actor: ``consumer-2``, ``scheduler``, ``monitor``."""

    name: str
    kind: str
    number: int = 0
    actor: ActorProcess | None = None
    pending: ActorProcess | None = None  # the replacement starting while ``actor`` still serves
    restarts: int = 0
    history: deque[float] = field(default_factory=deque)

    @property
    def order(self) -> tuple[int, int]:
        return KIND_ORDER.get(self.kind, len(KIND_ORDER)), self.number

    def within_budget(self, max_restarts: int, period: float) -> bool:
        """Count one more restart unless ``max_restarts`` happened in the last ``period`` seconds."""
        now = time.monotonic()
        while self.history and now - self.history[0] > period:
            self.history.popleft()
        if len(self.history) >= max_restarts:
            return False
        self.history.append(now)
        self.restarts += 1
        return True


@dataclass(eq=False)
class ActorProcess:
    """One forked actor process, from fork to reaping."""

    slot: Slot
    process: BaseProcess
    sock: socket.socket  # the arbiter's end of the mailbox socketpair
    ready: asyncio.Future  # True once on_start is done, False if it exited first
    mailbox: Mailbox = field(init=False)
    pid: int = field(init=False)
    started: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.monotonic)
    stop_reason: str | None = None  # why the arbiter asked it to stop
    kill_reason: str | None = None  # why the arbiter killed it
    kill_timer: asyncio.TimerHandle | None = None
    exited: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def __post_init__(self) -> None:
        self.pid = self.process.pid  # type: ignore[assignment]

    @property
    def name(self) -> str:
        return self.slot.name

    @property
    def kind(self) -> str:
        return self.slot.kind

    def describe(self) -> dict[str, Any]:
        if self.stop_reason is not None:
            state = "stopping"
        elif self.slot.pending is self:
            state = "replacing"
        else:
            state = "running" if self.ready.done() and self.ready.result() else "starting"
        return {"name": self.name, "kind": self.kind, "pid": self.pid, "started": self.started,
                "restarts": self.slot.restarts, "state": state}


def exit_reason(code: int | None, kill_reason: str | None) -> str:
    """How a process ended, for the log: ``died with exit code -9 (SIGKILL)``."""
    if kill_reason:
        return f"was killed: {kill_reason}"
    if code is not None and code < 0:
        try:
            return f"died with exit code {code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"died with exit code {code}"
    return "exited with code 0" if code == 0 else f"died with exit code {code}"


class Slots(dict):
    """The slots by name, with the naming scheme and routing by name or kind."""

    def __init__(self) -> None:
        super().__init__()
        self._round_robin = itertools.count()

    def add(self, kind: str) -> Slot:
        """A new slot: ``consumer-N`` with the smallest free N, or the kind's name for the others."""
        if kind == "consumer":
            taken = {slot.number for slot in self.values() if slot.kind == kind}
            number = min(set(range(1, len(taken) + 2)) - taken)
            slot = Slot(f"consumer-{number}", kind, number)
        else:
            slot = Slot(kind, kind)
        self[slot.name] = slot
        return slot

    def of_kind(self, kind: str) -> list[Slot]:
        return sorted((slot for slot in self.values() if slot.kind == kind), key=lambda s: s.order)

    def route(self, dst: str) -> ActorProcess:
        """The process serving ``dst``, a name or a kind (any actor of it, in turn)."""
        slot = self.get(dst)
        if slot is None:
            serving = [s for s in self.of_kind(dst) if s.actor is not None]
            if serving:
                slot = serving[next(self._round_robin) % len(serving)]
        if slot is None or slot.actor is None:
            state = "is restarting" if slot is not None else "does not exist"
            raise ActorNotFound(f"actor {dst!r} {state}; actors: {', '.join(['arbiter', *self])}")
        return slot.actor
