"""pq: a distributed task queue for asyncio, on its own actor runtime."""
from __future__ import annotations

__version__ = "0.1.0"
