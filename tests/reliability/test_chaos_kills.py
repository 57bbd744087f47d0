"""Killed workers: a consumer SIGKILLed every half second, and not one task lost.

The fast version of ``benchmarks/chaos.py killed-workers`` (10,000 tasks):
every task id runs at least once and ends SUCCESS, none is left STARTED or
in a queue; tasks that ran twice are counted (at-least-once delivery).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import pytest
from chaos_harness import Setup
from chaos_scenarios import killed_workers

logger = logging.getLogger("pq.tests.reliability")


@pytest.mark.parametrize("broker", ["sqlite", "redis", "amqp+sqlite", "amqp+redis"])
def test_sigkilled_consumers_lose_nothing(broker: str, tmp_path: Path, make_setup: Callable[..., Setup]) -> None:
    # 1000 x 0.15 s over 4 consumers x 10 slots: about 4 s of work, so kills land while tasks run
    # however fast the queue itself is (with 0.05 s a fast run ended after two kills).
    result = killed_workers(make_setup(broker), tmp_path, tasks=1000, consumers=4, interval=0.5, lag=0.15,
                            timeout=120)
    logger.info(result.row())
    assert "SERVER EXITED" not in result.notes
    assert result.lost == 0, result
    assert result.states == {"SUCCESS": 1000}, result
    assert int(result.notes.split()[0]) >= 3, result  # it did kill consumers while tasks ran
