"""Jobs: the Job class, the job decorator, concurrency modes and pq's built-in jobs.

Listing ``'pq.jobs'`` in task_paths registers the built-in jobs.
"""
from __future__ import annotations

from .builtin import ExecutePython
from .job import ASYNC_IO, CPUBOUND, THREAD_IO, Job, job

__all__ = ["ASYNC_IO", "CPUBOUND", "THREAD_IO", "ExecutePython", "Job", "job"]
