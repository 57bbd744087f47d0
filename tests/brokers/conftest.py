"""The broker contract: every broker URL below passes every test in this folder.

Brokers run against real servers (``PQ_TEST_REDIS_URL``, ``PQ_TEST_AMQP_URL``
override the defaults).  A broker module not written yet is skipped; a server
that cannot be reached is skipped too, except with ``CI=true``, where it fails.
DataStore tests take the ``store`` fixture and skip brokers that are not data
stores (amqp).  Each test gets a fresh namespace, dropped afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import uuid
from typing import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import pytest

from pq.brokers import SCHEMES, DataStore, MessageBroker, create, redact_url

REDIS_URL = os.environ.get("PQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("PQ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671}
_reachable: dict[tuple[str, int], str | None] = {}

Factory = Callable[..., Awaitable[MessageBroker]]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: servers must be up)")
    pytest.skip(reason)


def _require(url: str) -> None:
    """Skip (or fail on CI) when the URL's broker module or server is missing."""
    scheme = urlsplit(url).scheme
    module = SCHEMES[scheme].partition(":")[0]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not built yet")
    parts = urlsplit(url)
    if scheme not in DEFAULT_PORTS:
        return
    address = (parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS[scheme])
    if address not in _reachable:
        try:
            socket.create_connection(address, timeout=1.0).close()
            _reachable[address] = None
        except OSError as exc:
            _reachable[address] = (
                f"{scheme} server at {address[0]}:{address[1]} not reachable ({exc})"
            )
    if _reachable[address]:
        _unavailable(f"{_reachable[address]} for {redact_url(url)}")


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('brokers') / 'contract.db'}"


TIMED_LEASES = {
    "test_expired_lease_returns_the_message",
    "test_recover_then_redeliver",
    "test_late_ack_and_renew_of_a_lost_lease_are_harmless",
    "test_late_requeue_or_dead_letter_of_a_lost_lease_are_ignored",
}
"""Tests that need a lease to run out on a timer, which AMQP leases never do."""


@pytest.fixture(params=["memory", "sqlite", "redis", "amqp"])
def url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """The URL of the broker under test."""
    if request.param == "amqp" and request.node.originalname in TIMED_LEASES:
        pytest.skip(
            "AMQP leases last as long as the consumer's channel, not a timer "
            "(tests/amqp covers redelivery)"
        )
    chosen = {
        "memory": "memory://contract",
        "sqlite": sqlite_url,
        "redis": REDIS_URL,
        "amqp": AMQP_URL,
    }
    _require(chosen[request.param])
    return chosen[request.param]


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def connect(url: str, namespace: str) -> AsyncIterator[Factory]:
    """``await connect(namespace=...)``: a connected object on the URL, dropped and closed after."""
    made: list[MessageBroker] = []

    async def factory(namespace: str = namespace, **options: object) -> MessageBroker:
        obj = create(url, namespace=namespace, **options)
        made.append(obj)
        await obj.connect()
        return obj

    yield factory
    for obj in reversed(made):
        try:
            await obj.drop()
        finally:
            await obj.close()


@pytest.fixture
async def broker(connect: Factory) -> MessageBroker:
    return await connect()


@pytest.fixture
async def other(connect: Factory) -> MessageBroker:
    """A second object on the same URL and namespace: another connection, as another process has."""
    return await connect()


@pytest.fixture
def store(broker: MessageBroker) -> DataStore:
    if not isinstance(broker, DataStore):
        pytest.skip(f"{type(broker).__name__} is a message broker only, not a DataStore")
    return broker


@pytest.fixture
def other_store(store: DataStore, other: MessageBroker) -> DataStore:
    assert isinstance(other, DataStore)
    return other
