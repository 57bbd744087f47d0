"""Brokers and data stores, one module per URL scheme.

``connect(url)`` returns the broker/store for a URL; a URL used for both
``message_broker`` and ``data_store`` gives one shared object.
"""
from __future__ import annotations

import importlib
import re
from typing import Any
from urllib.parse import urlsplit

from ..exceptions import ImproperlyConfigured
from .base import DataStore, DeadLetter, Delivery, Envelope, MessageBroker, QueueSize, Subscription

SCHEMES: dict[str, str] = {
    "memory": "pq.brokers.memory:MemoryStore",
    "sqlite": "pq.brokers.sqlite:SqliteStore",
    "redis": "pq.brokers.redis:RedisStore",
    "rediss": "pq.brokers.redis:RedisStore",
    "unix": "pq.brokers.redis:RedisStore",
    "amqp": "pq.brokers.amqp:AmqpBroker",
    "amqps": "pq.brokers.amqp:AmqpBroker",
}

_PASSWORD = re.compile(r"(?P<head>://[^:/@]*:)(?P<password>[^@]*)(?P<tail>@)")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)[^&#]*", re.IGNORECASE)  # redis-py reads ?password=


def redact_url(url: str) -> str:
    """The URL with its password (in the user info or the query) replaced by ``***``, safe for logs and pages."""
    return _QUERY_PASSWORD.sub(r"\g<head>***", _PASSWORD.sub(r"\g<head>***\g<tail>", url or ""))


def store_class(url: str) -> type:
    """The class serving a URL's scheme, with an error that lists the known ones."""
    scheme = urlsplit(url).scheme.lower()
    path = SCHEMES.get(scheme)
    if path is None:
        raise ImproperlyConfigured(
            f"no broker for URL scheme {scheme!r} in {redact_url(url)!r}; "
            f"use one of: {', '.join(f'{s}://' for s in SCHEMES)}"
        )
    module_name, _, name = path.partition(":")
    return getattr(importlib.import_module(module_name), name)


def create(url: str, namespace: str = "pq", **options: Any) -> MessageBroker | DataStore:
    """A new, not yet connected, broker or store for ``url``."""
    return store_class(url)(url, namespace=namespace, **options)


__all__ = [
    "DataStore", "DeadLetter", "Delivery", "Envelope", "MessageBroker", "QueueSize",
    "Subscription", "SCHEMES", "create", "redact_url", "store_class",
]
