"""A tiny pq server for the actor tests: ``python app_server.py -w 2 --control pq.sock``.

With ``PQ_TEST_PLAIN=1`` it runs through ``PulsarQueue.start()``, as a user's
``manage.py`` does. Otherwise an arbiter runs test kinds of actors: a consumer
with commands to block its loop, relay a message and slow down its stop, and,
with ``PQ_TEST_CRASH=monitor``, a monitor that fails at every start.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from pq.actors import Arbiter, ConsumerActor, MonitorActor, command
from pq.app import PulsarQueue
from pq.config import Config
from pq.logs import configure_logging


class BlockingConsumer(ConsumerActor):
    """A consumer the tests can misbehave."""

    drain = 0.0

    @command
    def block(self, seconds: float) -> None:
        """Block the event loop, as a bad synchronous job would."""
        time.sleep(seconds)

    @command
    async def relay(self, target: str, cmd: str, *args: Any) -> Any:
        """Send ``cmd`` to another actor from this one and return its reply."""
        return await self.send(target, cmd, *args)

    @command
    def set_drain(self, seconds: float) -> bool:
        """Make ``on_stop`` take ``seconds``, as draining tasks in flight would."""
        self.drain = seconds
        return True

    async def on_stop(self) -> None:
        await asyncio.sleep(self.drain)


class CrashingMonitor(MonitorActor):
    async def on_start(self) -> None:
        raise RuntimeError("this monitor fails at every start")


def main() -> None:
    app = PulsarQueue(config=__file__, data_store="memory://")
    if os.environ.get("PQ_TEST_PLAIN"):
        app.start()
    app.cfg = Config(__file__, argv=sys.argv[1:], data_store="memory://")
    configure_logging(app.cfg.log_level)
    kinds: dict[str, type] = {"consumer": BlockingConsumer}
    if os.environ.get("PQ_TEST_CRASH") == "monitor":
        kinds["monitor"] = CrashingMonitor
    sys.exit(Arbiter(app, kinds=kinds).run())


if __name__ == "__main__":
    main()
