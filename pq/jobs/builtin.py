"""Built-in jobs, registered when ``pq.jobs`` is in task_paths."""
from __future__ import annotations

from typing import Any

from .job import CPUBOUND, Job


class ExecutePython(Job):
    """Execute arbitrary python code on a subprocess.

    The code sees ``params`` and sets ``result``.  Off unless the server runs
    with ``--enable-execute-python``: whoever can queue tasks could otherwise
    run any code on the workers.
    """

    name = "execute.python"
    concurrency = CPUBOUND
    enabled_by = "enable_execute_python"

    def __call__(self, code: str = "", **params: Any) -> Any:
        namespace: dict[str, Any] = {"params": params, "result": None}
        exec(compile(code, "<execute.python>", "exec"), namespace)  # noqa: S102 - enabled on purpose only
        return namespace.get("result")
