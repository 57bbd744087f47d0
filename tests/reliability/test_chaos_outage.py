"""Broker outages: the broker killed and restarted mid-run; every accepted task completes, nobody steps in.

The fast version of ``benchmarks/chaos.py broker-outage``.  Redis and
RabbitMQ are our own servers on free ports (the shared ones are never
touched); on sqlite, which has no server, the whole pq server is killed and
started again on the same file.  The producer keeps queueing through the
outage with the same api object.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import pytest
from chaos_brokers import PrivateBroker, Unavailable, private_broker, skip_or_fail
from chaos_harness import Setup
from chaos_scenarios import broker_outage, outage_setup

logger = logging.getLogger("pq.tests.reliability")


@pytest.fixture(params=["sqlite", "redis", "amqp+sqlite"])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Setup, PrivateBroker | None]]:
    """A setup and the private broker behind it (started), or None for sqlite."""
    try:
        broker = private_broker(request.param, tmp_path)
    except Unavailable as exc:
        skip_or_fail(str(exc))
    setup = outage_setup(request.param, tmp_path, broker)
    try:
        if broker is not None:
            broker.start()
        yield setup, broker
        setup.drop()
    finally:
        if broker is not None:
            broker.close()


def test_broker_restart_loses_nothing(outage: tuple[Setup, PrivateBroker | None], tmp_path: Path) -> None:
    setup, broker = outage
    result = broker_outage(setup, tmp_path, broker, tasks=1000, lag=0.005, timeout=120)
    logger.info(result.row())
    assert result.lost == 0, result
    assert result.states == {"SUCCESS": result.tasks}, result
    assert result.recovery is not None and result.recovery < 30, result
