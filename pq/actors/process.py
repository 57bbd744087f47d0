"""What a forked child does before it becomes an actor.

The arbiter forks from inside its running event loop, so the child starts with
the arbiter's loop, signal handlers and sockets. It drops them all, asks the
kernel for a signal when the arbiter dies (no orphans), then runs its actor on
a fresh loop.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from ..app import PulsarQueue
    from .actor import Actor

logger = logging.getLogger("pq.actors")

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
ARBITER_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)


def _prctl(option: int, value: int | bytes) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        arg = ctypes.c_char_p(value) if isinstance(value, bytes) else ctypes.c_ulong(value)
        libc.prctl(ctypes.c_int(option), arg, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    except (OSError, AttributeError) as exc:
        logger.debug("prctl(%d) unavailable: %s", option, exc)


def set_process_name(title: str) -> None:
    """Name the process as ``ps`` and psutil show it (Linux keeps 15 bytes)."""
    _prctl(PR_SET_NAME, title.encode()[:15])


def set_parent_death_signal(signum: int) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies (Linux)."""
    _prctl(PR_SET_PDEATHSIG, int(signum))


def reset_signals() -> None:
    """Forget the arbiter's handlers; the signals the arbiter owns are ignored here.

    A Ctrl-C reaches the whole process group: the arbiter decides what the
    actors do, so they ignore SIGINT, SIGHUP, SIGTTIN and SIGTTOU.
    """
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    for signum in ARBITER_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def bootstrap(actor_class: type[Actor], app: PulsarQueue, name: str, sock: socket.socket,
              inherited: Iterable[int], arbiter_pid: int) -> None:
    """The target of a forked child: clean up what the fork copied, then run the actor."""
    for fd in inherited:
        try:
            os.close(fd)
        except OSError:
            pass
    reset_signals()
    asyncio.events._set_running_loop(None)
    asyncio.set_event_loop(None)
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != arbiter_pid:
        logger.warning("%s (pid %d): the arbiter died before the actor started", name, os.getpid())
        sys.exit(1)
    set_process_name(f"{app.cfg.name}-{name}")
    sys.exit(actor_class(app, name, sock).run())
