"""The public surface of pq: import everything a user needs from here."""
from __future__ import annotations

from .app import PulsarQueue
from .brokers.base import DeadLetter, QueueSize
from .config import Config
from .exceptions import (
    BrokerError, ImproperlyConfigured, MessageError, PQError, SerializationError, TaskError,
    TaskNotAvailable,
)
from .jobs.job import ASYNC_IO, CPUBOUND, THREAD_IO, Job, job
from .locks import Lock, LockError
from .manager import Manager
from .scheduler import Beater
from .serializers import Codec
from .tasks import (
    FAILURE, FULL_RUN_STATES, QUEUED, READY_STATES, RETRY, REVOKED, STARTED, SUCCESS, Task,
    TaskFuture,
)
from .worker import Worker

PusarQueue = PulsarQueue  # the seed's spelling

__all__ = [
    "ASYNC_IO", "Beater", "BrokerError", "CPUBOUND", "Codec", "Config", "DeadLetter", "FAILURE",
    "FULL_RUN_STATES", "ImproperlyConfigured", "Job", "Lock", "LockError", "Manager",
    "MessageError", "PQError", "PulsarQueue", "PusarQueue", "QUEUED", "QueueSize",
    "READY_STATES", "RETRY", "REVOKED", "STARTED", "SUCCESS", "SerializationError", "THREAD_IO",
    "Task", "TaskError", "TaskFuture", "TaskNotAvailable", "Worker", "job",
]
