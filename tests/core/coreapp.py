"""The app of the core tests: its own memory:// store, sampletasks and the test jobs."""
from __future__ import annotations

import uuid
from typing import Any

from pq.api import PulsarQueue


def make_app(**kwargs: Any) -> PulsarQueue:
    settings: dict[str, Any] = {
        "data_store": f"memory://{uuid.uuid4().hex}",
        "task_paths": ["sampletasks.*", "pq.jobs", "testjobs"],
        "lease_timeout": 5,
        "task_pool_timeout": 0.2,
    }
    settings.update(kwargs)
    return PulsarQueue(**settings)
