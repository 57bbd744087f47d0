"""Settings come from CLI > env > kwargs > config module > default, and bad values are refused."""
from __future__ import annotations

import types

import pytest

from pq.config import SETTINGS, Config, build_parser
from pq.exceptions import ImproperlyConfigured


def test_precedence() -> None:
    module = types.ModuleType("cfgmod")
    module.workers = 1
    module.concurrent_tasks = 7
    module.task_paths = ["a.*"]
    cfg = Config(module, argv=["-w", "3"], environ={"PQ_WORKERS": "2", "PQ_CONCURRENT_TASKS": "9"}, workers=5)
    assert cfg.workers == 3
    assert cfg.concurrent_tasks == 9
    assert cfg.task_paths == ["a.*"]
    cfg = Config(module, environ={}, workers=5)
    assert cfg.workers == 5
    assert Config(module, environ={}).workers == 1
    assert Config(environ={}).workers == 4


def test_bad_value_names_the_setting() -> None:
    with pytest.raises(ImproperlyConfigured, match="workers"):
        Config(environ={"PQ_WORKERS": "many"})
    with pytest.raises(ImproperlyConfigured, match="data_store"):
        Config(environ={}, data_store="localhost:6379")
    with pytest.raises(ImproperlyConfigured, match="unknown setting"):
        Config(environ={}, wrokers=2)


def test_every_setting_has_a_flag_and_help() -> None:
    text = build_parser("manage.py").format_help()
    for setting in SETTINGS:
        assert setting.flag in text
        assert setting.help


def test_lists_from_strings() -> None:
    cfg = Config(environ={"PQ_TASK_QUEUES": "high, low"})
    assert cfg.task_queues == ["high", "low"]
    assert cfg.default_queue == "high"
