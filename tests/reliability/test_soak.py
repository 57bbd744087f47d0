"""Soak: many tasks through one consumer, whose memory must not keep growing.

The fast version of ``benchmarks/chaos.py soak`` (100,000 tasks, at most 10%
growth after the first 10,000): 6,000 tasks, and the consumer's RSS may grow
at most 15% from 2,000 tasks to the end (a looser bound: small numbers are noisy).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import pytest
from chaos_harness import Setup
from chaos_scenarios import rss_growth, soak

logger = logging.getLogger("pq.tests.reliability")


@pytest.mark.parametrize("broker", ["sqlite", "redis"])
def test_consumer_memory_is_flat(broker: str, tmp_path: Path, make_setup: Callable[..., Setup]) -> None:
    result, samples = soak(make_setup(broker), tmp_path, tasks=6000, baseline_at=2000, timeout=150)
    logger.info("%s; RSS samples %s", result.row(), samples)
    assert result.lost == 0 and result.states == {"SUCCESS": 6000}, result
    assert rss_growth(samples, 2000) <= 0.15, result
