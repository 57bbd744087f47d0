"""The arbiter's control socket: the mailbox protocol on a unix socket path.

Other processes on the machine (the tests, the ``pq`` command) connect to it
with :class:`~pq.actors.mailbox.Client` and reach any actor by name through the
arbiter. It is served only when the ``control`` setting names a path.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket

from ..exceptions import ImproperlyConfigured
from .mailbox import Mailbox, RequestHandler

logger = logging.getLogger("pq.actors")


class ControlServer:
    """Accepts clients on ``path``; each one's requests go to ``on_request``."""

    def __init__(self, path: str, on_request: RequestHandler) -> None:
        self.path = path
        self.on_request = on_request
        self.clients: set[Mailbox] = set()
        self._sock: socket.socket | None = None
        self._server: asyncio.AbstractServer | None = None
        self._inode = 0
        self._ids = itertools.count(1)

    async def start(self) -> None:
        """Bind, replacing a stale socket file; a live one (another server) is left alone."""
        if os.path.exists(self.path):
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(self.path)
            except OSError:
                os.unlink(self.path)
            else:
                logger.error("control socket %s is in use by another server; serving without it", self.path)
                return
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(self.path)
        except OSError as exc:
            sock.close()
            raise ImproperlyConfigured(f"cannot serve the control socket at {self.path!r}: {exc}") from None
        self._sock = sock
        self._inode = os.stat(self.path).st_ino
        self._server = await asyncio.get_running_loop().create_unix_server(self._connected, sock=sock)
        logger.info("arbiter control socket at %s", self.path)

    def _connected(self) -> Mailbox:
        mailbox = Mailbox(f"client-{next(self._ids)}", self.on_request, self.clients.discard)
        self.clients.add(mailbox)
        return mailbox

    def fds(self) -> list[int]:
        """The descriptors a forked child must close."""
        fds = [fd for fd in (mailbox.fileno for mailbox in self.clients) if fd is not None]
        return fds + ([self._sock.fileno()] if self._sock is not None else [])

    def close(self) -> None:
        """Stop serving, drop the clients and remove the socket file if it is still ours."""
        if self._server is None:
            return
        self._server.close()
        for mailbox in list(self.clients):
            mailbox.close()
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
