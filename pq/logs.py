"""Logging set-up shared by the arbiter and every actor."""
from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)-7s [%(processName)s %(process)d] %(name)s: %(message)s"


def configure_logging(level: str = "info") -> None:
    """Log to stderr with the actor's name and pid on every line."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not any(getattr(h, "_pq", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._pq = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
