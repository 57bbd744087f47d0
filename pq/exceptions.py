"""Exceptions a user of pq can meet; each message says what to do about it."""
from __future__ import annotations


class PQError(Exception):
    """Base class of every pq error."""


class ImproperlyConfigured(PQError):
    """A setting has a bad value; raised at start, before any work is taken."""


class TaskNotAvailable(PQError):
    """The job name is not in the registry (pulsar-queue's name)."""

    def __init__(self, name: str, known: list[str] | None = None) -> None:
        hint = ""
        if known:
            hint = f"; known jobs: {', '.join(sorted(known)[:20])}"
        super().__init__(
            f"Task {name!r} is not available: no job with that name is registered "
            f"(check task_paths and the job name){hint}"
        )
        self.name = name


class TaskError(PQError):
    """A task ended in FAILURE or REVOKED; carries the task."""

    def __init__(self, message: str, task=None) -> None:
        super().__init__(message)
        self.task = task


class TaskTimeout(PQError):
    """A task ran past its timeout."""


class SerializationError(PQError):
    """Task arguments or a result cannot be encoded by the message serializer."""


class MessageError(PQError):
    """A message taken from a broker cannot be decoded, or fails its signature."""


class BrokerError(PQError):
    """A broker or data store cannot be reached or refused an operation."""


class MailboxError(PQError):
    """An actor message could not be delivered or answered."""


class ActorNotFound(MailboxError):
    """No actor with that name or kind is alive."""
