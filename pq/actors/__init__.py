"""The actor runtime: an arbiter process supervising consumer, scheduler and monitor actors.

See :mod:`pq.actors.mailbox` for the wire format and the actor names, and
:mod:`pq.actors.actor` for how a kind of actor adds commands.
"""
from __future__ import annotations

from .actor import Actor, command
from .arbiter import Arbiter
from .consumer import ConsumerActor
from .mailbox import Client, Mailbox
from .monitor import MonitorActor
from .scheduler import SchedulerActor

__all__ = [
    "Actor", "Arbiter", "Client", "ConsumerActor", "Mailbox", "MonitorActor", "SchedulerActor", "command",
]
