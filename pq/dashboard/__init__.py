"""The monitor's dashboard: a live HTML page, its JSON endpoints and Prometheus ``/metrics``."""
from __future__ import annotations

from .server import Dashboard

__all__ = ["Dashboard"]
