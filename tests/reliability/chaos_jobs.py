"""Jobs of the reliability suite: each run leaves a line, so runs can be counted per task id.

A run appends ``<task id> <pid> <time>`` to ``runs-<pid>.log`` in the folder
named by ``PQ_CHAOS_RUNS`` (one file per process, one ``write`` per line), at
the end of the job: a line means the job's side effect happened.  Counting
lines per id gives the tasks lost (none) and run twice, on any broker.
"""
from __future__ import annotations

import asyncio
import os
import time

from pq import api

RUNS_ENV = "PQ_CHAOS_RUNS"
_files: dict[int, int] = {}


def _record(task_id: str) -> None:
    folder = os.environ.get(RUNS_ENV)
    if not folder:
        return
    pid = os.getpid()
    fd = _files.get(pid)
    if fd is None:
        fd = _files[pid] = os.open(os.path.join(folder, f"runs-{pid}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(fd, f"{task_id} {pid} {time.time():.6f}\n".encode())


@api.job()
async def chaos_run(self, lag: float = 0.0, n: int = 0) -> int:
    """Sleep ``lag`` seconds on the loop (so kills find tasks in flight), record the run, return ``n``."""
    if lag:
        await asyncio.sleep(lag)
    _record(self.task.id)
    return n


@api.job()
def chaos_touch(self, path: str = "") -> str:
    """Create ``path``: a side effect a test can look for."""
    with open(path, "w") as fp:
        fp.write(self.task.id)
    return path
