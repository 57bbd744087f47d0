"""The server of the reliability suite: ``python tests/reliability/chaos_app.py -w 4 ...``."""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from pq.api import PulsarQueue  # noqa: E402

task_paths = ["chaos_jobs", "pq.jobs"]


def app(**kwargs: object) -> PulsarQueue:
    return PulsarQueue(config=__file__, **kwargs)


if __name__ == "__main__":
    app().start()
