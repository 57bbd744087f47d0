"""PulsarQueue: the application object, from configuration to a server or a producer API."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from types import ModuleType
from typing import Any, Sequence

from .config import Config
from .exceptions import PQError
from .jobs.periodic import Schedule
from .producer import NODE_ENV, Producer


class PulsarQueue:
    """An application: ``PulsarQueue(config=__file__).start()`` runs a server.

    ``manager`` is an optional ``Manager`` subclass (hooks for queues and
    lifecycle messages); keyword arguments are settings.
    """

    def __init__(self, manager: type | None = None, config: str | ModuleType | None = None, **kwargs: Any) -> None:
        self.manager_class = manager
        self.config = config
        self.kwargs = kwargs
        self.cfg = Config(config, **kwargs)
        self.schedules: list[Schedule] = []

    def api(self) -> Producer:
        """The producer api: queue tasks and listen to events from any process."""
        return Producer(self)

    def start(self, argv: Sequence[str] | None = None) -> None:
        """Run the server (the arbiter and its actors) until stopped; exits the process.

        Bad settings, task_paths that do not import and unreachable brokers end it
        at once with one line that says what is wrong, before any actor starts.
        """
        from .actors.arbiter import Arbiter
        from .logs import configure_logging

        try:
            self.cfg = Config(self.config, argv=sys.argv[1:] if argv is None else argv, **self.kwargs)
            configure_logging(self.cfg.log_level)
            asyncio.run(self._check())
        except PQError as exc:
            sys.exit(f"pq: cannot start: {exc}")
        logging.getLogger("pq.app").debug("settings: %s", self.cfg.sources)
        # Every actor of this server shares one node name: the queue of queue_local.
        os.environ[NODE_ENV] = f"{self.cfg.name}.{socket.gethostname()}.{os.getpid()}"
        sys.exit(Arbiter(self).run())

    async def _check(self) -> None:
        """Load the jobs and reach the broker and data store once."""
        api = self.api()
        try:
            await api.start()
        finally:
            await api.close()
