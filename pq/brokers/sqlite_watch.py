"""Hearing other processes write to a sqlite file without polling it (Linux inotify).

Every commit of every process writes to the database's ``-wal`` file.  A
``WalWatcher`` thread blocks on an inotify descriptor for that file and calls
``nudge`` when it is written, so a store waiting for messages or events looks
at the database at once instead of polling; where inotify is missing the
store's thread polls ``PRAGMA data_version`` instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import sys
import threading
import time
from typing import Callable

logger = logging.getLogger("pq.brokers.sqlite")

IN_MODIFY = 0x00000002
STOP_CHECK = 1.0


def watch_file(path: str) -> int | None:
    """A non-blocking inotify descriptor, readable when ``path`` is written; None if unsupported."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, os.fsencode(path), IN_MODIFY) < 0:
        logger.debug("cannot watch %s (errno %d): polling instead", path, ctypes.get_errno())
        os.close(fd)
        return None
    return fd


class WalWatcher:
    """Calls ``nudge()`` when the file behind ``fd`` is written and ``wanted()`` is true.

    At most once per ``gap`` seconds: writes in between are one nudge, so a busy
    database costs at most ``1 / gap`` wake-ups a second.
    """

    def __init__(
        self, fd: int, nudge: Callable[[], None], wanted: Callable[[], bool], gap: float
    ) -> None:
        self._fd = fd
        self._nudge = nudge
        self._wanted = wanted
        self._gap = gap
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="pq-sqlite-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ends the thread within STOP_CHECK seconds; the descriptor is closed by it."""
        self._stopping = True

    def _main(self) -> None:
        try:
            while not self._stopping:
                if not select.select([self._fd], [], [], STOP_CHECK)[0]:
                    continue
                try:
                    while os.read(self._fd, 4096):
                        pass
                except BlockingIOError:
                    pass
                if self._wanted() and not self._stopping:
                    self._nudge()
                    time.sleep(self._gap)
        finally:
            os.close(self._fd)
