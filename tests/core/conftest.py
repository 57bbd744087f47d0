"""An app on its own memory:// store, with a worker running in the test's loop."""
from __future__ import annotations

from typing import Any, AsyncIterator

import pytest

from coreapp import make_app

from pq.api import Worker


@pytest.fixture
async def api() -> AsyncIterator[Any]:
    api = make_app().api()
    await api.start()
    yield api
    await api.close()


@pytest.fixture
async def worker(api: Any) -> AsyncIterator[Worker]:
    worker = Worker(api, "test-worker")
    await worker.start()
    yield worker
    await worker.stop(2)
