"""Events: channels, names, and callbacks registered with ``api.on_events``.

Channels: ``task`` (events ``queued``, ``started``, ``retry``, ``done``; the
message is a ``Task``), ``consumer`` (``status`` heartbeats of consumers),
``control`` (``revoke``; internal).  Event patterns are globs (``*`` matches
every event) or exact names.
"""
from __future__ import annotations

import asyncio
import fnmatch
import inspect
import logging
import re
from typing import Any, Callable

logger = logging.getLogger("pq.events")

TASK = "task"
CONSUMER = "consumer"
CONTROL = "control"
QUEUED = "queued"
STARTED = "started"
RETRY = "retry"
DONE = "done"
TASK_EVENTS = (QUEUED, STARTED, RETRY, DONE)

EventCallback = Callable[[str, str, Any], Any]


class EventCallbacks:
    """Callbacks by channel and event pattern; a failing callback is logged, never raised."""

    def __init__(self) -> None:
        self._callbacks: list[tuple[str, str, re.Pattern[str], EventCallback]] = []

    def add(self, channel: str, pattern: str, callback: EventCallback) -> None:
        if not callable(callback):
            raise TypeError(f"on_events callback must be callable, got {callback!r}")
        self._callbacks.append((channel, pattern, re.compile(fnmatch.translate(pattern)), callback))

    def remove(self, channel: str, pattern: str, callback: EventCallback) -> None:
        self._callbacks = [
            entry for entry in self._callbacks if entry[:2] != (channel, pattern) or entry[3] != callback
        ]

    def wants(self, channel: str) -> bool:
        return any(entry[0] == channel for entry in self._callbacks)

    def fire(self, channel: str, event: str, message: Any) -> None:
        for cb_channel, _, regex, callback in list(self._callbacks):
            if cb_channel != channel or not regex.match(event):
                continue
            try:
                result = callback(channel, event, message)
                if inspect.isawaitable(result):
                    running = asyncio.ensure_future(result)
                    _RUNNING.add(running)  # the loop keeps only weak references to tasks
                    running.add_done_callback(_finished)
            except Exception:
                logger.exception("on_events callback %r failed for %s.%s", callback, channel, event)


_RUNNING: set[asyncio.Future] = set()  # coroutine callbacks still running


def _finished(future: asyncio.Future) -> None:
    _RUNNING.discard(future)
    if not future.cancelled() and future.exception() is not None:
        logger.error("on_events callback failed", exc_info=future.exception())
