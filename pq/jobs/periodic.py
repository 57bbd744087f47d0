"""Periodic and cron jobs: checking their schedules and finding their slots.

A *slot* is a scheduled run time (epoch seconds).  ``run_every`` schedules
have a slot every N seconds counted from ``anchor`` (the Unix epoch by
default, so an hourly job runs on the hour); cron schedules have the slots of
their expression in the ``timezone`` setting.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from ..exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from .job import Job


def check_cron(expression: str, job: str) -> None:
    """Refuse an invalid cron expression when the job is defined, saying what is wrong."""
    if not isinstance(expression, str) or not croniter.is_valid(expression):
        raise ImproperlyConfigured(
            f"job {job!r}: {expression!r} is not a valid cron expression; use five fields "
            "'minute hour day-of-month month day-of-week', e.g. '*/5 * * * *'"
        )


def get_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ImproperlyConfigured(f"timezone {name!r} is not a known IANA zone, e.g. UTC or Europe/Rome") from None


def _anchor(anchor: Any) -> float:
    if anchor is None:
        return 0.0
    if isinstance(anchor, datetime):
        if anchor.tzinfo is None:
            anchor = anchor.replace(tzinfo=timezone.utc)
        return anchor.timestamp()
    return float(anchor)


@dataclass(frozen=True)
class Schedule:
    """When to queue a job, with which arguments: from a job's attributes or ``Beater.register``."""

    name: str
    job: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    run_every: float | None = None
    anchor: float = 0.0
    cron: str | None = None
    catch_up: bool = False

    @classmethod
    def of_job(cls, job: type["Job"]) -> "Schedule":
        return cls(job.name, job.name, {}, job.run_every, _anchor(job.anchor), job.cron, job.catch_up)


def slot_at_or_before(entry: Schedule, now: float, zone: ZoneInfo) -> float:
    """The latest slot of ``entry`` not after ``now``."""
    if entry.run_every is not None:
        return entry.anchor + math.floor((now - entry.anchor) / entry.run_every) * entry.run_every
    assert entry.cron is not None
    return croniter(entry.cron, datetime.fromtimestamp(now + 0.001, zone)).get_prev(float)


def slot_after(entry: Schedule, when: float, zone: ZoneInfo) -> float:
    """The first slot of ``entry`` strictly after ``when``."""
    if entry.run_every is not None:
        return entry.anchor + (math.floor((when - entry.anchor) / entry.run_every) + 1) * entry.run_every
    assert entry.cron is not None
    return croniter(entry.cron, datetime.fromtimestamp(when, zone)).get_next(float)


def slot_id(name: str, slot: float) -> str:
    """The task id of a slot: the same on every server, so a slot is queued once."""
    return f"periodic:{name}:{int(round(slot * 1000))}"
